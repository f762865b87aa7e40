"""Actor-critic network and policy distributions, checked against NumPy/SciPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from tbjax.agent.networks import (
    ActorCritic,
    critic_head_path,
    policy_entropy,
    policy_log_prob,
    policy_mode,
    policy_sample,
)
from tbjax.errors import InputError

OBS_DIM = 7


def np_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_discrete_log_prob_entropy_and_mode_match_numpy():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]], np.float32)
    actions = np.array([2, 1], np.int32)
    ref = np_log_softmax(logits.astype(np.float64))
    np.testing.assert_allclose(
        np.asarray(policy_log_prob(jnp.asarray(logits), actions, "discrete")),
        ref[np.arange(2), actions],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(policy_entropy(jnp.asarray(logits), "discrete")),
        -(np.exp(ref) * ref).sum(axis=-1),
        rtol=1e-6,
    )
    mode = policy_mode(jnp.asarray(logits), "discrete")
    assert mode.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(mode), [0, 2])


def test_continuous_log_prob_matches_scipy_squashed_gaussian():
    mean = np.array([0.0, 0.7, -1.2, 3.0])
    log_std = np.array([0.0, -1.0, 0.5, 0.2])
    action = np.array([0.3, 0.55, -0.999, 0.9999])
    params = jnp.asarray(np.stack([mean, log_std], axis=-1), jnp.float32)
    u = np.arctanh(action)
    reference = sps.norm(mean, np.exp(log_std)).logpdf(u) - np.log1p(-np.square(action))
    got = policy_log_prob(params, jnp.asarray(action, jnp.float32), "continuous")
    np.testing.assert_allclose(np.asarray(got), reference, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(
        np.asarray(policy_entropy(params, "continuous")),
        sps.norm(mean, np.exp(log_std)).entropy(),
        rtol=1e-6,
    )
    np.testing.assert_allclose(np.asarray(policy_mode(params, "continuous")), np.tanh(mean),
                               rtol=1e-6)


def test_discrete_samples_follow_softmax_and_report_their_log_prob():
    logits = jnp.array([1.0, 0.0, -1.0])
    n = 20_000
    params = jnp.broadcast_to(logits, (n, 3))
    actions, log_prob = jax.jit(policy_sample, static_argnums=2)(
        jax.random.PRNGKey(0), params, "discrete")
    assert actions.dtype == jnp.int32
    freq = np.bincount(np.asarray(actions), minlength=3) / n
    probs = np.exp(np_log_softmax(np.asarray(logits, np.float64)))
    np.testing.assert_allclose(freq, probs, atol=4 * math.sqrt(0.25 / n))
    np.testing.assert_allclose(np.asarray(log_prob), np.log(probs)[np.asarray(actions)], rtol=1e-5)


def test_continuous_samples_are_squashed_gaussian():
    n = 20_000
    params = jnp.broadcast_to(jnp.array([0.4, math.log(0.5)]), (n, 2))
    actions, log_prob = jax.jit(policy_sample, static_argnums=2)(
        jax.random.PRNGKey(1), params, "continuous")
    a = np.asarray(actions, np.float64)
    assert np.all(np.abs(a) <= 1.0)
    u = np.arctanh(a)
    assert abs(u.mean() - 0.4) < 4 * 0.5 / math.sqrt(n)
    assert abs(u.std() - 0.5) < 0.02
    reference = sps.norm(0.4, 0.5).logpdf(u) - np.log1p(-np.square(a))
    np.testing.assert_allclose(np.asarray(log_prob), reference, rtol=1e-3, atol=1e-3)


# One small configuration per head type, initialised once: the first init compiles the
# orthogonal initialiser, so every extra shape costs seconds on a busy CPU.
NUM_QUANTILES = 8
HIDDEN = (16,)


def make_net(**kwargs):
    return ActorCritic(hidden_sizes=HIDDEN, num_quantiles=NUM_QUANTILES, **kwargs)


@pytest.fixture(scope="module")
def obs():
    return 3.0 * jax.random.normal(jax.random.PRNGKey(0), (64, OBS_DIM))


@pytest.fixture(scope="module")
def monotone(obs):
    net = make_net()
    return net, net.init(jax.random.PRNGKey(1), obs)


@pytest.fixture(scope="module")
def monotone_shared_continuous(obs):
    net = make_net(action_mode="continuous", shared_torso=True)
    return net, net.init(jax.random.PRNGKey(2), obs)


@pytest.fixture(scope="module")
def plain(obs):
    net = make_net(non_crossing=False)
    return net, net.init(jax.random.PRNGKey(3), obs)


@pytest.mark.parametrize("which", ["monotone", "monotone_shared_continuous"])
def test_non_crossing_quantiles_are_sorted_for_random_params_and_inputs(request, obs, which):
    net, params = request.getfixturevalue(which)
    rng = np.random.default_rng(10)
    for _ in range(3):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        # Large random perturbations, so increments of all signs and sizes occur.
        noisy = [x + 2.0 * rng.standard_normal(x.shape, np.float32) for x in leaves]
        noisy_params = jax.tree_util.tree_unflatten(treedef, noisy)
        head = noisy_params["params"]["critic_head"]
        head["kernel"] = jnp.abs(head["kernel"]) + 0.1  # PopArt keeps the shared kernel > 0
        _, quantiles = net.apply(noisy_params, obs)
        assert quantiles.shape == (64, NUM_QUANTILES) and quantiles.dtype == jnp.float32
        assert bool(jnp.all(jnp.diff(quantiles, axis=-1) >= 0.0))
        assert bool(jnp.any(jnp.diff(quantiles, axis=-1) > 0.0))


def test_plain_head_can_cross_and_lives_at_critic_head_path(plain, obs):
    net, params = plain
    head = params["params"]
    for name in critic_head_path():
        head = head[name]
    assert head["kernel"].shape == (HIDDEN[-1], NUM_QUANTILES)
    assert head["bias"].shape == (NUM_QUANTILES,)
    # The head is the last op: quantiles = h @ kernel + bias with h the torso output.
    _, quantiles = net.apply(params, obs)
    torso = params["params"]["critic_torso"]["Dense_0"]
    h = jnp.tanh(obs @ torso["kernel"] + torso["bias"])
    np.testing.assert_allclose(np.asarray(quantiles), np.asarray(h @ head["kernel"] + head["bias"]),
                               rtol=1e-5, atol=1e-5)
    assert bool(jnp.any(jnp.diff(quantiles, axis=-1) < 0.0))


def test_no_gradient_reaches_the_monotone_heads_kernel(monotone, obs):
    net, params = monotone
    grads = jax.jit(jax.grad(lambda p: jnp.sum(net.apply(p, obs)[1] ** 2)))(params)
    head_grads = grads["params"]["critic_head"]
    assert float(jnp.abs(head_grads["kernel"]).sum()) == 0.0
    assert float(jnp.abs(head_grads["bias"]).sum()) > 0.0
    assert float(jnp.abs(grads["params"]["critic_increments"]["kernel"]).sum()) > 0.0


def test_orthogonal_init_scales_and_initial_quantile_range(monotone):
    net, variables = monotone
    params = variables["params"]
    policy_kernel = np.asarray(params["policy_logits"]["kernel"], np.float64)  # [16, 3]
    np.testing.assert_allclose(policy_kernel.T @ policy_kernel, 1e-4 * np.eye(3), atol=1e-8)
    torso_kernel = np.asarray(params["actor_torso"]["Dense_0"]["kernel"], np.float64)  # [7, 16]
    np.testing.assert_allclose(torso_kernel @ torso_kernel.T, 2.0 * np.eye(OBS_DIM), atol=1e-5)
    # With zero input the torso output is 0: quantiles are the initial biases, spread [-2, 2].
    _, quantiles = net.apply(variables, jnp.zeros((1, OBS_DIM)))
    np.testing.assert_allclose(
        np.asarray(quantiles[0]), np.linspace(-2.0, 2.0, NUM_QUANTILES), atol=1e-5
    )


def test_continuous_head_and_bfloat16_compute(monotone_shared_continuous, obs):
    net32, params = monotone_shared_continuous
    net16 = make_net(action_mode="continuous", shared_torso=True, dtype=jnp.bfloat16)
    policy32, q32 = net32.apply(params, obs)
    policy16, q16 = net16.apply(params, obs)
    assert policy32.shape == (64, 2) and policy16.dtype == jnp.float32 and q16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(policy32[:, 1]), 0.0)  # log_std initialised to 0
    np.testing.assert_allclose(np.asarray(q16), np.asarray(q32), atol=0.05)
    np.testing.assert_allclose(np.asarray(policy16), np.asarray(policy32), atol=0.01)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))


def test_unknown_action_mode_is_an_input_error():
    with pytest.raises(InputError, match="action_mode"):
        ActorCritic(action_mode="short_only").init(jax.random.PRNGKey(0), jnp.zeros((OBS_DIM,)))
    with pytest.raises(InputError, match="env.action_mode must be one of 'discrete', 'continuous'"):
        policy_mode(jnp.zeros((3,)), "Discrete")
