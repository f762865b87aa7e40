"""The planted-signal market both learners train on, and its oracle.

Every peer comparison (``vs_sb3``, ``learning_speed``, ``scaling``) must feed both learners the same
data, so the market is built here once, the way ``tbjax.run.experiment`` builds a real run:

    generate_klines(signal_rho) per symbol → compute_features (causal) → drop the warm-up rows
    → roles by row index (train | embargo | val | embargo | test) → FeaturePipeline fit on TRAIN
    rows only → MarketData (raw features + the pipeline's scaling, applied by the env).

The planted signal z_t is visible at bar t through ``taker_buy_ratio`` (tbjax.data.synthetic); the
next bar's return is r_{t+1} = sigma (rho z_t + sqrt(1 - rho^2) eps_{t+1}) in the NORMAL regime.

Per-bar Sharpe here is mean(r) / std(r) (population std) over the per-bar net returns of every
symbol's split walk CONCATENATED, the same rule :func:`tbjax.evaluation.oracle.threshold_oracle` applies to
its one series; the oracle is fed the concatenated symbols too, so all three figures (oracle,
tbjax, SB3) are computed identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.learners import DEFAULT_ENV, LONG_SHORT
from tbjax.data import features as feats
from tbjax.data.bars import market_from_tables
from tbjax.data.market import ROLE_TEST, ROLE_TRAIN, ROLE_VAL, MarketData
from tbjax.data.pipeline import FeaturePipeline
from tbjax.data.splits import ROLE_EMBARGO, role_ranges
from tbjax.data.synthetic import generate_klines
from tbjax.evaluation.oracle import threshold_oracle
from tbjax.run.assembly import make_env_params

HOUR_MS = 3_600_000
HOURLY_BARS_PER_YEAR = 8760.0  # 24/7 hourly bars (docs/ALGORITHMS.md "Risk metrics")
SIGNAL_COLUMN = "taker_buy_ratio_z"


@dataclass
class PlantedMarket:
    """A synthetic market ready for both learners (arrays are host NumPy unless noted)."""

    market: MarketData            # device pytree for the JAX env (and, via np.asarray, the twin)
    symbols: list[str]
    close: list[np.ndarray]       # per symbol, after the warm-up rows were dropped
    signal: list[np.ndarray]      # per symbol, the z-scored taker_buy_ratio (what the agent sees)
    ranges: list[list[tuple[int, int]]]  # per symbol: (start, end) of train, val, test
    window_size: int
    signal_rho: float
    bars_per_year: float = HOURLY_BARS_PER_YEAR


def planted_market(n_symbols: int = 4, n_bars: int = 20_000, signal_rho: float = 0.2, seed: int = 0,
                   window_size: int = 32, val_frac: float = 0.15, test_frac: float = 0.15,
                   regime: str | None = "NORMAL") -> PlantedMarket:
    """Synthetic hourly symbols with a planted signal, split by row index with embargoes.

    The embargo between consecutive splits is ``warmup_bars(window_size)`` rows, as in a real run.
    ``regime="NORMAL"`` keeps the signal-to-noise ratio constant over time (None: Markov regimes).
    """
    warm = feats.warmup_bars(window_size)
    tables, roles = [], []
    for k in range(n_symbols):
        bars = generate_klines(n_bars + warm, HOUR_MS, seed=seed, signal_rho=signal_rho, regime=regime,
                               stream=k)
        raw = feats.compute_features(bars)
        table = {**{c: np.asarray(bars[c])[warm:] for c in ("open_time", "open", "high", "low", "close",
                                                               "volume")},
                 **{c: v[warm:] for c, v in raw.items()}}
        n = len(table["close"])
        n_val, n_test = int(n * val_frac), int(n * test_frac)
        n_train = n - n_val - n_test - 2 * warm
        if n_train < window_size + 2:
            raise ValueError(f"n_bars={n_bars} is too short for window {window_size} and two embargoes")
        role = np.full(n, ROLE_TRAIN, np.int8)
        role[n_train:n_train + warm] = ROLE_EMBARGO
        role[n_train + warm:n_train + warm + n_val] = ROLE_VAL
        role[n_train + warm + n_val:n - n_test] = ROLE_EMBARGO
        role[n - n_test:] = ROLE_TEST
        tables.append(table)
        roles.append(role)
    columns = feats.feature_names(has_taker=True)
    pipeline = FeaturePipeline(columns).fit(tables, [r == ROLE_TRAIN for r in roles])
    z = [pipeline.transform(t) for t in tables]
    ranges = [role_ranges(r) for r in roles]
    symbols = [f"SYN{k}" for k in range(n_symbols)]
    market = market_from_tables(pipeline, {s: {**t, "tradable": t["volume"] > 0} for s, t in zip(symbols, tables)},
                                dict(zip(symbols, ranges)), columns)
    return PlantedMarket(market, symbols, [t["close"] for t in tables], [zi[SIGNAL_COLUMN] for zi in z],
                         ranges, window_size, signal_rho)


def env_params(pm: PlantedMarket, role: int = ROLE_TRAIN, fee_bps: float = 5.0, episode_len: int = 256,
               position_levels: tuple = LONG_SHORT, turnover_penalty: float | None = None):
    """Long-short discrete env whose ONLY cost is ``fee_bps`` per unit of traded notional.

    Spread, slippage, impact and borrow are zero so the env's cost equals the oracle's
    ``cost_bps * |Δposition|`` (docs/ALGORITHMS.md "Planted-signal oracle"). The reward's
    ``turnover_penalty`` (shaping, not a cost: equity and every metric ignore it) is the shipped
    default ``env.turnover_penalty`` unless given, so the benchmarks train the default learner.
    """
    if turnover_penalty is None:
        turnover_penalty = DEFAULT_ENV.turnover_penalty
    return make_env_params(
        window_size=pm.window_size, episode_len=episode_len, action_mode="discrete",
        position_levels=tuple(position_levels), role=role, fee_bps=fee_bps, half_spread_bps=0.0,
        slippage_k=0.0, impact_coef=0.0, borrow_bps_per_bar=0.0, turnover_penalty=turnover_penalty,
        equity_floor=0.0, min_position=-1.0, max_position=1.0)


def decision_bars(pm: PlantedMarket, symbol: int, role: int) -> np.ndarray:
    """Decision bars of a split walk, as in ``tbjax.evaluation.backtest.split_walk``: role_start + window - 1
    up to role_end - 2 (decision t fills at t+1, which must lie inside the split)."""
    start, end = pm.ranges[symbol][role]
    return np.arange(start + pm.window_size - 1, end - 1)


def oracle_inputs(pm: PlantedMarket, role: int) -> tuple[np.ndarray, np.ndarray]:
    """(signal at each decision bar, the next bar's return), every symbol's split concatenated.

    next_return[t] = close[t+1] / close[t] - 1, what a position filled at open[t+1] (= close[t] in
    the synthetic market) earns over bar t+1; it is also buy-and-hold's per-bar return there.
    """
    signal, nxt = [], []
    for s in range(len(pm.symbols)):
        t = decision_bars(pm, s, role)
        close = np.asarray(pm.close[s], np.float64)
        signal.append(pm.signal[s][t])
        nxt.append(close[t + 1] / close[t] - 1.0)
    return np.concatenate(signal), np.concatenate(nxt)


def train_fit_oracle(pm: PlantedMarket, role: int = ROLE_VAL, cost_bps: float = 5.0) -> dict:
    """The threshold rule a learner could at best find: threshold and mode chosen on TRAIN, scored on ``role``.

    ``oracle_sharpe`` picks the best rule on the evaluated split itself, with hindsight; on a
    finite split that choice fits the split's noise, so even the true rule scores below it. This
    is the attainable reference (the rule is still given the signal column: an upper bound).
    """
    fit = threshold_oracle(*oracle_inputs(pm, ROLE_TRAIN), cost_bps)
    scored = threshold_oracle(*oracle_inputs(pm, role), cost_bps)
    row = next(r for r in scored["table"] if r["threshold"] == fit["threshold"] and r["mode"] == fit["mode"])
    return {"sharpe_per_bar": row["sharpe_per_bar"], "threshold": fit["threshold"], "mode": fit["mode"],
            "turnover": row["turnover"]}


def oracle_sharpe(pm: PlantedMarket, role: int = ROLE_VAL, cost_bps: float = 5.0,
                  long_only: bool = False) -> dict:
    """``threshold_oracle`` over the concatenated decision bars of every symbol's split (``oracle_inputs``)."""
    return threshold_oracle(*oracle_inputs(pm, role), cost_bps, long_only=long_only)


def held(curve: list[float]) -> float:
    """The mean of the last third of a learning curve's evaluations (at least the last one): what a
    learner KEEPS, so one that peaks early and then collapses scores low (learning_speed, tune_defaults)."""
    return float(np.mean(curve[len(curve) - max(1, len(curve) // 3):]))


def best_third(curve: list[float]) -> float:
    """The best mean over any run of consecutive evaluations as long as :func:`held`'s last third.

    ``held / best_third`` is 1 exactly when the last third is the curve's best stretch: the measure of
    DECAY. ``held / peak`` also counts the jitter between single evaluations, since the peak is the
    largest of many noisy draws: for a flat curve with jitter sigma it sits about 2 sigma above the mean
    of 40 draws, so a curve that has stopped moving still scores held / peak < 1 (docs/TUNING.md)."""
    k = max(1, len(curve) // 3)
    return float(np.max(np.convolve(np.asarray(curve, float), np.ones(k) / k, mode="valid")))


def val_score(trainer, carry, pm: PlantedMarket, val_params, policy_apply=None) -> tuple[float, float, np.ndarray]:
    """(per-bar Sharpe, turnover per bar, concatenated per-bar returns) of the deterministic policy on
    the val split (``tbjax.evaluation.backtest``, frozen observation statistics); ``policy_apply``:
    a population's ensemble over the stacked ``carry`` (default: the trainer's own)."""
    from tbjax.evaluation.backtest import backtest

    result, series = backtest(policy_apply or trainer.policy_apply, carry.params, carry.obs_stats, pm.market, val_params,
                              ROLE_VAL, pm.bars_per_year, significance=False)
    returns = np.concatenate([series[s]["returns"] for s in pm.symbols])
    return per_bar_sharpe([returns]), float(result["pooled"]["turnover"]), returns


def per_bar_sharpe(returns: list[np.ndarray]) -> float:
    """mean / std (population) of the concatenated per-bar net returns; 0 for a constant series."""
    r = np.concatenate([np.asarray(x, np.float64) for x in returns])
    std = float(np.std(r))
    return float(np.mean(r)) / std if std > 1e-12 else 0.0
