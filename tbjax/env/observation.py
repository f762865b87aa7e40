"""What the agent sees at decision bar t: a window of market features plus its own account.

Market part: ``features[symbol, t - window_size + 1 : t + 1]`` flattened row by row (oldest
first), read with ONE ``lax.dynamic_slice`` so a vmapped env batch becomes one gather, then
z-scored with the market's train statistics (:func:`tbjax.data.scaling.standardize`; applied here,
to window_size x F values, so walk-forward folds can share one copy of the raw features). Rows are
causal (row t uses bars <= t), so nothing after bar t's close is visible (docs/DESIGN.md invariant 1).

Layout: the 4 account values FIRST, then the window, i.e. obs[:4] = account, obs[4:] = window.
(Assembled by writing both into one buffer with dynamic_update_slice: on XLA:CPU this runs at
gather speed, while concatenating [window, account] costs a second full pass over the batch.)

Account part (4 values):
    position                    fraction of equity held at close_t (after drift)
    log(equity / entry_equity)  unrealised log PnL since the current position was opened
    bars_in_position / episode_len
    1 - equity / peak_equity    drawdown from the episode's equity peak
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from tbjax.data.scaling import FeatureScaling, standardize

N_ACCOUNT_FEATURES = 4
POSITION_INDEX = 0  # obs[..., POSITION_INDEX]: the position held (the ensemble's no-trade tie rule reads it)


def market_window(features: jnp.ndarray, symbol, bar, window_size: int) -> jnp.ndarray:
    """Rows bar-window_size+1 .. bar of one symbol, flattened to [window_size * F].

    The [S, T, F] block is viewed as one flat vector (a free bitcast under jit) and the window
    is ONE contiguous dynamic_slice of window_size*F values. Vmapped, that is a gather with a
    single start index per env, which XLA:CPU copies row-contiguously (several times faster
    here than slicing the 3-D block with three start indices).
    """
    n_symbols, n_bars, n_features = features.shape
    first_row = symbol * n_bars + bar - (window_size - 1)
    flat = features.reshape(n_symbols * n_bars * n_features)
    return lax.dynamic_slice(flat, (first_row * n_features,), (window_size * n_features,))


def scaled_window(window: jnp.ndarray, scaling: FeatureScaling) -> jnp.ndarray:
    """The flat [window_size * F] raw window z-scored column by column (same layout)."""
    n_features = scaling.shift.shape[-1]
    rows = window.reshape(-1, n_features)
    return standardize(rows, scaling.shift, scaling.scale, scaling.clip, jnp).reshape(-1)


def account_features(position, equity, entry_equity, peak_equity, bars_in_position,
                     episode_len: int) -> jnp.ndarray:
    """The 4 account values listed in the module docstring, float32."""
    unrealised = jnp.log(equity / entry_equity)
    held = bars_in_position.astype(jnp.float32) / jnp.float32(episode_len)
    drawdown = 1.0 - equity / peak_equity
    return jnp.stack([position, unrealised, held, drawdown]).astype(jnp.float32)


def assemble_observation(account: jnp.ndarray, window: jnp.ndarray) -> jnp.ndarray:
    """float32 [4 + window_size*F] = [account, window] without a concatenate."""
    buf = jnp.zeros((N_ACCOUNT_FEATURES + window.shape[0],), jnp.float32)
    buf = lax.dynamic_update_slice(buf, window, (N_ACCOUNT_FEATURES,))
    return lax.dynamic_update_slice(buf, account, (0,))
