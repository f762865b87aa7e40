"""Risk metrics against hand computations and closed forms (not the code path under test)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tbjax.errors import InputError
from tbjax.evaluation.metrics import (
    METRIC_KEYS,
    buy_and_hold_returns,
    infer_bars_per_year,
    json_safe,
    pooled_metrics,
    pooled_series,
    risk_metrics,
)

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
MONDAY_2024_01_01_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC, a Monday


def test_constant_return_closed_forms():
    n, t = 365.0, 100
    m = risk_metrics(np.full(t, 0.001), np.ones(t), n)
    assert set(METRIC_KEYS) <= set(m)
    assert m["n_bars"] == t
    assert m["total_return"] == pytest.approx(1.001**t - 1, rel=1e-12)
    # E_T^(N/T) - 1 with E_T = 1.001^T is exactly 1.001^N - 1.
    assert m["cagr"] == pytest.approx(1.001**n - 1, rel=1e-9)
    assert m["max_drawdown"] == 0.0
    assert m["max_drawdown_duration"] == 0.0
    assert m["volatility"] == 0.0
    assert math.isnan(m["sharpe"])  # std 0: documented as undefined
    assert math.isnan(m["sortino"])  # no downside
    assert math.isnan(m["calmar"])  # no drawdown
    assert m["sortino_fallback"] == 1.0
    assert m["var_5"] == pytest.approx(0.001) and m["cvar_5"] == pytest.approx(0.001)
    assert m["turnover_total"] == 1.0 and m["turnover"] == pytest.approx(1.0 / t)
    assert m["n_trades"] == 1.0 and m["exposure"] == 1.0
    assert m["n_round_trips"] == 1.0 and m["win_rate"] == 1.0
    assert math.isnan(m["profit_factor"])  # no losing trade: undefined, not inf


def test_six_bar_series_by_hand():
    r = np.array([0.10, -0.05, -0.10, 0.02, 0.20, -0.01])
    p = np.array([1.0, 1.0, 0.0, -0.5, -0.5, 1.0])
    n = 252.0
    m = risk_metrics(r, p, n)

    final = 1.10 * 0.95 * 0.90 * 1.02 * 1.20 * 0.99
    assert m["total_return"] == pytest.approx(final - 1, rel=1e-12)
    assert m["cagr"] == pytest.approx(final ** (252 / 6) - 1, rel=1e-9)
    # Equity 1, 1.1, 1.045, 0.9405, 0.95931, 1.151172, 1.13966...: the trough 0.9405 under the
    # 1.1 peak is the deepest, 1 - 0.9405 / 1.1 = 0.145. It starts at bar 1's close and is
    # regained at bar 5 (1.151172 > 1.1): 4 bars. The final dip (1 bar, to the end) is shorter.
    assert m["max_drawdown"] == pytest.approx(0.145, rel=1e-12)
    assert m["max_drawdown_duration"] == 4.0
    assert m["calmar"] == pytest.approx((final ** (252 / 6) - 1) / 0.145, rel=1e-9)
    # Sorted: -0.10, -0.05, -0.01, 0.02, 0.10, 0.20; linear rule h = 0.05 * 5 = 0.25.
    assert m["var_5"] == pytest.approx(-0.10 + 0.25 * 0.05, abs=1e-15)
    assert m["cvar_5"] == pytest.approx(-0.10, abs=1e-15)
    # |delta position| with 0 before the first bar: 1, 0, 1, 0.5, 0, 1.5.
    assert m["turnover_total"] == pytest.approx(4.0)
    assert m["turnover"] == pytest.approx(4.0 / 6)
    assert m["n_trades"] == 4.0
    assert m["exposure"] == pytest.approx(5 / 6)
    # Trips: long bars 0-1, short bars 3-4, long bar 5.
    trips = [1.10 * 0.95 - 1, 1.02 * 1.20 - 1, -0.01]
    assert m["n_round_trips"] == 3.0
    assert m["win_rate"] == pytest.approx(2 / 3)
    assert m["profit_factor"] == pytest.approx((trips[0] + trips[1]) / 0.01, rel=1e-12)
    assert m["avg_trade_return"] == pytest.approx(sum(trips) / 3, rel=1e-12)
    # Sharpe with population std, written out.
    mean = 0.16 / 6
    var = sum((x - mean) ** 2 for x in r) / 6
    assert m["sharpe"] == pytest.approx(mean / math.sqrt(var) * math.sqrt(252), rel=1e-12)
    assert m["volatility"] == pytest.approx(math.sqrt(var) * math.sqrt(252), rel=1e-12)
    # Sortino: downside second moment (0.05^2 + 0.10^2 + 0.01^2) / 6 = 0.0021.
    assert m["sortino"] == pytest.approx(mean / math.sqrt(0.0021) * math.sqrt(252), rel=1e-12)
    assert m["sortino_fallback"] == 1.0  # 3 negative bars < 20


def test_sortino_by_hand_without_fallback():
    r = np.array([0.02, -0.01] * 20)  # 20 negative bars: no fallback
    m = risk_metrics(r, np.ones_like(r), 365.0)
    # mean 0.005; downside sqrt(20 * 0.01^2 / 40) = 0.01 / sqrt(2): per-bar Sortino sqrt(2) / 2.
    assert m["sortino"] == pytest.approx(0.005 / (0.01 / math.sqrt(2)) * math.sqrt(365), rel=1e-12)
    assert m["sortino_fallback"] == 0.0
    # Sharpe: std of a two-point series is half the gap, 0.015.
    assert m["sharpe"] == pytest.approx(0.005 / 0.015 * math.sqrt(365), rel=1e-12)


def test_degenerate_inputs_never_raise_and_are_json_safe():
    empty = risk_metrics(np.zeros(0), np.zeros(0), 365.0)
    assert empty["n_bars"] == 0
    assert math.isnan(empty["sharpe"]) and math.isnan(empty["total_return"])
    flat = risk_metrics(np.zeros(10), np.zeros(10), 365.0)
    assert flat["total_return"] == 0.0 and flat["n_trades"] == 0.0 and flat["exposure"] == 0.0
    assert math.isnan(flat["win_rate"]) and math.isnan(flat["profit_factor"])
    wiped = risk_metrics(np.array([0.5, -1.0, 0.0]), np.ones(3), 365.0)
    assert wiped["total_return"] == -1.0 and wiped["cagr"] == -1.0 and wiped["max_drawdown"] == 1.0
    for m in (empty, flat, wiped):
        text = json.dumps(json_safe(m), allow_nan=False)
        assert all(v is None or math.isfinite(v) for v in json.loads(text).values())


def test_json_safe_nested():
    obj = {"a": [1.0, float("nan"), np.float32(2.5)], "b": {"c": np.array([np.inf, 1.0])},
           "d": (np.int64(3), "x", None, True)}
    out = json.loads(json.dumps(json_safe(obj), allow_nan=False))
    assert out == {"a": [1.0, None, 2.5], "b": {"c": [None, 1.0]}, "d": [3, "x", None, True]}


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="positions has 2"):
        risk_metrics(np.zeros(3), np.zeros(2), 365.0)
    with pytest.raises(InputError, match="NaN"):
        risk_metrics(np.array([0.1, np.nan]), np.zeros(2), 365.0)
    with pytest.raises(InputError, match="row 1"):
        buy_and_hold_returns(np.array([1.0, 0.0, 2.0]))
    with pytest.raises(InputError, match="at least 2"):
        infer_bars_per_year(np.array([0]))
    with pytest.raises(InputError, match="strictly increasing"):
        infer_bars_per_year(np.array([0, HOUR_MS, HOUR_MS]))


def test_buy_and_hold_returns():
    np.testing.assert_allclose(buy_and_hold_returns(np.array([100.0, 110.0, 99.0])), [0.10, -0.10])


def test_bars_per_year_inference():
    start = MONDAY_2024_01_01_MS
    assert infer_bars_per_year(start + HOUR_MS * np.arange(24 * 30)) == pytest.approx(8760.0)
    assert infer_bars_per_year(start + 4 * HOUR_MS * np.arange(6 * 30)) == pytest.approx(2190.0)
    assert infer_bars_per_year(start + DAY_MS * np.arange(60)) == pytest.approx(365.0)
    # Weekday-only daily bars (exchange calendar): 12 weeks of Monday..Friday.
    weekdays = np.array([w * 7 + d for w in range(12) for d in range(5)])
    assert infer_bars_per_year(start + 14 * HOUR_MS + DAY_MS * weekdays) == pytest.approx(252.0)
    # Weekday-only hourly session of 7 bars (14:30..20:30 UTC): 252 * 7.
    session = np.array([day * DAY_MS + 14 * HOUR_MS + 1_800_000 + h * HOUR_MS
                        for day in weekdays for h in range(7)])
    assert infer_bars_per_year(start + session) == pytest.approx(252.0 * 7)
    # Weekly bars: calendar rule 365 / 7.
    assert infer_bars_per_year(start + 7 * DAY_MS * np.arange(20)) == pytest.approx(365.0 / 7)
    # Three weekday bars cannot show a weekend: assumed 24/7, as documented.
    assert infer_bars_per_year(start + DAY_MS * np.arange(3)) == pytest.approx(365.0)


def test_pooled_metrics_partly_overlapping_by_hand():
    t0 = MONDAY_2024_01_01_MS
    a = (t0 + HOUR_MS * np.arange(0, 4), np.array([0.01, 0.02, -0.01, 0.03]),
         np.array([1.0, 1.0, 0.0, 1.0]))
    b = (t0 + HOUR_MS * np.arange(2, 5), np.array([0.03, -0.02, 0.05]), np.array([-1.0, -1.0, 0.0]))
    times, r, p = pooled_series({"AAA": a, "BBB": b})
    np.testing.assert_array_equal(times, t0 + HOUR_MS * np.arange(5))
    # Hours 0-1 only AAA, 2-3 both (mean of two), 4 only BBB.
    expected_r = [0.01, 0.02, (-0.01 + 0.03) / 2, (0.03 - 0.02) / 2, 0.05]
    expected_p = [1.0, 1.0, -0.5, 0.0, 0.0]
    np.testing.assert_allclose(r, expected_r, rtol=1e-12)
    np.testing.assert_allclose(p, expected_p, rtol=1e-12)

    m = pooled_metrics({"AAA": a, "BBB": b}, 8760.0)
    assert m["n_symbols"] == 2.0 and m["n_bars"] == 5.0
    assert m["total_return"] == pytest.approx(1.01 * 1.02 * 1.01 * 1.005 * 1.05 - 1, rel=1e-12)
    assert m["turnover_total"] == pytest.approx(1.0 + 0.0 + 1.5 + 0.5 + 0.0)
    assert m["n_trades"] == 3.0 and m["exposure"] == pytest.approx(3 / 5)
    assert m["max_drawdown"] == 0.0  # every pooled return is positive
    # Trips: long hours 0-1, short hour 2.
    assert m["n_round_trips"] == 2.0 and m["win_rate"] == 1.0


def test_pooled_rejects_duplicate_timestamps():
    t = np.array([0, 0, 1])
    with pytest.raises(InputError, match="repeated timestamps"):
        pooled_series({"X": (t, np.zeros(3), np.zeros(3))})
