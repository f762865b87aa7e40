"""Recurrent cores: the GRU step against a NumPy reference and both cells against flax's, reset
semantics by hand, one step equals a sequence of length one, the state layout of separate and
shared cores, and the hand-written sequence VJP against JAX's autodiff of the step loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tbjax.agent.networks import ActorCritic, init_params, state_size
from tbjax.agent.recurrent import CELLS, cell_step, input_gates, sequence, split_state

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


def _core_weights(params, cell):
    core = params["params"]["torso_core"]
    w_h = core["step"]["state"]
    return core["input"]["kernel"], core["input"]["bias"], w_h["kernel"], w_h.get("bias")


@pytest.mark.parametrize("policy", ["gru", "lstm"])
def test_cells_equal_flax_cells_given_the_same_weights(policy):
    """Our step (agent/recurrent.py) is flax.linen.GRUCell / OptimizedLSTMCell: the fused W_x, b_x,
    W_h (, b_h) split per gate into flax's per-gate Dense parameters give the same new state.
    flax's GRU has no state bias on r, z (ours is folded into b_x) and its LSTM puts the bias on
    the state side (ours is b_x): both sums are the same pre-activations."""
    import flax.linen as nn

    net, params = _net(policy, shared=True)
    w_x, b_x, w_h, b_h = (None if a is None else np.asarray(a) for a in _core_weights(params, policy))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (4, 8)))  # the encoder's output width
    h = np.asarray(jax.random.normal(jax.random.PRNGKey(10), (4, RNN))) * 0.5
    c = np.asarray(jax.random.normal(jax.random.PRNGKey(11), (4, RNN))) * 0.5
    gate = lambda w, k: w[..., k * RNN:(k + 1) * RNN]  # noqa: E731
    if policy == "gru":
        flax_params = {}
        for k, name in enumerate("rzn"):
            flax_params[f"i{name}"] = {"kernel": gate(w_x, k), "bias": gate(b_x, k) + (0 if name == "n" else gate(b_h, k))}
            flax_params[f"h{name}"] = {"kernel": gate(w_h, k)}
        flax_params["hn"]["bias"] = gate(b_h, 2)
        expected, _ = nn.GRUCell(RNN).apply({"params": flax_params}, h, x)
        carry = h
    else:
        flax_params = {}
        for k, name in enumerate("ifgo"):
            flax_params[f"i{name}"] = {"kernel": gate(w_x, k)}
            flax_params[f"h{name}"] = {"kernel": gate(w_h, k), "bias": gate(b_x, k)}
        (_, expected), _ = nn.OptimizedLSTMCell(RNN).apply({"params": flax_params}, (c, h), x)
        carry = (c, h)
    w_x, b_x, w_h, b_h = _core_weights(params, policy)
    gates = input_gates(jnp.float32, w_x, b_x, jnp.asarray(x), CELLS[policy])
    _, out, _ = cell_step(policy, jnp.float32, w_h, b_h, carry, gates, jnp.zeros(4, bool))
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["gru", "lstm"])
def test_hand_written_sequence_vjp_equals_autodiff_of_the_step_loop(policy):
    """recurrent.sequence's custom VJP (reverse loop, then one matmul per weight) gives the
    gradients JAX's autodiff of a plain scan over cell_step gives, for every input: both weights,
    the initial state and the inputs, with resets inside the sequences."""
    net, params = _net(policy, shared=True)
    w_x, b_x, w_h, b_h = _core_weights(params, policy)
    x = jax.random.normal(jax.random.PRNGKey(12), (6, 5, 8))
    reset = jax.random.uniform(jax.random.PRNGKey(13), (6, 5)) < 0.3
    state = split_state(policy, jax.random.normal(jax.random.PRNGKey(14), (5, state_size(policy, RNN, True))))

    def scanned(w_x, b_x, w_h, b_h, carry, x):
        gates = input_gates(jnp.float32, w_x, b_x, x, CELLS[policy])
        step = lambda c, s: cell_step(policy, jnp.float32, w_h, b_h, c, *s)[:2]  # noqa: E731
        return jax.lax.scan(step, carry, (gates, reset))

    def loss(run):
        def value(*args):
            final, outs = run(*args)
            return jnp.sum(jnp.sin(3.0 * outs)) + sum(jnp.sum(jnp.cos(s)) for s in jax.tree_util.tree_leaves(final))
        return value

    args = (w_x, b_x, w_h, b_h, state, x)
    argnums = (0, 1, 2, 3, 4, 5) if policy == "gru" else (0, 1, 2, 4, 5)
    mine = jax.grad(loss(lambda *a: sequence(policy, jnp.float32, *a, reset)), argnums)(*args)
    reference = jax.grad(loss(scanned), argnums)(*args)
    np.testing.assert_allclose(loss(lambda *a: sequence(policy, jnp.float32, *a, reset))(*args),
                               loss(scanned)(*args), rtol=1e-6)
    chex.assert_trees_all_close(mine, reference, rtol=1e-4, atol=1e-5)  # same structure too, not zip's shorter one
