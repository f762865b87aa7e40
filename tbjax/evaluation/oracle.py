"""The planted-signal oracle: the best threshold policy on a signal, with costs (docs/ALGORITHMS.md).

If r_{t+1} = sigma (rho z_t + sqrt(1 - rho^2) eps_{t+1}) with z_t observable at bar t, holding
sign(z_t) maximises the expected return only without costs. With fees it flips too often, and a
policy that trades only on large |z| does better. The oracle is the best of a small grid:

    target_t = sign(signal_t)      if |signal_t| > c
             = 0                   otherwise, mode "flat"
             = position_{t-1}      otherwise, mode "keep"

(long-only: sign is replaced by 1 for a positive signal and 0 for a negative one). The position
decided at bar t earns next_returns[t] over bar t+1 and pays cost_bps * 1e-4 * |position_t -
position_{t-1}|, starting flat. Policies are ranked by per-bar Sharpe mean(pnl) / std(pnl); a
policy that never holds a position has Sharpe 0. A learned agent on the same split and costs should
be judged against this number.
"""

from __future__ import annotations

import numpy as np

from tbjax.errors import InputError

DEFAULT_THRESHOLDS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def threshold_positions(signal: np.ndarray, threshold: float, mode: str,
                        long_only: bool = False) -> np.ndarray:
    """Positions in {-1, 0, 1} of one threshold policy (vectorised forward fill for "keep")."""
    signal = np.asarray(signal, np.float64)
    active = np.abs(signal) > threshold  # NaN compares False: no signal, no new target
    target = np.sign(np.where(active, signal, 0.0))
    if long_only:
        target = np.maximum(target, 0.0)
    if mode == "flat":
        return target
    if mode != "keep":
        raise InputError(f"oracle mode must be 'flat' or 'keep', got {mode!r}")
    last_active = np.maximum.accumulate(np.where(active, np.arange(len(signal)), -1))
    return np.where(last_active >= 0, target[np.maximum(last_active, 0)], 0.0)


def policy_pnl(positions: np.ndarray, next_returns: np.ndarray, cost_bps: float) -> np.ndarray:
    """Per-bar net return: position_t * next_return_t - cost * |position_t - position_{t-1}|."""
    trades = np.abs(np.diff(positions, prepend=0.0))
    return positions * next_returns - cost_bps * 1e-4 * trades


def threshold_oracle(signal: np.ndarray, next_returns: np.ndarray, cost_bps: float,
                     thresholds=DEFAULT_THRESHOLDS, long_only: bool = False) -> dict:
    """Evaluate every (threshold, mode) policy and return the best by per-bar Sharpe.

    Args:
        signal: standardised signal known at bar t. next_returns: simple return of bar t+1
            (rows where it is not finite, e.g. the last bar, are dropped).
        cost_bps: cost per unit of position traded, in basis points.
    Returns:
        {"sharpe_per_bar", "threshold", "mode", "cost_bps", "long_only", "mean_return",
         "turnover", "table": [one dict per policy]}.
    """
    signal = np.asarray(signal, np.float64)
    next_returns = np.asarray(next_returns, np.float64)
    if signal.shape != next_returns.shape or signal.ndim != 1:
        raise InputError(f"signal {signal.shape} and next_returns {next_returns.shape} must be "
                         "1-D arrays of the same length")
    if not cost_bps >= 0.0:
        raise InputError(f"cost_bps must be >= 0, got {cost_bps}")
    keep = np.isfinite(next_returns)
    signal, next_returns = signal[keep], next_returns[keep]
    if len(signal) < 2:
        raise InputError("the oracle needs at least 2 bars with a finite next return")
    table = []
    for threshold in thresholds:
        for mode in ("flat", "keep"):
            positions = threshold_positions(signal, float(threshold), mode, long_only)
            pnl = policy_pnl(positions, next_returns, cost_bps)
            std = float(np.std(pnl))
            table.append({
                "threshold": float(threshold), "mode": mode,
                "sharpe_per_bar": float(np.mean(pnl)) / std if std > 0.0 else 0.0,
                "mean_return": float(np.mean(pnl)),
                "turnover": float(np.mean(np.abs(np.diff(positions, prepend=0.0)))),
                "exposure": float(np.mean(np.abs(positions))),
            })
    best = max(table, key=lambda row: row["sharpe_per_bar"])
    return {"sharpe_per_bar": best["sharpe_per_bar"], "threshold": best["threshold"],
            "mode": best["mode"], "cost_bps": float(cost_bps), "long_only": bool(long_only),
            "mean_return": best["mean_return"], "turnover": best["turnover"], "table": table}


def klines_oracle(klines: dict[str, np.ndarray], cost_bps: float, long_only: bool = False,
                  thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Oracle on a synthetic market: signal = taker_buy_ratio standardised by its own mean and std
    over these rows, next_returns[t] = close[t+1] / close[t] - 1 (what a fill at open[t+1] earns,
    since open[t+1] = close[t] in :func:`tbjax.data.synthetic.generate_klines`)."""
    ratio = np.asarray(klines["taker_buy_base"], np.float64) / np.asarray(klines["volume"])
    signal = (ratio - ratio.mean()) / ratio.std()
    close = np.asarray(klines["close"], np.float64)
    next_returns = np.r_[close[1:] / close[:-1] - 1.0, np.nan]
    return threshold_oracle(signal, next_returns, cost_bps, thresholds, long_only)
