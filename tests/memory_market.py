"""A market whose signal precedes the return it predicts by more than the observation window.

Cycles of ``period`` bars: on the cycle's first bar a cue feature shows the sign s = +-1; ``delay``
bars later a "go" feature marks the decision bar, and the NEXT bar (the fill bar of that decision)
returns s * edge plus noise. Every other bar is small zero-mean noise. With ``window_size`` <
``delay`` the cue has left the window when the go bar arrives: a feed-forward policy sees when to
trade but not which way; a recurrent one can remember s. No costs, levels [-1, 0, 1].

The fill bars of the decisions that still see the cue (cue bar + 1 .. cue bar + window_size) are
not tradable, so a policy cannot store s in its own position while the cue is visible (the
account features would otherwise be a memory the MLP could use).
"""

from __future__ import annotations

import numpy as np

from tbjax.data.market import market_data_from_arrays
from tbjax.evaluation.metrics import risk_metrics
from tbjax.run.assembly import make_env_params

PERIOD, DELAY, WINDOW = 12, 7, 4
EDGE, PAYOFF_NOISE, NOISE = 0.01, 0.005, 0.002


def memory_market(n_bars: int = 6000, seed: int = 0, train_frac: float = 0.7):
    """(MarketData, oracle per-bar returns on val): roles train | val | (empty) test."""
    rng = np.random.default_rng(seed)
    n_cycles = n_bars // PERIOD
    signs = rng.choice([-1.0, 1.0], n_cycles)
    cue, go = np.zeros(n_bars, np.float32), np.zeros(n_bars, np.float32)
    returns = NOISE * rng.standard_normal(n_bars)
    oracle = np.zeros(n_bars)
    tradable = np.ones(n_bars, bool)
    for k, s in enumerate(signs):
        c = k * PERIOD
        cue[c] = s
        tradable[c + 1: c + WINDOW + 1] = False
        if c + DELAY + 1 < n_bars:
            go[c + DELAY] = 1.0
            returns[c + DELAY + 1] = s * EDGE + PAYOFF_NOISE * rng.standard_normal()
            oracle[c + DELAY + 1] = returns[c + DELAY + 1] * s
    close = 100.0 * np.cumprod(1.0 + returns)
    open_ = np.concatenate([[100.0], close[:-1]])
    a = int(n_bars * train_frac)
    data = market_data_from_arrays(
        symbols=["MEM"], features=[np.stack([cue, go], axis=1)], open_=[open_], close=[close],
        volatility=[np.full(n_bars, NOISE, np.float32)], volume=[np.full(n_bars, 1e9, np.float32)],
        tradable=[tradable], hour_of_week=[np.zeros(n_bars, np.int32)],
        role_ranges=[[(0, a), (a, n_bars), (n_bars, n_bars)]], feature_names=["cue_z", "go_z"])
    return data, oracle


def memory_env_params(episode_len: int = 48):
    return make_env_params(
        window_size=WINDOW, episode_len=episode_len, position_levels=(-1.0, 0.0, 1.0), fee_bps=0.0,
        half_spread_bps=0.0, slippage_k=0.0, impact_coef=0.0, borrow_bps_per_bar=0.0)


def oracle_val_sharpe(data, oracle: np.ndarray, bars_per_year: float) -> float:
    """Sharpe of the oracle (position s on each payoff bar, flat elsewhere) over the bars the
    backtest marks on val (decision bars window_size-1 .. end-2 of the split)."""
    start = int(np.asarray(data.role_start)[0, 1]) + WINDOW - 1
    end = int(np.asarray(data.role_end)[0, 1])
    r = oracle[start + 1: end]
    return risk_metrics(r, np.sign(r), bars_per_year)["sharpe"]
