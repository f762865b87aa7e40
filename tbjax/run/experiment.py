"""From a Config to the run's data: processed tables, roles, fitted features, MarketData (the
trainer's inputs, EnvParams → HParams → TrainerSpec → Trainer, are :mod:`tbjax.run.assembly`'s).

Shared by ``tbjax.train``, ``tbjax.hpo``, ``tbjax.evaluate``, walk-forward and the benchmarks so
that they all read the data, split it and fit the FeaturePipeline in exactly one way:

processed/<SYMBOL>.feather (:func:`tbjax.data.processed.load_processed`) → roles by time (embargo
after each boundary, :func:`split_roles`) → FeaturePipeline fit on train rows only → MarketData
(all roles, one device copy) plus the synthetic CHOPPY_FLAT / STRONG_TREND markets of the regime
objective, transformed with the same pipeline. Scoring a policy on it is
:mod:`tbjax.evaluation.scoring`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tbjax.config import Config
from tbjax.data import features as feats
from tbjax.data.bars import market_from_tables
from tbjax.data.market import MarketData
from tbjax.data.pipeline import FeaturePipeline
from tbjax.data.processed import load_processed
from tbjax.data.splits import (ROLE_NAMES, ROLE_TEST, ROLE_TRAIN, ROLE_VAL, SplitBounds, assign_roles, role_ranges,
                               split_bounds)
from tbjax.data.synthetic import generate_klines
from tbjax.env import market as market_env
from tbjax.errors import InputError
from tbjax.evaluation.metrics import infer_bars_per_year
from tbjax.evaluation.scoring import REGIME_MARKETS
from tbjax.learner.mirror import check_mirror_features
from tbjax.run.assembly import env_params_from_config


@dataclass
class Experiment:
    """Everything derived from the config and the processed data; built once per process."""

    cfg: Config
    symbols: list[str]
    tables: dict[str, dict[str, np.ndarray]]
    roles: dict[str, np.ndarray]
    bounds: SplitBounds
    pipeline: FeaturePipeline
    market: MarketData
    regimes: MarketData | None  # symbols CHOPPY_FLAT, STRONG_TREND (see REGIME_MARKETS)
    bars_per_year: float
    timeframe_ms: int
    raw_features: list[str]
    data_hashes: dict[str, str] = field(default_factory=dict)


def regime_market(cfg: Config, pipeline: FeaturePipeline, timeframe_ms: int, columns: list[str]) -> MarketData:
    """The objective's synthetic CHOPPY_FLAT and STRONG_TREND markets as two symbols of one MarketData.

    Fixed seeds (``eval.regime_seed``), the run's timeframe, the same causal features and warm-up,
    transformed with the run's train-fitted pipeline; every row is in the val and test roles.
    """
    warm = feats.warmup_bars(cfg.env.window_size)
    tables, ranges = {}, {}
    for i, regime in enumerate(REGIME_MARKETS.values()):
        bars = generate_klines(cfg.eval.regime_bars + warm, timeframe_ms, seed=cfg.eval.regime_seed + i, regime=regime)
        table = {**{k: np.asarray(v) for k, v in bars.items()}, **feats.compute_features(bars)}
        table = {k: v[warm:] for k, v in table.items()}
        table["tradable"] = table["volume"] > 0
        n = len(table["close"])
        tables[regime], ranges[regime] = table, [(0, 0), (0, n), (0, n)]
    return market_from_tables(pipeline, tables, ranges, columns)


def embargo_of(cfg: Config) -> tuple[int, str]:
    """Embargo rows between splits and the advice to give when they swallow a split."""
    if cfg.data.embargo_bars is not None:
        return cfg.data.embargo_bars, "lower data.embargo_bars"
    warm = feats.warmup_bars(cfg.env.window_size)
    return warm, (f"lower env.window_size (the embargo defaults to its warm-up, {warm} bars for "
                  f"env.window_size = {cfg.env.window_size}) or set data.embargo_bars")


def split_roles(cfg: Config, tables: dict[str, dict[str, np.ndarray]]) -> tuple[SplitBounds, dict[str, np.ndarray]]:
    """The split bounds and every symbol's row roles: the one split used by train, HPO and check.

    Beyond non-empty splits (``assign_roles``), every evaluated split must hold at least one
    decision somewhere: ``env.window_size`` rows of history plus the bar the decision fills on.
    """
    d = cfg.data
    bounds = split_bounds(d.train_start, d.train_end, d.val_start, d.val_end, d.test_start, d.test_end)
    embargo, fix = embargo_of(cfg)
    roles = {s: assign_roles(np.asarray(t["open_time"], np.int64), bounds, embargo, s, fix) for s, t in tables.items()}
    window = cfg.env.window_size
    for role in (ROLE_VAL, ROLE_TEST):
        rows = {s: int(np.sum(r == role)) for s, r in roles.items()}
        if max(rows.values()) < window + 1:
            name = ROLE_NAMES[role]
            raise InputError(
                f"env.window_size = {window} is longer than every symbol's {name} split (at most "
                f"{max(rows.values())} rows; a decision needs window_size + 1): lower env.window_size or "
                f"widen data.{name}_start .. data.{name}_end")
    return bounds, roles


def build_experiment(cfg: Config, with_regimes: bool = True, pipeline: FeaturePipeline | None = None) -> Experiment:
    """Load, split, fit (or reuse a saved ``pipeline``) and build MarketData plus the regime markets."""
    tables, columns, hashes = load_processed(cfg)
    d = cfg.data
    bounds, roles = split_roles(cfg, tables)
    syms = list(tables)
    if pipeline is None:
        pipeline = FeaturePipeline(columns, std_floor=cfg.features.std_floor, clip=cfg.features.clip)
        pipeline.fit([tables[s] for s in syms], [roles[s] == ROLE_TRAIN for s in syms])
    ranges = {s: role_ranges(roles[s]) for s in syms}
    market = market_from_tables(pipeline, tables, ranges, columns)
    times = np.asarray(tables[syms[0]]["open_time"], np.int64)
    timeframe_ms = int(np.median(np.diff(times))) if len(times) > 1 else 3_600_000
    bpy = d.bars_per_year or infer_bars_per_year(times)
    regimes = regime_market(cfg, pipeline, timeframe_ms, columns) if with_regimes else None
    exp = Experiment(cfg, syms, tables, roles, bounds, pipeline, market, regimes, float(bpy), timeframe_ms,
                     columns, hashes)
    market_env.check_data(env_params_from_config(cfg, ROLE_TRAIN), market)
    check_mirror_features(cfg.ppo.mirror, market.feature_names)
    return exp
