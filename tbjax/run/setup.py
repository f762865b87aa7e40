"""From a Config to everything a run needs: data, roles, fitted features, MarketData (the trainer's
inputs, EnvParams → HParams → TrainerSpec → Trainer, are :mod:`tbjax.run.assembly`'s).

Shared by ``tbjax.train``, ``tbjax.hpo``, ``tbjax.evaluate`` and the benchmarks so that they all
read the data, split it and fit the FeaturePipeline in exactly one way:

processed/<SYMBOL>.feather → roles by time (embargo after each boundary) → FeaturePipeline fit on
train rows only → ``<name>_z`` columns → MarketData (all roles, one device copy) plus the synthetic
CHOPPY_FLAT / STRONG_TREND markets of the regime objective, transformed with the same pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.feather as feather

from tbjax.config import Config
from tbjax.data import features as feats
from tbjax.data.bars import BAR_COLUMNS, market_from_tables
from tbjax.data.market import MarketData
from tbjax.data.hashing import file_sha256
from tbjax.data.pipeline import FeaturePipeline
from tbjax.data.splits import (ROLE_NAMES, ROLE_TEST, ROLE_TRAIN, ROLE_VAL, SplitBounds, assign_roles, role_ranges,
                               split_bounds)
from tbjax.data.synthetic import generate_klines
from tbjax.env import market as market_env
from tbjax.errors import InputError
from tbjax.evaluation.metrics import infer_bars_per_year
# re-exported: the assembly's pieces were defined here, and callers still import them from here
from tbjax.run.assembly import (_TRAINERS, HPARAM_FIELDS, env_params_from_config,  # noqa: F401 (re-export)
                                hparams_from_config, spec_from_config, trainer_for)

REGIME_MARKETS = {"choppy": "CHOPPY_FLAT", "trend": "STRONG_TREND"}


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


def prepare_hint(cfg: Config) -> str:
    return (f"run `python -m tbjax.prepare --raw-dir <folder of raw kline files> --out {cfg.data.processed_dir}` "
            "first (the shipped sample: --raw-dir data/sample/raw)")


def load_processed(cfg: Config) -> tuple[dict[str, dict[str, np.ndarray]], list[str], dict[str, str]]:
    """Read the processed tables and the manifest's feature list; one clear error for each problem.

    With a ``manifest.json`` (what prepare writes, last and atomically) the symbols are exactly
    the ones it lists: a listed file that is missing stops the run, and ``*.feather`` files it
    does not list (a symbol dropped from the raw folder, a stray copy) are ignored, so a run
    never trains on a mix of two prepare runs. A corrupt manifest is an error, not "no
    manifest". Without one (a hand-made folder) every ``<SYMBOL>.feather`` is read.
    """
    from tbjax.data import tables as processed

    folder = Path(cfg.data.processed_dir)
    if not folder.is_dir():
        raise InputError(f"processed data folder '{folder}' does not exist: {prepare_hint(cfg)}")
    fix = f"{prepare_hint(cfg)}, or point data.processed_dir at another prepared folder"
    manifest = processed.read_manifest(folder, fix)
    if manifest is not None:
        listed = processed.manifest_files(manifest, folder, fix)
        files = {sym: listed[sym] for sym in sorted(listed, key=lambda s: listed[s].name)}
    else:
        files = {f.stem.upper(): f for f in sorted(folder.glob("*.feather")) if not f.name.startswith(".")}
    if cfg.data.symbols:
        wanted = {s.upper() for s in cfg.data.symbols}
        missing = wanted - set(files)
        if missing:
            raise InputError(f"data.symbols names {sorted(missing)} but '{folder}' has no such <SYMBOL>.feather: "
                             f"available {sorted(files)}; fix data.symbols or re-run prepare")
        files = {sym: f for sym, f in files.items() if sym in wanted}
    if not files:
        raise InputError(f"no <SYMBOL>.feather files in '{folder}': {prepare_hint(cfg)}")
    manifest = manifest or {}
    tables, hashes = {}, {}
    for sym, f in files.items():
        try:
            table = feather.read_table(f)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise InputError(f"cannot read processed file '{f}' ({type(exc).__name__}): re-run prepare") from None
        cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        for c in BAR_COLUMNS + ("tradable",):
            if c not in cols:
                raise InputError(f"processed file '{f}' lacks column '{c}': re-run `python -m tbjax.prepare`")
        tables[sym] = cols
        hashes[sym] = file_sha256(f)
    available = manifest.get("feature_names") or [c for c in next(iter(tables.values())) if c not in BAR_COLUMNS]
    columns = list(cfg.features.columns or available)
    for sym, cols in tables.items():
        for c in columns:
            if c not in cols:
                raise InputError(f"feature '{c}' (features.columns) is missing from {sym}'s processed file: "
                                 f"available {available}")
    return tables, columns, hashes


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
    return exp


def eval_key(cfg: Config, role: int):
    """PRNG key of a stochastic evaluation (``eval.deterministic: false``) of ``role``.

    Derived from ``train.seed`` and the role only, so training, HPO, ``tbjax.evaluate`` and the
    report draw the same actions for the same checkpoint: a stochastic evaluation is seeded and
    reproducible.
    """
    import jax

    return jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), 1000 + int(role))


def backtest_as_configured(cfg: Config, market: MarketData, bars_per_year: float, policy_apply, params, obs_stats,
                           env_params, role: int, time_ms=None, stream: int | None = None, significance: bool = True,
                           n_steps: int | None = None):
    """Backtest ``role`` of ``market`` with FROZEN statistics and the config's determinism and key.

    ``stream`` picks the stochastic-evaluation key (default: the role); every evaluation of a run
    (its splits, the regime markets, walk-forward folds) goes through here. ``n_steps``: the walk's
    scan length (:func:`tbjax.evaluation.backtest.backtest`).
    """
    from tbjax.evaluation.backtest import backtest

    det = cfg.eval.deterministic
    key = None if det else eval_key(cfg, role if stream is None else stream)
    return backtest(policy_apply, params, obs_stats, market, env_params, role, bars_per_year, time_ms=time_ms,
                    deterministic=det, key=key, significance=significance, n_steps=n_steps)


def bar_times(tables: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Bar open times (ms) per symbol: what evaluation pools symbols by."""
    return {s: np.asarray(t["open_time"], np.int64) for s, t in tables.items()}


