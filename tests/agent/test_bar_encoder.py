"""The per-bar encoder (ppo.bar_features): one dense layer shared by every bar of the window."""

import jax
import jax.numpy as jnp
import numpy as np

from tbjax.agent.bar_encoder import BarEncoder
from tbjax.agent.networks import ActorCritic, init_params


def test_bar_encoder_matches_a_numpy_reference():
    window, n_features, codes = 3, 5, 2
    obs = jax.random.normal(jax.random.PRNGKey(1), (6, 4 + window * n_features))
    enc = BarEncoder(window, codes)
    params = enc.init(jax.random.PRNGKey(0), obs)
    (got,) = enc.apply(params, obs)
    k = np.asarray(params["params"]["per_bar"]["kernel"], np.float64)
    b = np.asarray(params["params"]["per_bar"]["bias"], np.float64)
    x = np.asarray(obs, np.float64)
    want = [np.concatenate([row[:4]] + [np.tanh(row[4 + j * n_features: 4 + (j + 1) * n_features] @ k + b)
                                        for j in range(window)]) for row in x]
    assert k.shape == (n_features, codes)  # ONE kernel for every bar
    np.testing.assert_allclose(np.asarray(got), np.stack(want), rtol=1e-5, atol=1e-6)


def test_one_layer_for_two_torsos_equals_two_encoders_side_by_side():
    """The actor's and critic's codes come from one dense layer with a column block each; that must
    be exactly two separate encoders holding those columns."""
    window, n_features, codes = 4, 3, 2
    obs = jax.random.normal(jax.random.PRNGKey(2), (5, 4 + window * n_features))
    both = BarEncoder(window, codes, torsos=2)
    params = both.init(jax.random.PRNGKey(0), obs)
    actor, critic = both.apply(params, obs)
    k, b = params["params"]["per_bar"]["kernel"], params["params"]["per_bar"]["bias"]
    assert k.shape == (n_features, 2 * codes)
    one = BarEncoder(window, codes)
    for got, cols in ((actor, slice(0, codes)), (critic, slice(codes, 2 * codes))):
        (want,) = one.apply({"params": {"per_bar": {"kernel": k[:, cols], "bias": b[cols]}}}, obs)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_actor_critic_with_bar_encoder_has_fewer_weights_and_sees_each_bar():
    window, n_features = 32, 19
    obs_dim = 4 + window * n_features
    flat = init_params(ActorCritic(), jax.random.PRNGKey(0), obs_dim)
    coded = init_params(ActorCritic(window_size=window, bar_features=2), jax.random.PRNGKey(0), obs_dim)
    count = lambda p: sum(x.size for x in jax.tree_util.tree_leaves(p))  # noqa: E731
    # first layer per torso: 608 x 64 weights flat; 19 x 2 (+ 2 biases) + (4 + 64) x 64 with the
    # encoder (the torsos' 19 x 2 blocks live side by side in one 19 x 4 layer)
    assert count(flat) - count(coded) == 2 * ((obs_dim * 64) - (n_features * 2 + 2 + (4 + window * 2) * 64))
    net = ActorCritic(window_size=window, bar_features=2)
    obs = jnp.zeros((1, obs_dim))
    moved = obs.at[0, 4 + 7 * n_features + 3].set(1.0)  # one feature of bar 7 only
    assert not np.allclose(net.apply(coded, obs)[0], net.apply(coded, moved)[0])
