"""RunningStats: the parallel merge equals NumPy on the concatenation; normalising is read-only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tbjax.agent.normalize import (
    RunningStats,
    init_running_stats,
    normalize_obs,
    update_running_stats,
)

update_jit = jax.jit(update_running_stats)


def test_batch_by_batch_merge_equals_numpy_on_concatenation():
    rng = np.random.default_rng(0)
    obs_shape = (3, 2)
    # Batches of different sizes and leading ranks, with means far from zero and unequal scales.
    batches = [
        rng.normal(50.0, 3.0, size=(7, *obs_shape)),
        rng.normal(-20.0, 0.5, size=(4, 5, *obs_shape)),
        rng.normal(0.0, 10.0, size=(1, *obs_shape)),
        rng.normal(5.0, 1.0, size=(2, 3, 4, *obs_shape)),
    ]
    stats = init_running_stats(obs_shape)
    for batch in batches:
        stats = update_jit(stats, jnp.asarray(batch, jnp.float32))
    flat = np.concatenate([b.reshape(-1, *obs_shape) for b in batches], axis=0)
    assert float(stats.count) == flat.shape[0]
    np.testing.assert_allclose(np.asarray(stats.mean), flat.mean(axis=0), rtol=1e-5, atol=1e-4)
    var = np.asarray(stats.m2) / float(stats.count)
    np.testing.assert_allclose(var, flat.var(axis=0), rtol=1e-4)


def test_single_observation_without_leading_axis():
    stats = update_running_stats(init_running_stats((2,)), jnp.array([1.0, 3.0]))
    stats = update_running_stats(stats, jnp.array([3.0, 7.0]))
    np.testing.assert_allclose(np.asarray(stats.mean), [2.0, 5.0])
    np.testing.assert_allclose(np.asarray(stats.m2), [2.0, 8.0])  # var [1, 4] with count 2


def test_normalize_uses_stats_and_clips_and_leaves_them_unchanged():
    stats = RunningStats(
        count=jnp.float32(4.0),
        mean=jnp.array([1.0, -2.0], jnp.float32),
        m2=jnp.array([16.0, 0.04], jnp.float32),  # var [4, 0.01]
    )
    before = jax.tree_util.tree_map(lambda a: np.array(a, copy=True), stats)
    x = jnp.array([[5.0, -2.05], [1.0, 3.0]], jnp.float32)
    out = jax.jit(normalize_obs)(stats, x, 5.0)
    expected = np.array([[2.0, -0.5], [0.0, 5.0]])  # (5-1)/2, (-2.05+2)/0.1, 0, 50 clipped to 5
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5)
    for leaf_before, leaf_after in zip(
        jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(stats), strict=True
    ):
        np.testing.assert_array_equal(leaf_before, np.asarray(leaf_after))


def test_empty_stats_normalise_to_the_clipped_input():
    out = normalize_obs(init_running_stats((3,)), jnp.array([0.5, -3.0, 100.0]), 10.0)
    np.testing.assert_allclose(np.asarray(out), [0.5, -3.0, 10.0], rtol=1e-6)


def test_wrong_batch_shape_is_rejected():
    with pytest.raises(ValueError, match="observation shape"):
        update_running_stats(init_running_stats((3,)), jnp.zeros((4, 2)))
