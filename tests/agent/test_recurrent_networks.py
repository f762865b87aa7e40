"""Recurrent cores: the GRU step against a NumPy reference, reset semantics by hand, one step
equals a sequence of length one, and the state layout of separate and shared cores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tbjax.agent.networks import ActorCritic, init_params, state_size

OBS_DIM, RNN = 5, 6


def _net(policy, shared=False):
    net = ActorCritic(hidden_sizes=(8,), n_actions=3, num_quantiles=4, policy=policy, rnn_size=RNN,
                      shared_torso=shared)
    return net, init_params(net, jax.random.PRNGKey(0), OBS_DIM)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_gru_step_matches_numpy():
    """h' = (1 - z) n + z h with r, z = sigmoid(W_x x + W_h h), n = tanh(W_xn x + r (W_hn h + b_hn))."""
    net, params = _net("gru", shared=True)
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    obs = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (2, OBS_DIM)), np.float64)
    h = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (2, RNN)), np.float64) * 0.5
    _, _, h_new = net.apply(params, jnp.asarray(obs, jnp.float32), jnp.asarray(h, jnp.float32), jnp.zeros(2, bool))

    torso = p["torso"]["Dense_0"]
    x = np.tanh(obs @ torso["kernel"] + torso["bias"])
    core = p["torso_core"]
    cell = core["step"]
    gx = x @ core["input"]["kernel"] + core["input"]["bias"]
    gh = h @ cell["state"]["kernel"] + cell["state"]["bias"]
    r = _sigmoid(gx[:, :RNN] + gh[:, :RNN])
    z = _sigmoid(gx[:, RNN:2 * RNN] + gh[:, RNN:2 * RNN])
    n = np.tanh(gx[:, 2 * RNN:] + r * gh[:, 2 * RNN:])
    np.testing.assert_allclose(np.asarray(h_new), (1 - z) * n + z * h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy,shared", [("gru", False), ("lstm", False), ("lstm", True)])
def test_episode_start_inside_a_sequence_equals_two_separate_sequences(policy, shared):
    """3 steps with an episode start at step 2 == step 1 from h0, then steps 2-3 from zeros."""
    net, params = _net(policy, shared)
    size = state_size(policy, RNN, shared)
    assert size == (1 if shared else 2) * (2 if policy == "lstm" else 1) * RNN
    obs = jax.random.normal(jax.random.PRNGKey(3), (3, 2, OBS_DIM))
    h0 = jax.random.normal(jax.random.PRNGKey(4), (2, size))
    reset = jnp.array([[False, False], [True, True], [False, False]])
    logits, q, h_end = net.apply(params, obs, h0, reset)

    first_logits, first_q, _ = net.apply(params, obs[:1], h0, jnp.zeros((1, 2), bool))
    rest_logits, rest_q, rest_h = net.apply(params, obs[1:], jnp.zeros_like(h0), jnp.zeros((2, 2), bool))
    np.testing.assert_array_equal(np.asarray(logits[:1]), np.asarray(first_logits))
    np.testing.assert_array_equal(np.asarray(q[:1]), np.asarray(first_q))
    np.testing.assert_array_equal(np.asarray(logits[1:]), np.asarray(rest_logits))
    np.testing.assert_array_equal(np.asarray(q[1:]), np.asarray(rest_q))
    np.testing.assert_array_equal(np.asarray(h_end), np.asarray(rest_h))
    # without the reset the state carries over and the outputs differ
    carried, _, _ = net.apply(params, obs, h0, jnp.zeros((3, 2), bool))
    assert np.abs(np.asarray(carried[1]) - np.asarray(logits[1])).max() > 1e-4


def test_one_step_equals_a_sequence_of_length_one():
    net, params = _net("gru")
    obs = jax.random.normal(jax.random.PRNGKey(5), (4, OBS_DIM))
    h0 = jax.random.normal(jax.random.PRNGKey(6), (4, state_size("gru", RNN, False)))
    step = net.apply(params, obs, h0, jnp.zeros(4, bool))
    seq = net.apply(params, obs[None], h0, jnp.zeros((1, 4), bool))
    for a, b in zip(step, (seq[0][0], seq[1][0], seq[2])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_separate_cores_keep_separate_states():
    """Actor state first, critic state second: the critic's half never moves the policy."""
    net, params = _net("gru")
    obs = jax.random.normal(jax.random.PRNGKey(7), (3, OBS_DIM))
    h = jax.random.normal(jax.random.PRNGKey(8), (3, 2 * RNN))
    h_critic_changed = h.at[:, RNN:].set(0.0)
    a = net.apply(params, obs, h, jnp.zeros(3, bool))
    b = net.apply(params, obs, h_critic_changed, jnp.zeros(3, bool))
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert np.abs(np.asarray(a[1]) - np.asarray(b[1])).max() > 1e-4
    assert set(params["params"]) >= {"actor_torso_core", "critic_torso_core"}
