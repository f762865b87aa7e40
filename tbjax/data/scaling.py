"""The feature z-score: ONE float32 transform used on the host and inside every compiled program.

MarketData keeps the raw feature columns and a :class:`FeatureScaling` (the train-fitted
statistics of :class:`tbjax.data.pipeline.FeaturePipeline`); the env applies the scaling to the
observation window it gathers (:func:`tbjax.env.market.observe`), the Gymnasium twin and
``FeaturePipeline.transform`` apply the same :func:`standardize` in NumPy. Why the statistics are
leaves and not baked into the features: walk-forward folds share ONE copy of the market's big
arrays and differ only in these [F] leaves (and their role ranges), so the folds' vmapped program
maps over a few numbers per fold instead of over K copies of the market.

Why the same numbers everywhere: every step is one IEEE float32 operation (subtract, multiply,
compare, select, min/max) with no sum or product that a compiler could contract or reorder, so
NumPy and XLA (any fusion, any program) give bit-identical results; a saved policy therefore
decides exactly as the run that trained it. The scale is the float32 of 1/std (computed once, on
the host, in float64) rather than a division, so no backend's division shortcut can differ.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class FeatureScaling:
    """z = clip(finite_or_0((x - shift) * scale), -clip, clip), per feature column.

    shift: [F] float32 train mean; scale: [F] float32 1 / max(std, std_floor), 0 for a column with
    no finite train value (it scales to 0 everywhere); clip: float32 scalar, inf for no clip.
    """

    shift: jnp.ndarray
    scale: jnp.ndarray
    clip: jnp.ndarray


def standardize(x, shift, scale, clip, xp=np):
    """The z-score of raw float32 features ``x[..., F]`` (``xp``: numpy or jax.numpy).

    NaN or inf (a lookback not yet filled, an undefined ratio) maps to 0, the train mean.
    """
    z = (x - shift) * scale
    z = xp.where(xp.isfinite(z), z, xp.zeros_like(z))
    return xp.minimum(xp.maximum(z, -clip), clip)


def scaling_arrays(mean, std, clip, dead=None) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """(shift, scale, clip) float32 from float64 statistics; ``dead``: columns that scale to 0."""
    scale = 1.0 / np.asarray(std, np.float64)
    if dead is not None:
        scale = np.where(np.asarray(dead, bool), 0.0, scale)
    return (np.asarray(mean, np.float32), scale.astype(np.float32),
            np.float32(np.inf if clip is None else clip))


def identity_scaling(n_features: int) -> FeatureScaling:
    """Features that are already scaled (tests, benchmarks' synthetic arrays) pass unchanged."""
    return FeatureScaling(jnp.zeros(n_features, jnp.float32), jnp.ones(n_features, jnp.float32),
                          jnp.float32(np.inf))


def to_device(shift, scale, clip) -> FeatureScaling:
    return FeatureScaling(jnp.asarray(shift, jnp.float32), jnp.asarray(scale, jnp.float32),
                          jnp.asarray(clip, jnp.float32))
