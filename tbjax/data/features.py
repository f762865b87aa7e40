"""Causal bar features: every value on row t is computed from rows 0..t only.

docs/DESIGN.md invariant 1 requires that features on bar t are identical whether or not later bars
exist. Every function here is a left-to-right computation (rolling windows over past rows,
recursive filters run forward from a seed built from the first rows), so
``compute_features(bars[:cut])`` equals the first ``cut`` rows of ``compute_features(bars)``.
The tests audit that for random cutoffs.

Columns (raw, not z-scored; float32; NaN while a lookback is not yet filled):

=====================  =====================================================================
logret_k (k=1,5,20)    ln(close_t / close_{t-k})
ma20_ratio             close_t / SMA20_t - 1, SMA20 = mean of the last 20 closes
macd                   (EMA12 - EMA26) / close_t              (Appel, 1979)
macd_signal            EMA9(EMA12 - EMA26) / close_t
macd_hist              (macd line - signal line) / close_t
atr14_rel              Wilder ATR(14) / close_t               (Wilder, 1978)
rsi14                  Wilder RSI(14) in [0, 100]             (Wilder, 1978)
parkinson_vol20        sqrt(mean_20[ln(H/L)^2 / (4 ln 2)])    (Parkinson, 1980)
garman_klass_vol20     sqrt(mean_20[0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2])  (Garman & Klass, 1980)
realized_vol20         sample std (ddof=1) of logret_1 over the last 20 bars
volume_z20             (volume_t - mean_20) / std_20 (ddof=1); 0 when the window is constant
taker_buy_ratio        taker_buy_base / volume (share of volume bought by takers); NaN if volume=0
taker_buy_ratio_mom5   taker_buy_ratio_t - taker_buy_ratio_{t-5}
how_sin, how_cos       sin/cos(2 pi h / 168), h = UTC hour of week, Monday 00:00 = 0
dow_sin, dow_cos       sin/cos(2 pi d / 7),  d = UTC day of week, Monday = 0
=====================  =====================================================================

Recursive averages and their seeds (the TA-Lib convention, so values match common charting):
* EMA(n) of a series first defined at row f: alpha = 2 / (n + 1); the seed at row f + n - 1 is the
  simple mean of rows f..f+n-1; after that y_t = y_{t-1} + alpha (x_t - y_{t-1}).
* Wilder smoothing of n: the same with alpha = 1 / n. True range and price changes need the
  previous close, so they start at row 1 and the ATR / RSI seeds sit at row n (mean of rows 1..n).
Because the seed uses only the first rows of the series, truncating the data at any later row
leaves every earlier value unchanged. The recursion is run by ``scipy.signal.lfilter`` with the
seed as its initial state, so there is no Python loop over rows.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from tbjax.config_rules import SLOWEST_INDICATOR_WINDOW  # MACD's slow EMA span (macd_lines), the longest lookback
from tbjax.errors import InputError

_BASE_NAMES = [
    "logret_1", "logret_5", "logret_20", "ma20_ratio",
    "macd", "macd_signal", "macd_hist", "atr14_rel", "rsi14",
    "parkinson_vol20", "garman_klass_vol20", "realized_vol20", "volume_z20",
]
_TAKER_NAMES = ["taker_buy_ratio", "taker_buy_ratio_mom5"]
_CALENDAR_NAMES = ["how_sin", "how_cos", "dow_sin", "dow_cos"]
_REQUIRED = ("open_time", "open", "high", "low", "close", "volume")

_MS_PER_HOUR = 3_600_000
HOURS_PER_WEEK = 168  # hour_of_week's range; also the length of env.liquidity_seasonality's curve
# 1970-01-01 (epoch 0) was a Thursday: add three days of hours so that Monday 00:00 UTC is hour 0.
_EPOCH_HOUR_OF_WEEK = 72


def warmup_bars(window_size: int) -> int:
    """Rows to skip before the first observation: every indicator defined and the window filled.

    Twice the slowest lookback lets the MACD signal EMA (defined from row 33) settle past its seed,
    and the observation window itself must fit. Also the minimum embargo between splits.
    """
    return max(2 * SLOWEST_INDICATOR_WINDOW, int(window_size))


# How each feature answers the MIRRORED market (every price p -> K/p, taker buyers <-> sellers; the
# training augmentation ``ppo.mirror``, tbjax.learner.mirror): -1 where it changes sign around its
# typical value (log returns exactly; trend and momentum, RSI around 50 and the taker-buy share around
# one half to first order), +1 where it keeps its value (volatility, volume, the clock, scheduled
# events). ``fear_greed`` (tbjax.data.sidedata) is sentiment about direction: -1.
MIRROR_PARITY = {
    **dict.fromkeys(["logret_1", "logret_5", "logret_20", "ma20_ratio", "macd", "macd_signal", "macd_hist",
                     "rsi14", "taker_buy_ratio", "taker_buy_ratio_mom5", "fear_greed"], -1.0),
    **dict.fromkeys(["atr14_rel", "parkinson_vol20", "garman_klass_vol20", "realized_vol20", "volume_z20",
                     *_CALENDAR_NAMES, "bars_since_event", "bars_until_event"], 1.0),
}


def feature_parity(names) -> np.ndarray:
    """float32 [F]: :data:`MIRROR_PARITY` of each feature column (a MarketData name may end in "_z")."""
    return np.asarray([MIRROR_PARITY[n.removesuffix("_z")] for n in names], np.float32)


def unknown_parity(names) -> list[str]:
    """The feature columns (without "_z") :data:`MIRROR_PARITY` does not know."""
    return [n.removesuffix("_z") for n in names if n.removesuffix("_z") not in MIRROR_PARITY]


def feature_names(has_taker: bool) -> list[str]:
    """Feature column names in their fixed order; taker-flow columns only when the data has them."""
    return _BASE_NAMES + (_TAKER_NAMES if has_taker else []) + _CALENDAR_NAMES


def parkinson_volatility_per_bar(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Parkinson (1980) range estimate of one bar's log-return std: |ln(H/L)| / (2 sqrt(ln 2)).

    From E[ln(H/L)^2] = 4 ln 2 sigma^2 for a driftless Brownian motion over the bar. Uses only the
    bar's own high and low, so it is known at the bar's close (the env uses it as slippage scale).
    """
    log_range = np.log(np.asarray(high, np.float64) / np.asarray(low, np.float64))
    return np.abs(log_range) / (2.0 * np.sqrt(np.log(2.0)))


