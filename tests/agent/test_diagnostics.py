"""Explained variance against a NumPy reference written here (weighted, masked, grouped)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tbjax.agent.diagnostics import explained_variance, grouped_explained_variance


def reference_weighted_var(x, w):
    sw = w.sum()
    mean = (w * x).sum() / sw
    return (w * (x - mean) ** 2).sum() / (sw - (w**2).sum() / sw)


def reference_ev(y, y_pred, w=None):
    """1 - Var_w[y - y_pred] / Var_w[y] in float64, non-finite entries dropped."""
    y, y_pred = np.asarray(y, np.float64), np.asarray(y_pred, np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, np.float64)
    keep = np.isfinite(y) & np.isfinite(y_pred) & (w > 0)
    y, y_pred, w = y[keep], y_pred[keep], w[keep]
    if w.sum() <= 0 or w.sum() - (w**2).sum() / w.sum() <= 0:
        return np.nan
    var_y = reference_weighted_var(y, w)
    if var_y < 1e-6:
        return np.nan
    return 1.0 - reference_weighted_var(y - y_pred, w) / var_y


@pytest.fixture(scope="module")
def critic_data():
    rng = np.random.default_rng(0)
    n = 400
    group_ids = rng.integers(0, 4, size=n)
    group_means = np.array([10.0, -5.0, 0.0, 3.0])
    y = group_means[group_ids] + rng.normal(0.0, 1.0, n)
    y[group_ids == 2] = 7.0  # a constant group: EV undefined there
    y_pred = group_means[group_ids] + 0.6 * (y - group_means[group_ids]) + rng.normal(0, 0.5, n)
    weights = rng.uniform(0.0, 2.0, n)
    weights[rng.random(n) < 0.2] = 0.0  # masked entries
    y[5] = np.nan  # a non-finite target and prediction get weight 0
    y_pred[17] = np.inf
    return y.astype(np.float32), y_pred.astype(np.float32), group_ids, weights.astype(np.float32)


ev_jit = jax.jit(explained_variance)
grouped_jit = jax.jit(grouped_explained_variance, static_argnums=3)


def test_pooled_explained_variance_unweighted_and_weighted(critic_data):
    y, y_pred, _, w = critic_data
    np.testing.assert_allclose(float(ev_jit(y, y_pred)), reference_ev(y, y_pred), rtol=1e-4)
    np.testing.assert_allclose(float(ev_jit(y, y_pred, w)), reference_ev(y, y_pred, w), rtol=1e-4)
    # Pooled EV is high only because the critic learned each group's mean.
    assert float(ev_jit(y, y_pred)) > 0.9


def test_known_values():
    y = jnp.array([1.0, 2.0, 3.0, 4.0])
    assert float(ev_jit(y, y)) == 1.0
    # A constant prediction leaves Var[y - c] = Var[y]: EV = 0.
    np.testing.assert_allclose(float(ev_jit(y, jnp.full(4, 2.5))), 0.0, atol=1e-7)
    # y_pred = -y: Var[2y] = 4 Var[y], EV = -3.
    np.testing.assert_allclose(float(ev_jit(y, -y)), -3.0, rtol=1e-6)


def test_undefined_cases_are_nan():
    y = jnp.array([2.0, 2.0, 2.0])
    assert np.isnan(float(ev_jit(y, jnp.array([1.0, 2.0, 3.0]))))  # Var[y] = 0
    assert np.isnan(float(ev_jit(jnp.array([1.0, 5.0]), jnp.zeros(2), jnp.zeros(2))))
    one_weighted = ev_jit(jnp.array([1.0, 5.0]), jnp.zeros(2), jnp.array([1.0, 0.0]))
    assert np.isnan(float(one_weighted))  # a single weighted entry has no variance


@pytest.mark.parametrize("weighted", [False, True])
def test_grouped_explained_variance_matches_reference(critic_data, weighted):
    y, y_pred, group_ids, w = critic_data
    w = w if weighted else None
    out = grouped_jit(jnp.asarray(y), jnp.asarray(y_pred), jnp.asarray(group_ids), 4,
                      None if w is None else jnp.asarray(w))
    ref_groups, counts = [], []
    for g in range(4):
        sel = group_ids == g
        ref_groups.append(reference_ev(y[sel], y_pred[sel], None if w is None else w[sel]))
        wg = np.ones(sel.sum()) if w is None else w[sel]
        counts.append(np.sum(np.isfinite(y[sel]) & np.isfinite(y_pred[sel]) & (wg > 0)))
    ref_groups, counts = np.array(ref_groups), np.array(counts, np.float64)
    assert np.isnan(ref_groups[2]) and np.isnan(float(out["ev_groups"][2]))
    np.testing.assert_allclose(np.asarray(out["ev_groups"]), ref_groups, rtol=1e-4)
    finite = np.isfinite(ref_groups)
    np.testing.assert_allclose(float(out["ev_mean"]), ref_groups[finite].mean(), rtol=1e-4)
    np.testing.assert_allclose(
        float(out["ev_weighted"]),
        np.sum(counts[finite] * ref_groups[finite]) / counts[finite].sum(),
        rtol=1e-4,
    )
    np.testing.assert_allclose(float(out["ev_median"]), np.median(ref_groups[finite]), rtol=1e-4)
    # Within groups the critic explains far less than the pooled figure suggests.
    assert float(out["ev_mean"]) < 0.7


def test_grouped_all_undefined_gives_nan_summaries():
    y = jnp.array([1.0, 1.0, 3.0, 3.0])
    out = grouped_jit(y, jnp.zeros(4), jnp.array([0, 0, 1, 1]), 2)
    for key in ("ev_mean", "ev_weighted", "ev_median"):
        assert np.isnan(float(out[key])), key
    assert np.all(np.isnan(np.asarray(out["ev_groups"])))
