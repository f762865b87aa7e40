"""Trader-facing risk metrics of a strategy's per-bar returns (pure NumPy, host side).

These numbers are what a person compares across runs, baselines and the seed system, so every
metric has one written definition (below and in docs/ALGORITHMS.md "Risk metrics"), is
computed in float64 on the host, and degrades to NaN instead of raising or returning infinity
when it is undefined (no trades, zero volatility, no drawdown, an empty series). ``json_safe``
turns those NaNs into JSON ``null`` so eval files stay valid JSON.

Conventions (risk-free rate 0, N = bars per year, r_t simple net return of bar t, T bars):
    equity        E_0 = 1 before the first bar, E_t = prod_{s<=t} (1 + r_s)
    total_return  E_T - 1
    cagr          E_T^(N/T) - 1                                   (-1 when E_T <= 0)
    volatility    std(r) * sqrt(N), population std (ddof = 0)
    sharpe        mean(r) / std(r) * sqrt(N)                      (Sharpe 1994)
    sortino       mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(N)     (Sortino & Price 1994)
    max_drawdown  max_t (1 - E_t / max_{s<=t} E_s), E_0 included  (Magdon-Ismail & Atiya 2004)
    calmar        cagr / max_drawdown                             (Young 1991)
    var_5         5th percentile of r, NumPy "linear" rule (Hyndman & Fan 1996 type 7):
                  sorted x_0..x_{T-1}, h = 0.05 (T - 1), i = floor(h),
                  VaR = x_i + (h - i) (x_{i+1} - x_i)
    cvar_5        mean of the r_t <= var_5 (Rockafellar & Uryasev 2000, historical estimator)
Trade statistics follow backtesting.py (kernc): win rate and profit factor per round trip.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tbjax.errors import InputError

MS_PER_DAY = 86_400_000.0
STD_FLOOR = 1e-12  # a per-bar std below this is treated as zero (float rounding of a constant)
SORTINO_FALLBACK_MIN_NEGATIVE = 20  # the seed system used Sharpe with fewer negative bars
TAIL_LEVEL = 0.05

# Every metric of risk_metrics, registered ONCE with how a report shows it: (label, format), the
# format one of percent, count, ratio (2 decimals), flag (yes / no) or number (4 significant
# digits); tbjax.evaluation.report reads this table, so a new metric is its formula below plus
# one entry here.
METRICS: dict[str, tuple[str, str]] = {
    "n_bars": ("bars", "count"), "total_return": ("total return", "percent"), "cagr": ("CAGR", "percent"),
    "volatility": ("volatility (ann.)", "percent"), "sharpe": ("Sharpe", "ratio"), "sortino": ("Sortino", "ratio"),
    "sortino_fallback": ("Sortino < 20 neg. bars", "flag"), "calmar": ("Calmar", "ratio"),
    "max_drawdown": ("max drawdown", "percent"), "max_drawdown_duration": ("max DD duration (bars)", "count"),
    "var_5": ("VaR 5% (per bar)", "percent"), "cvar_5": ("CVaR 5% (per bar)", "percent"),
    "turnover": ("turnover per bar", "number"), "turnover_total": ("turnover total", "ratio"),
    "exposure": ("exposure", "percent"), "n_trades": ("position changes", "count"),
    "n_round_trips": ("round trips", "count"), "win_rate": ("win rate", "percent"),
    "profit_factor": ("profit factor", "ratio"), "avg_trade_return": ("avg trip return", "percent"),
}
METRIC_KEYS = tuple(METRICS)
SHOWN_METRICS = {**METRICS, "n_symbols": ("symbols", "count")}  # pooled_metrics adds n_symbols


def infer_bars_per_year(open_time_ms: np.ndarray) -> float:
    """Bars per year implied by bar open times, for annualising Sharpe, Sortino and CAGR.

    Why not a config value: the same trainer sees crypto (24/7) and exchange (weekday) data at
    any bar size, and a wrong N silently scales every annualised number by sqrt(N ratio).

    Rule (median spacing ``dt`` of consecutive timestamps, weekends judged in UTC):
      * ``dt`` of 2 days or more (weekly, ...): calendar rule ``365 * day / dt``.
      * weekday-only data (no bar on a Saturday or Sunday although the span covers at least
        7 days): exchange rule ``252 * bars_per_day``, with ``bars_per_day`` the median number of
        bars per UTC trading date (1 for daily bars -> 252; 7 for hourly equity sessions).
      * otherwise (24/7 data, or too short a span to tell, assumed 24/7 like crypto):
        ``365 * day / dt`` -> 365 daily, 2,190 for 4 h, 8,760 hourly.
    365 rather than 365.25 days so the conventional values above come out exactly.

    Raises:
        InputError: fewer than two timestamps, or timestamps not strictly increasing.
    """
    t = np.asarray(open_time_ms, dtype=np.int64).ravel()
    if t.size < 2:
        raise InputError(
            f"cannot infer bars per year from {t.size} timestamp(s) in open_time: need at least 2 "
            "bars, or set bars_per_year explicitly")
    dt = np.diff(t)
    if np.any(dt <= 0):
        i = int(np.argmax(dt <= 0))
        raise InputError(
            f"open_time is not strictly increasing at row {i + 1} ({t[i]} then {t[i + 1]} ms): "
            "sort the bars by time and drop duplicates")
    median_dt = float(np.median(dt))
    if median_dt >= 2 * MS_PER_DAY:
        return 365.0 * MS_PER_DAY / median_dt
    days = t // int(MS_PER_DAY)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0 ... Sunday = 6
    spans_a_week = (t[-1] - t[0]) >= 7 * MS_PER_DAY
    if spans_a_week and not np.any(weekday >= 5):
        _, bars_per_date = np.unique(days, return_counts=True)
        return 252.0 * float(np.median(bars_per_date))
    return 365.0 * MS_PER_DAY / median_dt


def equity_curve(returns: np.ndarray) -> np.ndarray:
    """Equity E_0..E_T with E_0 = 1 before the first bar: compounding of simple returns."""
    r = np.asarray(returns, dtype=np.float64).ravel()
    return np.concatenate([[1.0], np.cumprod(1.0 + r)])


def drawdown_curve(equity: np.ndarray) -> np.ndarray:
    """Fractional drawdown 1 - E_t / max_{s<=t} E_s at each point (0 at a new high)."""
    e = np.asarray(equity, dtype=np.float64)
    peak = np.maximum.accumulate(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(peak > 0, 1.0 - e / peak, 0.0)
    return dd


def max_drawdown_duration(equity: np.ndarray) -> int:
    """Longest time in bars from a peak to the first bar that regains it (or to the last bar).

    A run of underwater points a..b of ``equity`` (indices into E_0..E_T) starts at the peak
    a - 1; if it recovers at b + 1 the duration is b - a + 2, else (still underwater at the end)
    it is T - (a - 1). 0 when equity never falls below a previous high.
    """
    e = np.asarray(equity, dtype=np.float64)
    under = e < np.maximum.accumulate(e)
    if not under.any():
        return 0
    edges = np.diff(np.concatenate([[0], under.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1  # last underwater index of each run
    last = e.size - 1
    durations = np.where(ends == last, last - (starts - 1), ends - starts + 2)
    return int(durations.max())


def var_cvar(returns: np.ndarray, level: float = TAIL_LEVEL) -> tuple[float, float]:
    """Historical VaR and CVaR at ``level``: the linear-rule percentile and the mean at or below it.

    Both are returns (negative numbers are losses), as in docs/ALGORITHMS.md. NaN for an empty series.
    """
    r = np.asarray(returns, dtype=np.float64).ravel()
    if r.size == 0:
        return math.nan, math.nan
    var = float(np.percentile(r, 100.0 * level, method="linear"))
    cvar = float(r[r <= var].mean())
    return var, cvar


def round_trip_returns(returns: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Compounded return of each round trip: a maximal run of bars with one nonzero position sign.

    A long run followed directly by a short run is two trips. The trip return is
    prod(1 + r) - 1 over its bars; a cost charged on the bar after the run (when the position
    held over that bar is already 0) belongs to no trip.
    """
    r = np.asarray(returns, dtype=np.float64).ravel()
    side = np.sign(np.asarray(positions, dtype=np.float64).ravel())
    if r.size == 0:
        return np.zeros(0)
    starts = np.flatnonzero(np.concatenate([[True], side[1:] != side[:-1]]))
    trip = np.multiply.reduceat(1.0 + r, starts) - 1.0
    return trip[side[starts] != 0]