def hour_of_week(open_time_ms: np.ndarray) -> np.ndarray:
    """UTC hour of week 0..167 of each bar's open time, Monday 00:00 = 0 (int64)."""
    hours = np.floor_divide(np.asarray(open_time_ms, np.int64), _MS_PER_HOUR)
    return (hours + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK


# ----------------------------------------------------------------------------- building blocks


def _lagged(x: np.ndarray, k: int) -> np.ndarray:
    """x_{t-k} aligned to row t, NaN for t < k."""
    out = np.full_like(x, np.nan)
    if k < len(x):
        out[k:] = x[: len(x) - k]
    return out


def rolling_mean(x: np.ndarray, n: int) -> np.ndarray:
    """Mean of rows t-n+1..t (NaN for t < n-1). A loop over the n lags, not over rows, and a fixed
    summation order per row, so truncated data gives bit-identical values."""
    out = np.full(len(x), np.nan)
    if len(x) < n:
        return out
    total = x[n - 1 :].copy()
    for k in range(1, n):
        total += x[n - 1 - k : len(x) - k]
    out[n - 1 :] = total / n
    return out


def rolling_std(x: np.ndarray, n: int, ddof: int = 1) -> np.ndarray:
    """Std of rows t-n+1..t, two-pass (deviations from the window mean) for numerical accuracy."""
    out = np.full(len(x), np.nan)
    if len(x) < n:
        return out
    mean = rolling_mean(x, n)[n - 1 :]
    total = (x[n - 1 :] - mean) ** 2
    for k in range(1, n):
        total += (x[n - 1 - k : len(x) - k] - mean) ** 2
    out[n - 1 :] = np.sqrt(total / (n - ddof))
    return out


def recursive_mean(x: np.ndarray, alpha: float, first: int, n: int) -> np.ndarray:
    """Exponential average y_t = y_{t-1} + alpha (x_t - y_{t-1}) seeded causally.

    ``x`` is defined from row ``first``; the seed at row ``first + n - 1`` is the simple mean of
    x[first : first + n]. EMA: alpha = 2/(n+1); Wilder: alpha = 1/n. Runs as the IIR filter
    b = [alpha], a = [1, -(1 - alpha)] whose initial state carries the seed.
    """
    out = np.full(len(x), np.nan)
    seed_row = first + n - 1
    if len(x) <= seed_row:
        return out
    seed = float(np.mean(x[first : seed_row + 1]))
    out[seed_row] = seed
    rest = x[seed_row + 1 :]
    if len(rest):
        decay = 1.0 - alpha
        out[seed_row + 1 :], _ = lfilter([alpha], [1.0, -decay], rest, zi=[decay * seed])
    return out


def _ema(x: np.ndarray, n: int, first: int = 0) -> np.ndarray:
    return recursive_mean(x, 2.0 / (n + 1.0), first, n)


def _wilder(x: np.ndarray, n: int, first: int = 1) -> np.ndarray:
    return recursive_mean(x, 1.0 / n, first, n)


# ----------------------------------------------------------------------------- indicators


def macd_lines(close: np.ndarray, fast: int = 12, slow: int = SLOWEST_INDICATOR_WINDOW, signal: int = 9):
    """MACD line EMA_fast - EMA_slow (defined from row slow-1), its EMA_signal and the histogram,
    all in price units (Appel, 1979)."""
    line = _ema(close, fast) - _ema(close, slow)
    signal_line = _ema(line, signal, first=slow - 1)
    return line, signal_line, line - signal_line


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Wilder's true range max(H-L, |H-C_{t-1}|, |L-C_{t-1}|); NaN on row 0 (no previous close)."""
    prev_close = _lagged(close, 1)
    tr = np.maximum(high - low, np.maximum(np.abs(high - prev_close), np.abs(low - prev_close)))
    tr[:1] = np.nan
    return tr


def wilder_rsi(close: np.ndarray, n: int = 14) -> np.ndarray:
    """RSI = 100 - 100 / (1 + avg_gain / avg_loss) with Wilder-smoothed gains and losses.

    100 when there were no losses in the average, 50 when the price did not move at all.
    """
    change = close - _lagged(close, 1)
    avg_gain = _wilder(np.maximum(change, 0.0), n)
    avg_loss = _wilder(np.maximum(-change, 0.0), n)
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi = 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)
    rsi = np.where((avg_loss == 0.0) & (avg_gain > 0.0), 100.0, rsi)
    return np.where((avg_loss == 0.0) & (avg_gain == 0.0), 50.0, rsi)


