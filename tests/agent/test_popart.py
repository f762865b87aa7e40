"""PopArt: hand-computed statistics; the rescale preserves the critic's unnormalised outputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tbjax.agent.networks import ActorCritic, critic_head_path
from tbjax.agent.popart import (
    PopArtStats,
    denormalize_value,
    init_popart,
    normalize_value,
    popart_rescale,
    popart_sigma,
    update_popart,
)

OBS_DIM = 7  # same shapes as test_networks.py: shared op compile cache


def test_one_update_equals_hand_computation():
    # Valid targets 1, 2, 3 (the masked 4th entry is NaN and must be ignored), beta = 0.1:
    # mean(y) = 2, mean(y^2) = 14/3; mu' = 0.9*0 + 0.1*2 = 0.2; nu' = 0.9*1 + 0.1*14/3.
    targets = jnp.array([1.0, 2.0, 3.0, jnp.nan])
    mask = jnp.array([True, True, True, False])
    new = jax.jit(update_popart)(init_popart(), targets, mask, 0.1)
    nu = 0.9 + 0.1 * 14.0 / 3.0
    np.testing.assert_allclose(float(new.mean), 0.2, rtol=1e-6)
    np.testing.assert_allclose(float(new.second_moment), nu, rtol=1e-6)
    np.testing.assert_allclose(float(popart_sigma(new)), math.sqrt(nu - 0.04), rtol=1e-6)


def test_step_uses_the_mean_not_the_sum_of_the_batch():
    # A batch of 1000 copies of y moves the statistics exactly as a batch of one y.
    stats = init_popart()
    one = update_popart(stats, jnp.array([5.0]), None, 0.01)
    many = update_popart(stats, jnp.full((1000,), 5.0), None, 0.01)
    np.testing.assert_allclose(float(many.mean), float(one.mean), rtol=1e-6)
    np.testing.assert_allclose(float(one.mean), 0.05, rtol=1e-6)
    np.testing.assert_allclose(float(many.second_moment), 0.99 + 0.25, rtol=1e-6)


def test_empty_mask_leaves_stats_unchanged_and_sigma_has_a_floor():
    stats = PopArtStats(mean=jnp.float32(3.0), second_moment=jnp.float32(9.0))  # variance 0
    same = update_popart(stats, jnp.array([100.0, 200.0]), jnp.zeros(2, bool), 0.5)
    assert float(same.mean) == 3.0 and float(same.second_moment) == 9.0
    np.testing.assert_allclose(float(popart_sigma(stats, sigma_min=1e-3)), 1e-3, rtol=1e-6)


def test_normalize_and_denormalize_are_inverse():
    stats = PopArtStats(mean=jnp.float32(-4.0), second_moment=jnp.float32(25.0))  # sigma 3
    y = jnp.array([-10.0, -4.0, 2.0])
    np.testing.assert_allclose(np.asarray(normalize_value(stats, y)), [-2.0, 0.0, 2.0])
    np.testing.assert_allclose(np.asarray(denormalize_value(stats, normalize_value(stats, y))), y)


def test_rescale_of_a_linear_map_is_exact():
    h = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    bias = jnp.array([0.1, -0.2, 0.3])
    old = PopArtStats(mean=jnp.float32(1.5), second_moment=jnp.float32(6.25))  # sigma 2
    new = PopArtStats(mean=jnp.float32(-3.0), second_moment=jnp.float32(25.0))  # sigma 4
    k2, b2 = popart_rescale(kernel, bias, old, new)
    np.testing.assert_allclose(np.asarray(k2), np.asarray(kernel) * 0.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(b2), (2.0 * np.asarray(bias) + 4.5) / 4.0, rtol=1e-6)
    before = 2.0 * (h @ kernel + bias) + 1.5
    after = 4.0 * (h @ k2 + b2) - 3.0
    np.testing.assert_allclose(np.asarray(after), np.asarray(before), rtol=1e-5, atol=1e-5)


def _with_head(params, kernel, bias):
    path = critic_head_path()
    params = jax.tree_util.tree_map(lambda x: x, params)  # copy the nested dicts
    node = params["params"]
    for name in path[:-1]:
        node = node[name]
    node[path[-1]] = {"kernel": kernel, "bias": bias}
    return params


@pytest.mark.parametrize("non_crossing", [True, False])
def test_update_and_rescale_preserve_unnormalised_critic_outputs(non_crossing):
    net = ActorCritic(hidden_sizes=(16,), num_quantiles=8, non_crossing=non_crossing)
    obs = jax.random.normal(jax.random.PRNGKey(2), (64, OBS_DIM))
    params = net.init(jax.random.PRNGKey(3), obs)
    head = params["params"]["critic_head"]
    # Start from a non-trivial head (positive shared kernel for the monotone head).
    params = _with_head(params, head["kernel"] * 1.7, head["bias"] + 0.3)

    def unnormalised(params, stats):
        return denormalize_value(stats, net.apply(params, obs)[1])

    stats = init_popart()
    # Targets on very different scales: returns of ~1e3, then ~1e-2 around a large offset.
    target_batches = [
        1000.0 + 300.0 * jax.random.normal(jax.random.PRNGKey(4), (64,)),
        -50.0 + 0.01 * jax.random.normal(jax.random.PRNGKey(5), (64,)),
    ]
    for targets, beta in zip(target_batches, [0.5, 0.9], strict=True):
        before = unnormalised(params, stats)
        new_stats = update_popart(stats, targets, None, beta)
        head = params["params"]["critic_head"]
        params = _with_head(params, *popart_rescale(head["kernel"], head["bias"], stats, new_stats))
        after = unnormalised(params, new_stats)
        scale = float(jnp.abs(new_stats.mean) + popart_sigma(new_stats))
        assert float(popart_sigma(new_stats)) != pytest.approx(float(popart_sigma(stats)))
        # Exact up to float32 round-off, which scales with |mu'| + sigma' (about 2 ulp of it
        # measured; 1e-6 allows ~8 ulp).
        np.testing.assert_allclose(
            np.asarray(after), np.asarray(before), rtol=1e-5, atol=1e-6 * scale
        )
        if non_crossing:
            assert bool(jnp.all(jnp.diff(after, axis=-1) >= 0))
        stats = new_stats