def _nan_dict() -> dict[str, float]:
    return {k: math.nan for k in METRIC_KEYS}


def risk_metrics(
    returns: np.ndarray, positions: np.ndarray, bars_per_year: float,
    traded: np.ndarray | None = None,
) -> dict[str, float]:
    """All risk metrics of one strategy series; see the module docstring for each formula.

    Args:
        returns: per-bar simple net returns r_t of the strategy, shape [T].
        positions: position held over each bar, shape [T] (sign = side, magnitude = exposure).
        bars_per_year: N for annualisation (``infer_bars_per_year``).
        traded: optional fraction of equity actually traded on each bar, shape [T], as the
            market env charged it (``info["turnover"]``). A constant target position still
            trades every bar, because prices move the held fraction away from the target and
            the env rebalances it back (and pays for it); the target series does not show those
            trades, so the backtest passes what the env charged.

    Returns:
        A dict with every key of ``METRIC_KEYS`` as a Python float:
        ``turnover`` is the mean traded fraction per bar and ``turnover_total`` the sum: ``traded``
        when given, else |delta position| with the position before the first bar taken as 0;
        ``exposure`` the fraction of bars with a nonzero
        position; ``n_trades`` the number of position changes; ``n_round_trips``, ``win_rate``
        (share of trips with return > 0), ``profit_factor`` (sum of winning trip returns over the
        absolute sum of losing ones) and ``avg_trade_return`` per round trip
        (``round_trip_returns``); ``sortino_fallback`` is 1.0 when fewer than 20 bars are negative
        (the seed system then reported Sharpe instead; here the true Sortino is kept).
        Undefined values are NaN, never inf; degenerate input (empty, constant, flat) never raises.

    Raises:
        InputError: returns and positions differ in length, or contain NaN / inf.
    """
    r = np.asarray(returns, dtype=np.float64).ravel()
    p = np.asarray(positions, dtype=np.float64).ravel()
    if r.shape != p.shape:
        raise InputError(
            f"risk_metrics: returns has {r.size} bars but positions has {p.size}: "
            "pass one position per return bar")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(p))):
        raise InputError("risk_metrics: returns or positions contain NaN or inf: check the rollout")
    out = _nan_dict()
    t = r.size
    out["n_bars"] = float(t)
    if t == 0:
        return out
    n = float(bars_per_year)
    equity = equity_curve(r)
    final = equity[-1]
    out["total_return"] = float(final - 1.0)
    out["cagr"] = float(final ** (n / t) - 1.0) if final > 0 else -1.0
    mean = float(r.mean())
    std = float(r.std())
    if std > STD_FLOOR:
        out["volatility"] = std * math.sqrt(n)
        out["sharpe"] = mean / std * math.sqrt(n)
    else:
        out["volatility"] = 0.0
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    if downside > STD_FLOOR:
        out["sortino"] = mean / downside * math.sqrt(n)
    out["sortino_fallback"] = float(np.sum(r < 0) < SORTINO_FALLBACK_MIN_NEGATIVE)
    mdd = float(drawdown_curve(equity).max())
    out["max_drawdown"] = mdd
    out["max_drawdown_duration"] = float(max_drawdown_duration(equity))
    if mdd > 0:
        out["calmar"] = out["cagr"] / mdd
    out["var_5"], out["cvar_5"] = var_cvar(r)
    out.update(trading_metrics(r, p, traded))
    return out