def _check_bars(bars: dict[str, np.ndarray]) -> int:
    missing = [c for c in _REQUIRED if c not in bars]
    if missing:
        raise InputError(
            f"bars are missing column(s) {missing}; compute_features needs {list(_REQUIRED)}"
        )
    n = len(bars["close"])
    for name, col in bars.items():
        if np.ndim(col) != 1 or len(col) != n:
            raise InputError(
                f"bar column {name!r} has shape {np.shape(col)}, expected ({n},) like 'close'"
            )
    for name in ("open", "high", "low", "close"):
        bad = np.flatnonzero(~(np.asarray(bars[name], np.float64) > 0.0))
        if len(bad):
            raise InputError(
                f"bar column {name!r} has a non-positive or missing price at row {bad[0]} "
                f"(value {bars[name][bad[0]]}); clean or drop such bars before computing features"
            )
    return n


def compute_features(bars: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every feature of ``feature_names(has_taker)`` for one symbol's sorted bars (see module doc).

    Args:
        bars: canonical bar columns (open_time int64 ms UTC, open/high/low/close/volume, optional
            taker_buy_base), all the same length.
    Returns:
        dict name -> float32 array of the same length; NaN where the lookback is not yet filled.
    """
    _check_bars(bars)
    op = np.asarray(bars["open"], np.float64)
    high = np.asarray(bars["high"], np.float64)
    low = np.asarray(bars["low"], np.float64)
    close = np.asarray(bars["close"], np.float64)
    volume = np.asarray(bars["volume"], np.float64)
    log_close = np.log(close)
    out: dict[str, np.ndarray] = {}

    for k in (1, 5, 20):
        out[f"logret_{k}"] = log_close - _lagged(log_close, k)
    out["ma20_ratio"] = close / rolling_mean(close, 20) - 1.0

    line, signal_line, hist = macd_lines(close)
    out["macd"], out["macd_signal"], out["macd_hist"] = (line / close, signal_line / close,
                                                         hist / close)
    out["atr14_rel"] = _wilder(true_range(high, low, close), 14) / close
    out["rsi14"] = wilder_rsi(close, 14)

    log_hl_sq = np.log(high / low) ** 2
    out["parkinson_vol20"] = np.sqrt(rolling_mean(log_hl_sq / (4.0 * np.log(2.0)), 20))
    gk_var = 0.5 * log_hl_sq - (2.0 * np.log(2.0) - 1.0) * np.log(close / op) ** 2
    out["garman_klass_vol20"] = np.sqrt(np.maximum(rolling_mean(gk_var, 20), 0.0))
    out["realized_vol20"] = rolling_std(out["logret_1"], 20)

    vol_std = rolling_std(volume, 20)
    with np.errstate(divide="ignore", invalid="ignore"):
        volume_z = (volume - rolling_mean(volume, 20)) / vol_std
    out["volume_z20"] = np.where(vol_std == 0.0, 0.0, volume_z)

    if "taker_buy_base" in bars:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.asarray(bars["taker_buy_base"], np.float64) / volume
        ratio = np.where(volume > 0.0, ratio, np.nan)
        out["taker_buy_ratio"] = ratio
        out["taker_buy_ratio_mom5"] = ratio - _lagged(ratio, 5)

    how = hour_of_week(bars["open_time"]).astype(np.float64)
    dow = np.floor_divide(how, 24.0)
    out["how_sin"], out["how_cos"] = np.sin(2 * np.pi * how / HOURS_PER_WEEK), np.cos(2 * np.pi * how / HOURS_PER_WEEK)
    out["dow_sin"], out["dow_cos"] = np.sin(2 * np.pi * dow / 7), np.cos(2 * np.pi * dow / 7)

    names = feature_names("taker_buy_base" in bars)
    return {name: out[name].astype(np.float32) for name in names}
