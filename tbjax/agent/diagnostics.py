"""Explained variance of the critic, overall and per group (for example per symbol).

EV = 1 - Var[y - y_pred] / Var[y], as Stable-Baselines3 logs it (``explained_variance`` in
stable_baselines3/common/utils.py): 1 is a perfect critic, 0 no better than the mean, < 0 worse.
Pooled over several symbols, EV can look good only because the critic learned each symbol's
mean; the per-group summary (docs/ALGORITHMS.md) shows whether it explains variation within each.

Weighted variance with reliability weights w (the unbiased form):
    Var_w[x] = sum w (x - mean_w)^2 / (sum w - sum w^2 / sum w),  mean_w = sum w x / sum w.
EV is undefined (NaN) when Var_w[y] < 1e-6, when no entry carries weight, or when the
denominator is not positive (a single weighted entry). Entries where y or y_pred is not finite
get weight 0. Everything is jittable; the number of groups is static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

VARIANCE_FLOOR = 1e-6


def _clean_weights(y: jax.Array, y_pred: jax.Array, weights: jax.Array | None) -> jax.Array:
    w = jnp.ones_like(y) if weights is None else jnp.asarray(weights, jnp.float32)
    valid = jnp.isfinite(y) & jnp.isfinite(y_pred) & jnp.isfinite(w) & (w > 0)
    return jnp.where(valid, w, 0.0)


def _grouped_ev(
    y: jax.Array, y_pred: jax.Array, w: jax.Array, group_ids: jax.Array, n_groups: int
) -> tuple[jax.Array, jax.Array]:
    """EV per group and the number of weighted samples per group (two-pass weighted variance)."""
    valid = w > 0
    y = jnp.where(valid, y, 0.0)  # zero weight must not carry NaN/inf into the sums
    residual = jnp.where(valid, y - y_pred, 0.0)

    def segment_sum(x: jax.Array) -> jax.Array:
        return jax.ops.segment_sum(x, group_ids, num_segments=n_groups)

    sum_w = segment_sum(w)
    sum_w2 = segment_sum(jnp.square(w))
    safe_sum_w = jnp.where(sum_w > 0, sum_w, 1.0)
    denom = sum_w - sum_w2 / safe_sum_w

    def weighted_var(x: jax.Array) -> jax.Array:
        mean = segment_sum(w * x) / safe_sum_w
        dev = x - mean[group_ids]
        return segment_sum(w * jnp.square(dev)) / jnp.where(denom > 0, denom, 1.0)

    var_y = weighted_var(y)
    var_residual = weighted_var(residual)
    defined = (sum_w > 0) & (denom > 0) & (var_y >= VARIANCE_FLOOR)
    ev = jnp.where(defined, 1.0 - var_residual / jnp.where(defined, var_y, 1.0), jnp.nan)
    n_samples = segment_sum(valid.astype(jnp.float32))
    return ev, n_samples


def explained_variance(
    y: jax.Array, y_pred: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """1 - Var_w[y - y_pred] / Var_w[y] over all entries (float32 scalar, NaN if undefined).

    Args:
        y: targets (e.g. returns), any shape.
        y_pred: critic predictions, same shape.
        weights: optional non-negative weights (e.g. a validity mask), same shape.
    """
    y = jnp.asarray(y, jnp.float32).ravel()
    y_pred = jnp.asarray(y_pred, jnp.float32).ravel()
    w = _clean_weights(y, y_pred, None if weights is None else jnp.ravel(weights))
    ev, _ = _grouped_ev(y, y_pred, w, jnp.zeros(y.shape, jnp.int32), 1)
    return ev[0]


def grouped_explained_variance(
    y: jax.Array,
    y_pred: jax.Array,
    group_ids: jax.Array,
    n_groups: int,
    weights: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """EV per group g and its summaries.

    Args:
        y, y_pred: same shape.
        group_ids: int group index per entry in [0, n_groups) (entries outside are ignored).
        n_groups: static number of groups.
        weights: optional non-negative weights.

    Returns:
        ``ev_groups`` [n_groups] (NaN where undefined); ``ev_mean`` the unweighted mean of the
        finite EV_g; ``ev_weighted`` their mean weighted by n_g, the number of entries of group
        g with positive weight; ``ev_median`` their median. Each summary is NaN when no EV_g is
        finite.
    """
    y = jnp.asarray(y, jnp.float32).ravel()
    y_pred = jnp.asarray(y_pred, jnp.float32).ravel()
    group_ids = jnp.asarray(group_ids, jnp.int32).ravel()
    w = _clean_weights(y, y_pred, None if weights is None else jnp.ravel(weights))
    in_range = (group_ids >= 0) & (group_ids < n_groups)
    w = jnp.where(in_range, w, 0.0)
    group_ids = jnp.where(in_range, group_ids, 0)
    ev, n_samples = _grouped_ev(y, y_pred, w, group_ids, n_groups)

    finite = jnp.isfinite(ev)
    n_finite = jnp.sum(finite)
    ev_finite = jnp.where(finite, ev, 0.0)
    count = jnp.where(finite, n_samples, 0.0)
    ev_mean = jnp.where(n_finite > 0, jnp.sum(ev_finite) / jnp.maximum(n_finite, 1), jnp.nan)
    ev_weighted = jnp.where(
        jnp.sum(count) > 0, jnp.sum(count * ev_finite) / jnp.maximum(jnp.sum(count), 1.0), jnp.nan
    )
    ev_median = jnp.nanmedian(ev)
    return {
        "ev_mean": ev_mean,
        "ev_weighted": ev_weighted,
        "ev_median": ev_median,
        "ev_groups": ev,
    }
