"""MarketData: every symbol's bars and features as one read-only pytree of device arrays.

Built once per run from the processed tables (after roles are assigned and the FeaturePipeline is
fit on the train rows). The features stay RAW; ``scaling`` holds the train statistics. Every
compiled program that steps the env first calls :func:`scaled_once`, which z-scores the whole
feature block ONCE (S x T x F values) so the env's per-step window read is a plain copy; scaling
each window on every step instead cost 5.8x the env's throughput (docs/PERFORMANCE.md). Symbols of
different length are padded to the longest one; ``lengths`` and the per-role row ranges say which
rows are real. The env only ever reads rows inside one role's range, which is what keeps train
episodes out of val/test rows.

Walk-forward folds share one MarketData's big arrays: a fold differs only in its
:data:`PER_FOLD_FIELDS` (role ranges and scaling), so :func:`stack_folds` stacks just those on a
fold axis and says so in the ``in_axes`` it returns.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from flax import struct

from tbjax.data.scaling import FeatureScaling, identity_scaling, standardize, to_device

ROLE_TRAIN, ROLE_VAL, ROLE_TEST = 0, 1, 2
ROLE_NAMES = ("train", "val", "test")


@struct.dataclass
class MarketData:
    """Padded arrays over S symbols and T bars (float32 / int32 / bool).

    features:     [S, T, F] raw causal features (row t uses bars <= t only), float32
    open, close:  [S, T] prices; an action decided on bar t's close fills at open[t+1]
    volatility:   [S, T] per-bar volatility estimate known at bar t's close (slippage scale)
    volume:       [S, T] traded volume in base units (market-impact participation)
    tradable:     [S, T] False on zero-volume bars, after gaps and in no-trade windows
    hour_of_week: [S, T] 0..167 UTC (liquidity seasonality)
    role_start, role_end: [S, 3] first row and one-past-last row of train/val/test per symbol
    lengths:      [S] number of real rows per symbol
    scaling:      the features' z-score statistics (:class:`tbjax.data.scaling.FeatureScaling`)
    features_scaled: static; True when ``features`` already hold the z-scores (:func:`scaled_once`)
    """

    features: jnp.ndarray
    open: jnp.ndarray
    close: jnp.ndarray
    volatility: jnp.ndarray
    volume: jnp.ndarray
    tradable: jnp.ndarray
    hour_of_week: jnp.ndarray
    role_start: jnp.ndarray
    role_end: jnp.ndarray
    lengths: jnp.ndarray
    scaling: FeatureScaling
    symbols: tuple = struct.field(pytree_node=False, default=())
    feature_names: tuple = struct.field(pytree_node=False, default=())
    features_scaled: bool = struct.field(pytree_node=False, default=False)

    @property
    def n_symbols(self) -> int:
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[2]


def role_bounds(role_ranges: list[list[tuple[int, int]]], n_sym: int) -> dict[str, jnp.ndarray]:
    """``role_start`` / ``role_end`` [S, 3] int32 from per-symbol (start, end) rows of train, val, test."""
    rows = np.asarray(role_ranges, np.int32).reshape(n_sym, 3, 2)
    return {"role_start": jnp.asarray(rows[..., 0]), "role_end": jnp.asarray(rows[..., 1])}


def market_data_from_arrays(
    symbols: list[str],
    features: list[np.ndarray],
    open_: list[np.ndarray],
    close: list[np.ndarray],
    volatility: list[np.ndarray],
    volume: list[np.ndarray],
    tradable: list[np.ndarray],
    hour_of_week: list[np.ndarray],
    role_ranges: list[list[tuple[int, int]]],
    feature_names: list[str],
    scaling: tuple | None = None,
) -> MarketData:
    """Pad per-symbol NumPy arrays to a common length and move them to the device.

    ``role_ranges[s]`` holds three (start, end) row ranges (train, val, test); end is exclusive.
    Padding rows repeat the last real price (so no division by zero) and are never tradable.
    ``scaling``: (shift, scale, clip) of :func:`tbjax.data.scaling.standardize`; None for features
    that are already scaled (identity).
    """
    n_sym = len(symbols)
    t_max = max(len(c) for c in close)

    def pad(arrs, fill_last: bool, dtype):
        out = np.zeros((n_sym, t_max) + arrs[0].shape[1:], dtype=dtype)
        for i, a in enumerate(arrs):
            out[i, : len(a)] = a
            if fill_last and len(a) < t_max:
                out[i, len(a):] = a[-1]
        return out

    return MarketData(
        features=jnp.asarray(pad(features, False, np.float32)),
        open=jnp.asarray(pad(open_, True, np.float32)),
        close=jnp.asarray(pad(close, True, np.float32)),
        volatility=jnp.asarray(pad(volatility, False, np.float32)),
        volume=jnp.asarray(pad(volume, False, np.float32)),
        tradable=jnp.asarray(pad(tradable, False, np.bool_)),
        hour_of_week=jnp.asarray(pad(hour_of_week, False, np.int32)),
        **role_bounds(role_ranges, n_sym),
        lengths=jnp.asarray(np.array([len(c) for c in close], np.int32)),
        scaling=identity_scaling(features[0].shape[1]) if scaling is None else to_device(*scaling),
        symbols=tuple(symbols),
        feature_names=tuple(feature_names),
    )


def scaled_once(data: MarketData) -> MarketData:
    """``data`` with its features z-scored once (a no-op when they already are).

    Called at the top of each compiled program that reads observations (the trainer's init and
    chunk, the evaluation walk), so a program's scan copies pre-scaled windows. The result is
    bit-identical to scaling each window (:func:`tbjax.data.scaling.standardize` is elementwise
    with no contractible arithmetic). Inside a program it is a transient [S, T, F] buffer: folds
    and members that share one MarketData still keep one copy of the raw bars between programs,
    and one mapped (looped) member at a time holds its scaled copy; vmapped folds hold K.
    """
    if data.features_scaled:
        return data
    s = data.scaling
    z = standardize(data.features, s.shift, s.scale, s.clip, jnp)
    return data.replace(features=z, features_scaled=True)


PER_FOLD_FIELDS = ("role_start", "role_end", "scaling")


def fold_view(data: MarketData, scaling: tuple, ranges: list[list[tuple[int, int]]] | None = None) -> MarketData:
    """``data``'s arrays (not copied) with another fold's feature scaling and role ranges (kept if None)."""
    if ranges is None:
        return data.replace(scaling=to_device(*scaling))
    return data.replace(**role_bounds(ranges, data.n_symbols), scaling=to_device(*scaling))


def stack_folds(folds: list[MarketData]) -> tuple[MarketData, MarketData]:
    """(data, in_axes): the folds' shared arrays ONCE, their PER_FOLD_FIELDS on a leading axis.

    ``in_axes`` is a MarketData-shaped prefix for ``jax.vmap``: 0 on the per-fold leaves, None on
    the shared ones. Every other field must be the same array in every fold (:func:`fold_view`);
    anything else is a programming error, raised as ValueError.
    """
    first = folds[0]
    shared = [name for name, f in first.__dataclass_fields__.items() if name not in PER_FOLD_FIELDS
              and f.metadata.get("pytree_node", True)]
    for fold in folds[1:]:
        moved = [f for f in shared if getattr(fold, f) is not getattr(first, f)]
        if moved or fold.symbols != first.symbols:
            raise ValueError(f"stack_folds: folds differ in shared field(s) {moved or ['symbols']}; "
                             "build them with fold_view from one MarketData")
    stacked = {f: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[getattr(d, f) for d in folds])
               for f in PER_FOLD_FIELDS}
    axes = first.replace(**{f: None for f in shared},
                         **{f: jax.tree_util.tree_map(lambda _: 0, getattr(first, f)) for f in PER_FOLD_FIELDS})
    return first.replace(**stacked), axes