def trading_metrics(r: np.ndarray, p: np.ndarray, traded: np.ndarray | None = None) -> dict[str, float]:
    """Turnover, exposure, trades and round-trip statistics of ``risk_metrics`` (same arguments)."""
    out = {}
    delta = np.abs(np.diff(np.concatenate([[0.0], p])))
    if traded is not None:
        traded = np.asarray(traded, dtype=np.float64).ravel()
        if traded.shape != r.shape or not np.all(np.isfinite(traded)):
            raise InputError(f"risk_metrics: traded has {traded.size} bars (or non-finite values) for "
                             f"{r.size} returns: pass one finite traded fraction per return bar")
    turnover = delta if traded is None else np.abs(traded)
    out["turnover_total"] = float(turnover.sum())
    out["turnover"] = float(turnover.mean())
    out["exposure"] = float(np.mean(p != 0))
    out["n_trades"] = float(np.count_nonzero(delta))
    trips = round_trip_returns(r, p)
    out["n_round_trips"] = float(trips.size)
    if trips.size:
        out["win_rate"] = float(np.mean(trips > 0))
        out["avg_trade_return"] = float(trips.mean())
        losses = float(-trips[trips < 0].sum())
        if losses > 0:
            out["profit_factor"] = float(trips[trips > 0].sum()) / losses
    return out