def evaluate_split(exp: Experiment, policy_apply, params, obs_stats, env_params, role: int = ROLE_VAL):
    """Backtest one split of the run's data with FROZEN statistics: (eval dict, report series).

    The one definition every caller uses (training's validation, HPO trials, ``tbjax.evaluate``):
    bars are pooled across symbols by their open TIME, with the config's determinism and key.
    """
    return backtest_as_configured(exp.cfg, exp.market, exp.bars_per_year, policy_apply, params, obs_stats,
                                  env_params, role, time_ms=bar_times(exp.tables))


def regime_sortinos(cfg: Config, regimes: MarketData | None, bars_per_year: float, policy_apply, params, obs_stats,
                    env_params) -> dict[str, float]:
    """Sortino of the policy on the synthetic CHOPPY_FLAT and STRONG_TREND markets ({} without them).

    Only the Sortinos are read, so the backtest skips its significance statistics.
    """
    if regimes is None:
        return {}
    res, _ = backtest_as_configured(cfg, regimes, bars_per_year, policy_apply, params, obs_stats, env_params,
                                    ROLE_VAL, stream=-1, significance=False)
    return {key: res["per_symbol"][name]["sortino"] for key, name in REGIME_MARKETS.items()}


def objective_of(cfg: Config, split_sortino: float, regime_sortino: dict[str, float]) -> float:
    """The regime objective from a split's pooled Sortino and the regime markets' Sortinos."""
    from tbjax.evaluation.objective import regime_objective

    e = cfg.eval
    return regime_objective(split_sortino, regime_sortino.get("choppy", 0.0), regime_sortino.get("trend", 0.0),
                            e.w_val, e.w_choppy, e.w_trend)


def evaluate_with_objective(exp: Experiment, policy_apply, params, obs_stats, env_params, role: int = ROLE_VAL):
    """Backtest ``role`` of the run's data with frozen statistics, plus the regime objective.

    Returns (objective, eval dict with "objective" and "regime_sortino", report series). Built
    from :func:`evaluate_split`, :func:`regime_sortinos` and :func:`objective_of`, the pieces HPO
    calls separately (it backtests val at every report and the regime markets less often).
    """
    result, series = evaluate_split(exp, policy_apply, params, obs_stats, env_params, role)
    regime_sortino = regime_sortinos(exp.cfg, exp.regimes, exp.bars_per_year, policy_apply, params, obs_stats,
                                     env_params)
    value = objective_of(exp.cfg, result["pooled"]["sortino"], regime_sortino)
    result["objective"] = value
    result["regime_sortino"] = regime_sortino
    e = exp.cfg.eval
    result["objective_weights"] = {"w_val": e.w_val, "w_choppy": e.w_choppy, "w_trend": e.w_trend}
    return value, result, series
