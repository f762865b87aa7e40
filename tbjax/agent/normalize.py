"""Running observation statistics: a parallel Welford merge and frozen normalisation.

The trainer carries a :class:`RunningStats` in its state, merges every training rollout into it,
and hands it read-only to validation and test (docs/DESIGN.md invariant 3): normalising never changes
the statistics, so evaluation cannot leak information back into training.

Merge rule: Chan, Golub & LeVeque (1979), "Updating formulae and a pairwise algorithm for
computing sample variances". For two groups (n_a, mean_a, M2_a) and (n_b, mean_b, M2_b):
    n = n_a + n_b,  delta = mean_b - mean_a,
    mean = mean_a + delta * n_b / n,
    M2 = M2_a + M2_b + delta^2 * n_a * n_b / n,
and the population variance is M2 / n. Merging a whole batch at once (rather than one row at a
time) keeps the update a few vector operations and numerically stable in float32.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class RunningStats:
    """Count, mean and sum of squared deviations (M2) of every observation seen so far.

    Attributes:
        count: float32 scalar, number of merged observations (float so that very long runs do
            not overflow int32).
        mean: per-feature mean, shape of one observation.
        m2: per-feature sum of squared deviations from the mean, same shape.
    """

    count: jax.Array
    mean: jax.Array
    m2: jax.Array


def init_running_stats(shape: tuple[int, ...]) -> RunningStats:
    """Empty statistics for observations of ``shape``: count 0, mean 0, M2 0."""
    return RunningStats(
        count=jnp.zeros((), jnp.float32),
        mean=jnp.zeros(shape, jnp.float32),
        m2=jnp.zeros(shape, jnp.float32),
    )


def update_running_stats(stats: RunningStats, batch: jax.Array) -> RunningStats:
    """Merge every row of ``batch`` into ``stats`` (Chan, Golub & LeVeque 1979).

    Args:
        stats: statistics so far.
        batch: array of shape ``[*leading, *stats.mean.shape]``; all leading axes (for example
            steps x environments) are treated as independent observations.

    Returns:
        New statistics equal (up to float rounding) to those of all observations seen so far
        concatenated with the batch.
    """
    obs_ndim = stats.mean.ndim
    batch = jnp.asarray(batch, jnp.float32)
    lead_ndim = batch.ndim - obs_ndim
    if lead_ndim < 0 or batch.shape[lead_ndim:] != stats.mean.shape:
        raise ValueError(
            f"update_running_stats: batch shape {batch.shape} must end with the observation "
            f"shape {stats.mean.shape}"
        )
    lead_axes = tuple(range(lead_ndim))
    # Shapes are static under jit, so the batch size is a Python int.
    n_batch = jnp.float32(math.prod(batch.shape[: len(lead_axes)]))
    batch_mean = jnp.mean(batch, axis=lead_axes)
    batch_m2 = jnp.sum(jnp.square(batch - batch_mean), axis=lead_axes)

    total = stats.count + n_batch
    delta = batch_mean - stats.mean
    mean = stats.mean + delta * (n_batch / total)
    m2 = stats.m2 + batch_m2 + jnp.square(delta) * (stats.count * n_batch / total)
    return RunningStats(count=total, mean=mean, m2=m2)


def running_variance(stats: RunningStats) -> jax.Array:
    """Population variance M2 / count; defined as 1 while nothing has been merged.

    Returning 1 (not 0) for an empty object keeps :func:`normalize_obs` an identity map before
    the first rollout instead of dividing by sqrt(eps).
    """
    return jnp.where(stats.count > 0, stats.m2 / jnp.maximum(stats.count, 1.0), 1.0)


def normalize_obs(
    stats: RunningStats, x: jax.Array, clip: float | jax.Array, eps: float = 1e-8
) -> jax.Array:
    """``clip((x - mean) / sqrt(var + eps), -clip, clip)`` with frozen statistics.

    Pure: ``stats`` is only read, so the same object can be used for validation and test.
    With an empty ``stats`` (count 0) the mean is 0 and the variance is taken as 1, so the
    result is ``clip(x / sqrt(1 + eps))``, practically the clipped input.
    """
    x = jnp.asarray(x, jnp.float32)
    std = jnp.sqrt(running_variance(stats) + eps)
    return jnp.clip((x - stats.mean) / std, -clip, clip)