def buy_and_hold_returns(close: np.ndarray) -> np.ndarray:
    """Simple close-to-close returns close[t+1] / close[t] - 1, length T - 1 for T closes.

    The buy-and-hold baseline: position 1 over every bar, no costs.

    Raises:
        InputError: a close is not a finite positive price.
    """
    c = np.asarray(close, dtype=np.float64).ravel()
    bad = ~(np.isfinite(c) & (c > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            f"close price at row {i} is {c[i]!r}: buy-and-hold needs finite positive closes; "
            "clean the data with python -m tbjax.prepare")
    return c[1:] / c[:-1] - 1.0


def pooled_series(
    per_symbol: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-weight portfolio of several symbols over the union of their timestamps.

    At each time in the union, the pooled return is the mean of the returns of the symbols that
    have a bar there (a symbol without a bar contributes 0 and is left out of the average), and the
    pooled position is the mean of those symbols' positions. This is a portfolio rebalanced to
    equal weights among the symbols trading at that time, so a symbol's calendar gaps neither
    dilute nor inflate the others. Offsetting positions net out, so pooled turnover and trades
    describe the portfolio, not the sum of the per-symbol books.

    Returns:
        (time_ms [U] int64 sorted, returns [U], positions [U]).

    Raises:
        InputError: a symbol's arrays differ in length or repeat a timestamp.
    """
    if not per_symbol:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    times, rets, poss = [], [], []
    for sym, (t, r, p) in per_symbol.items():
        t = np.asarray(t, dtype=np.int64).ravel()
        r = np.asarray(r, dtype=np.float64).ravel()
        p = np.asarray(p, dtype=np.float64).ravel()
        if not (t.size == r.size == p.size):
            raise InputError(
                f"symbol {sym}: {t.size} timestamps, {r.size} returns and {p.size} positions: "
                "pass one of each per bar")
        if np.unique(t).size != t.size:
            raise InputError(f"symbol {sym}: repeated timestamps: drop duplicate bars")
        times.append(t)
        rets.append(r)
        poss.append(p)
    union = np.unique(np.concatenate(times))
    return union, union_mean(union, times, rets), union_mean(union, times, poss)


def pooled_returns(series: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    """Pooled per-bar returns of a backtest's report series (symbol -> time_ms, returns, position)."""
    return pooled_series({sym: (s["time_ms"], s["returns"], s["position"]) for sym, s in series.items()})[1]


def union_mean(union: np.ndarray, times: list[np.ndarray], values: list[np.ndarray]) -> np.ndarray:
    """At each time of ``union``, the mean of ``values`` over the series that have a bar there."""
    total = np.zeros(union.size)
    count = np.zeros(union.size)
    for t, v in zip(times, values):
        idx = np.searchsorted(union, np.asarray(t, dtype=np.int64).ravel())
        total[idx] += np.asarray(v, dtype=np.float64).ravel()
        count[idx] += 1
    return total / np.maximum(count, 1)


def pooled_metrics(
    per_symbol: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], bars_per_year: float,
    traded: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """``risk_metrics`` of the equal-weight pooled portfolio (``pooled_series``) plus n_symbols.

    Args:
        per_symbol: symbol -> (time_ms [T_s], returns [T_s], positions [T_s]).
        bars_per_year: N for annualisation.
        traded: optional symbol -> fraction of that symbol's book traded per bar [T_s] (what the
            env charged). The pooled portfolio holds each symbol in its own equal-weight book, so
            its traded fraction at a time is the mean of the books' traded fractions there.
    """
    union, r, p = pooled_series(per_symbol)
    pooled_traded = None
    if traded is not None:
        pooled_traded = union_mean(union, [per_symbol[s][0] for s in per_symbol], [traded[s] for s in per_symbol])
    out = risk_metrics(r, p, bars_per_year, traded=pooled_traded)
    out["n_symbols"] = float(len(per_symbol))
    return out


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts: NaN / inf -> None.

    Walks dicts, lists and tuples; converts NumPy scalars and arrays to Python numbers and lists.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
