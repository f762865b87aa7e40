"""Validation and test: walk each symbol's split from start to end with FROZEN statistics.

Unlike training (random episodes), evaluation starts every symbol at the first decision bar of the
split (``role_start + window_size - 1``) and steps bar by bar to the last bar that still has a next
bar to fill on, with the same cost model as training. The policy is deterministic by default
(argmax / mean). Observation statistics are an input here and never an output: evaluation cannot
change them (docs/DESIGN.md, "Invariants").

The per-bar strategy return is ``equity_t / equity_{t-1} - 1`` (net of every cost), the position is
the target held over the bar (the action's level, or the previous position when the fill bar is not
tradable), and turnover is what the env traded and charged on each bar: re-balancing a constant
target back from where the price drift moved it counts. Baselines over the same bars: buy-and-hold (close-to-close returns of the asset, no
costs) and flat (zero returns). The result's ``"is_it_real"`` entry says whether the pooled strategy's
Sharpe could be luck (``tbjax.evaluation.significance.is_it_real``, against pooled buy-and-hold);
``"vs_baselines"`` holds the paired test of the strategy against each baseline on the same bars
(``significance.paired_edge``), which the deployment decision reads on val.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tbjax.data.market import ROLE_NAMES, MarketData
from tbjax.evaluation.metrics import (
    buy_and_hold_returns,
    pooled_metrics,
    pooled_series,
    risk_metrics,
)
from tbjax.evaluation.significance import is_it_real, paired_edge
from tbjax.learner.walk import WALK_ROLE, held_positions, walk

CORE_BASELINE_KEYS = ("total_return", "cagr", "volatility", "sharpe", "sortino", "calmar", "max_drawdown",
                      "cvar_5", "var_5")


def split_walk(market: MarketData, role: int, window_size: int) -> tuple[np.ndarray, np.ndarray]:
    """First decision bar and number of decisions per symbol for a split (host side)."""
    start = np.asarray(market.role_start)[:, role] + window_size - 1
    end = np.asarray(market.role_end)[:, role]
    n = np.maximum(end - 1 - start, 0)  # decision t needs bar t+1 inside the split
    return start.astype(np.int32), n.astype(np.int32)


def backtest(policy_apply, params, obs_stats, market: MarketData, env_params, role: int,
             bars_per_year: float, time_ms: dict[str, np.ndarray] | None = None,
             deterministic: bool = True, key=None, significance: bool = True,
             n_steps: int | None = None, position0: np.ndarray | None = None) -> tuple[dict, dict]:
    """Evaluate a policy on one split of every symbol; returns (eval dict, series for the report).

    ``time_ms[symbol]`` gives the bar open times (for the report's dates and pooling); without it
    bar indices are used. ``deterministic=False`` samples actions from the policy with ``key``
    (required then), so a stochastic evaluation is reproducible. ``significance=False`` skips the
    ``is_it_real`` bootstrap for callers that read only the metrics (the regime markets).
    ``n_steps``: the walk's scan length (static: one compiled walk per value); default the longest
    split of ``market``, so its val and test share one program. Walk-forward folds pass one length
    for all folds, since their train splits (never walked) differ in length.
    ``position0[s]``: the position symbol s holds before the split's first decision (default flat);
    a walk that continues an earlier one (walk-forward's stitch) passes that walk's last positions,
    so rolling from one policy to the next trades only the difference. Each series carries its
    ``last_position``.
    """
    if not deterministic and key is None:
        raise ValueError("backtest: deterministic=False needs a PRNG key (key=...)")
    if key is None:
        key = jax.random.PRNGKey(0)
    start, n_valid = split_walk(market, role, env_params.window_size)
    if int(n_valid.max()) == 0:
        raise ValueError(f"split '{ROLE_NAMES[role]}' has no decision bars")
    # one scan length for every split of this market, so val and test share one compiled walk
    longest = max(int(split_walk(market, r, env_params.window_size)[1].max()) for r in range(len(ROLE_NAMES)))
    n_steps = longest if n_steps is None else int(n_steps)
    if n_steps < int(n_valid.max()):
        raise ValueError(f"backtest: n_steps = {n_steps} is shorter than split '{ROLE_NAMES[role]}' "
                         f"({int(n_valid.max())} decisions)")
    # episode_len stays as in training (it scales the bars-in-position feature); the walk ignores
    # the time-limit flag and only stops at the end of the split
    held0 = np.zeros(market.n_symbols, np.float32) if position0 is None else np.asarray(position0, np.float32)
    params_eval = env_params.replace(role=WALK_ROLE, equity_floor=jnp.float32(0.0))
    outs = walk(policy_apply, params, obs_stats, params_eval, market, jnp.asarray(start), jnp.asarray(n_valid),
                jnp.asarray(held0), key, n_steps, deterministic)
    outs = jax.tree_util.tree_map(np.asarray, outs)
    close = np.asarray(market.close)
    per_symbol, series, pooled_in, bh_in, traded = {}, {}, {}, {}, {}
    for s, sym in enumerate(market.symbols):
        n = int(n_valid[s])
        equity = np.concatenate([[1.0], outs["equity"][s, :n].astype(np.float64)])
        returns = equity[1:] / equity[:-1] - 1.0
        positions = held_positions(outs["target"][s, :n], outs["tradable"][s, :n], initial=float(held0[s]))
        traded[sym] = outs["turnover"][s, :n].astype(np.float64)
        bars = np.arange(start[s] + 1, start[s] + 1 + n)  # the bar each return is marked on
        bh = buy_and_hold_returns(close[s, start[s]: start[s] + n + 1].astype(np.float64))
        times = time_ms[sym][bars] if time_ms is not None else bars.astype(np.int64)
        per_symbol[sym] = risk_metrics(returns, positions, bars_per_year, traded=traded[sym])
        series[sym] = {"time_ms": times, "equity": equity[1:], "buy_and_hold_equity": np.cumprod(1 + bh),
                       "position": positions, "returns": returns, "turnover": traded[sym],
                       "last_position": float(outs["last_position"][s])}
        pooled_in[sym] = (times, returns, positions)
        bh_in[sym] = (times, bh, np.ones_like(bh))
    flat_in = {k: (t, np.zeros_like(r), np.zeros_like(r)) for k, (t, r, _) in pooled_in.items()}
    bh_per_symbol = {sym: risk_metrics(r, p, bars_per_year) for sym, (_, r, p) in bh_in.items()}
    result = {
        "split": ROLE_NAMES[role],
        "bars_per_year": bars_per_year,
        "deterministic": deterministic,
        "pooled": pooled_metrics(pooled_in, bars_per_year, traded=traded),
        "per_symbol": per_symbol,
        "baselines": {
            "buy_and_hold": {**pooled_metrics(bh_in, bars_per_year), "per_symbol": bh_per_symbol},
            "flat": pooled_metrics(flat_in, bars_per_year),
        },
    }
    if significance:  # PSR, MinTRL and bootstrap intervals of the pooled strategy vs pooled buy-and-hold
        strat, bh = pooled_series(pooled_in)[1], pooled_series(bh_in)[1]
        result["is_it_real"] = is_it_real(strat, bars_per_year, bh)
        # the paired tests the deployment decision reads (tbjax.evaluation.deployment)
        result["vs_baselines"] = {"flat": paired_edge(strat, np.zeros_like(strat)), "buy_and_hold": paired_edge(strat, bh)}
    return result, series
