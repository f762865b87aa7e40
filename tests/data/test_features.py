"""Causal features: lookahead audit, hand-computed values, loop-based reference indicators."""

import math

import numpy as np
import pandas as pd
import pytest

from tbjax.data.features import (SLOWEST_INDICATOR_WINDOW, compute_features, feature_names,
                                 parkinson_volatility_per_bar, warmup_bars)
from tbjax.errors import InputError

MONDAY_2020_01_06 = 1_578_268_800_000  # 2020-01-06 00:00 UTC, a Monday
HOUR = 3_600_000


def random_bars(n, seed=0, taker=True):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.002, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.004, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.004, n)))
    volume = rng.lognormal(6, 0.6, n)
    volume[n // 3] = 0.0  # a zero-volume bar: undefined taker ratio
    bars = {"open_time": MONDAY_2020_01_06 + np.arange(n, dtype=np.int64) * HOUR,
            "open": open_, "high": high, "low": low, "close": close, "volume": volume}
    if taker:
        bars["taker_buy_base"] = volume * rng.uniform(0.2, 0.8, n)
    return bars


def flat_bars(close, high=None, low=None, volume=None):
    close = np.asarray(close, np.float64)
    n = len(close)
    return {"open_time": MONDAY_2020_01_06 + np.arange(n, dtype=np.int64) * HOUR,
            "open": np.r_[close[0], close[:-1]], "close": close,
            "high": close + 1 if high is None else np.asarray(high, np.float64),
            "low": close - 1 if low is None else np.asarray(low, np.float64),
            "volume": np.ones(n) if volume is None else np.asarray(volume, np.float64)}


@pytest.fixture(scope="module")
def full():
    bars = random_bars(600)
    return bars, compute_features(bars)


def test_no_lookahead_on_truncated_data(full):
    bars, feats = full
    rng = np.random.default_rng(1)
    for cut in [1, 7, 25, 40, 53] + list(rng.integers(60, 600, 5)):
        part = compute_features({k: v[:cut] for k, v in bars.items()})
        assert list(part) == list(feats)
        for name in feats:
            np.testing.assert_array_equal(part[name], feats[name][:cut], err_msg=name)


def test_columns_dtype_and_warmup(full):
    _, feats = full
    assert list(feats) == feature_names(True)
    assert all(v.dtype == np.float32 for v in feats.values())
    warm = warmup_bars(10)
    assert warm == 2 * SLOWEST_INDICATOR_WINDOW == 52 and warmup_bars(64) == 64
    for name, col in feats.items():  # every column defined after the warm-up, except 0/0 volume
        bad = ~np.isfinite(col[warm:])
        if name.startswith("taker_buy_ratio"):
            assert set(np.flatnonzero(bad) + warm) <= set(range(200, 206)), name
        else:
            assert not bad.any(), name
    assert feature_names(False) == [n for n in feature_names(True) if "taker" not in n]
    assert list(compute_features(random_bars(80, taker=False))) == feature_names(False)


def test_returns_and_ma_ratio_by_hand():
    close = 100.0 + np.arange(25)
    f = compute_features(flat_bars(close))
    assert np.isnan(f["logret_1"][0]) and np.isnan(f["ma20_ratio"][18])
    assert f["logret_1"][3] == pytest.approx(math.log(103 / 102), rel=1e-6)
    assert f["logret_5"][24] == pytest.approx(math.log(124 / 119), rel=1e-6)
    assert f["logret_20"][24] == pytest.approx(math.log(124 / 104), rel=1e-6)
    assert np.isnan(f["logret_20"][19])
    assert f["ma20_ratio"][19] == pytest.approx(119 / 109.5 - 1, rel=1e-6)
    assert f["ma20_ratio"][24] == pytest.approx(124 / 114.5 - 1, rel=1e-6)


def test_wilder_atr_by_hand():
    close = np.r_[np.full(15, 100.0), np.full(3, 110.0)]
    f = compute_features(flat_bars(close))  # high = close + 1, low = close - 1
    # TR = 2 on rows 1..14 -> ATR seed at row 14 = 2; row 15 gaps up: TR = |111 - 100| = 11.
    assert np.isnan(f["atr14_rel"][13])
    assert f["atr14_rel"][14] == pytest.approx(2 / 100, rel=1e-6)
    atr15 = (13 * 2 + 11) / 14
    assert f["atr14_rel"][15] == pytest.approx(atr15 / 110, rel=1e-6)
    assert f["atr14_rel"][16] == pytest.approx((13 * atr15 + 2) / 14 / 110, rel=1e-6)


def test_volume_z_volatility_and_calendar_by_hand():
    close = np.full(22, 100.0)
    volume = np.r_[np.arange(1.0, 21.0), 5.0, 5.0]
    bars = flat_bars(close, high=close * math.exp(0.02), low=close, volume=volume)
    f = compute_features(bars)
    assert f["volume_z20"][19] == pytest.approx((20 - 10.5) / math.sqrt(35.0), rel=1e-6)
    assert f["parkinson_vol20"][19] == pytest.approx(0.02 / (2 * math.sqrt(math.log(2))), 1e-6)
    gk = math.sqrt(0.5 * 0.02**2)  # open == close: only the range term
    assert f["garman_klass_vol20"][19] == pytest.approx(gk, rel=1e-6)
    np.testing.assert_allclose(parkinson_volatility_per_bar(bars["high"], bars["low"]),
                               0.02 / (2 * math.sqrt(math.log(2))), rtol=1e-12)
    assert f["rsi14"][14] == 50.0 and f["realized_vol20"][21] == 0.0
    const = compute_features(flat_bars(close, volume=np.full(22, 7.0)))
    assert const["volume_z20"][21] == 0.0  # constant window -> 0, not NaN
    # Monday 00:00 -> hour 0, day 0; 2020-01-01 (a Wednesday) 00:00 -> hour 48, day 2.
    assert f["how_sin"][0] == 0.0 and f["how_cos"][0] == 1.0 and f["dow_cos"][0] == 1.0
    assert f["how_sin"][5] == pytest.approx(math.sin(2 * math.pi * 5 / 168), abs=1e-7)
    wed = dict(bars, open_time=bars["open_time"] - 5 * 24 * HOUR)
    g = compute_features(wed)
    assert g["how_cos"][0] == pytest.approx(math.cos(2 * math.pi * 48 / 168), abs=1e-7)
    assert g["dow_sin"][0] == pytest.approx(math.sin(2 * math.pi * 2 / 7), abs=1e-7)


def reference_ema(values, n, first):
    """Textbook EMA with plain loops: SMA of the first n defined values, then alpha = 2/(n+1)."""
    out = [float("nan")] * len(values)
    alpha = 2.0 / (n + 1)
    seed_row = first + n - 1
    out[seed_row] = sum(values[first:seed_row + 1]) / n
    for t in range(seed_row + 1, len(values)):
        out[t] = alpha * values[t] + (1 - alpha) * out[t - 1]
    return out


def reference_rsi(close, n=14):
    """Wilder (1978) RSI with plain loops."""
    gains = [max(close[t] - close[t - 1], 0.0) for t in range(1, len(close))]
    losses = [max(close[t - 1] - close[t], 0.0) for t in range(1, len(close))]
    out = [float("nan")] * len(close)
    avg_g, avg_l = sum(gains[:n]) / n, sum(losses[:n]) / n
    for t in range(n, len(close)):
        if t > n:
            avg_g = (avg_g * (n - 1) + gains[t - 1]) / n
            avg_l = (avg_l * (n - 1) + losses[t - 1]) / n
        out[t] = 100.0 if avg_l == 0 else 100.0 - 100.0 / (1.0 + avg_g / avg_l)
    return out


def test_rsi_and_macd_match_loop_references(full):
    bars, f = full
    close = list(bars["close"])
    np.testing.assert_allclose(f["rsi14"], reference_rsi(close), atol=2e-4, equal_nan=True)
    ema12, ema26 = reference_ema(close, 12, 0), reference_ema(close, 26, 0)
    line = [a - b for a, b in zip(ema12, ema26)]
    signal = reference_ema(line, 9, 25)
    c = np.asarray(close)
    np.testing.assert_allclose(f["macd"], np.asarray(line) / c, rtol=1e-5, atol=1e-9,
                               equal_nan=True)
    np.testing.assert_allclose(f["macd_signal"], np.asarray(signal) / c, rtol=1e-5, atol=1e-9,
                               equal_nan=True)
    np.testing.assert_allclose(f["macd_hist"], (np.asarray(line) - signal) / c, rtol=1e-4,
                               atol=1e-8, equal_nan=True)
    assert np.isnan(f["macd_signal"][32]) and np.isfinite(f["macd_signal"][33])


def test_rolling_columns_match_pandas(full):
    bars, f = full
    logret = pd.Series(np.log(bars["close"])).diff()
    np.testing.assert_allclose(f["realized_vol20"], logret.rolling(20).std(), rtol=1e-5,
                               equal_nan=True)
    vol = pd.Series(bars["volume"])
    z = (vol - vol.rolling(20).mean()) / vol.rolling(20).std()
    np.testing.assert_allclose(f["volume_z20"], z, rtol=1e-5, atol=1e-6, equal_nan=True)
    ratio = bars["taker_buy_base"] / np.where(bars["volume"] > 0, bars["volume"], np.nan)
    np.testing.assert_allclose(f["taker_buy_ratio_mom5"], pd.Series(ratio).diff(5), rtol=1e-5,
                               atol=1e-7, equal_nan=True)


def test_bad_bars_raise_input_error():
    bars = random_bars(30)
    with pytest.raises(InputError, match="volume"):
        compute_features({k: v for k, v in bars.items() if k != "volume"})
    broken = dict(bars, close=bars["close"].copy())
    broken["close"][7] = 0.0
    with pytest.raises(InputError, match="row 7"):
        compute_features(broken)
