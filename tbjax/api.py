"""``tbjax.load_policy(run_dir)``: a trained agent as a function from bars to target positions.

Everything comes from the run directory alone (the contract of ``tbjax.train``):
config.yaml (env rules, network shape; a relative ``env.liquidity_seasonality`` is found where the
run was trained, as ``tbjax.evaluate`` finds it), feature_pipeline.json (the train-fitted z-scoring),
dataset/manifest.json (the symbols it was trained on) and an orbax checkpoint (parameters and the
FROZEN observation statistics; docs/DESIGN.md, "Invariants"). No processed data folder is needed: the
checkpoint template is built with ``jax.eval_shape(trainer.init, ...)`` over a zero MarketData of
the right width, which traces the trainer without compiling or running it.

``TradingPolicy.target_positions`` walks one symbol's processed bars with the backtest's own
acting loop (:func:`tbjax.evaluation.backtest.walk`): a fresh account on the first full window
(bar ``window_size - 1``), then per bar ``observe`` → deterministic policy → ``market_step`` with the
run's env params and ``equity_floor`` 0 (as the backtest sets it), so the account features (position,
unrealised PnL, drawdown) follow the policy's own simulated fills and costs. The reported target
is the chosen level where the fill bar is tradable, else the previous target (the env ignores the
action there) — the backtest's ``position`` series. The last bar has no fill bar yet: its entry
is the level chosen on that bar's close, i.e. the position to hold from the next open.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.feather as feather

from tbjax.learner.walk import WALK_ROLE, held_positions, walk
from tbjax.config import Config, load_config
from tbjax.data.pipeline import FeaturePipeline
from tbjax.errors import InputError

CHECKPOINT_KINDS = ("best", "latest")


def _as_columns(bars) -> dict[str, np.ndarray]:
    """dict of arrays / pyarrow Table / pandas DataFrame / path to a processed feather → columns."""
    if isinstance(bars, (str, Path)):
        path = Path(bars)
        if not path.is_file():
            raise InputError(f"bars file '{path}' not found: pass a processed <SYMBOL>.feather "
                             "written by python -m tbjax.prepare")
        try:
            bars = feather.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a non-feather file
            raise InputError(f"cannot read '{path}' as feather ({type(exc).__name__}): pass a processed "
                             "<SYMBOL>.feather written by python -m tbjax.prepare") from None
    if isinstance(bars, pa.Table):
        return {name: bars.column(name).to_numpy(zero_copy_only=False) for name in bars.column_names}
    if hasattr(bars, "columns") and hasattr(bars, "to_numpy"):  # pandas.DataFrame
        return {str(c): bars[c].to_numpy() for c in bars.columns}
    if isinstance(bars, dict):
        return {k: np.asarray(v) for k, v in bars.items()}
    raise InputError(f"bars must be a dict of arrays, a pyarrow Table or a feather path, got {type(bars).__name__}")


def _check_bars(table: dict[str, np.ndarray], feature_columns: list[str]) -> None:
    """Refuse bars the policy would silently mis-trade on: one message naming column, row and fix.

    NaN/inf or non-positive prices, NaN/inf features or volume, and bar times that are not
    strictly increasing (unsorted or duplicated bars) would otherwise flow into the observation
    window and the simulated fills without an error.
    """
    times = np.asarray(table["open_time"])
    try:
        times = times.astype(np.int64)
    except (TypeError, ValueError):
        raise InputError("bars column 'open_time' must hold integer epoch milliseconds, as prepare writes it") from None
    step = np.diff(times)
    if np.any(step <= 0):
        i = int(np.argmax(step <= 0)) + 1
        what = "duplicated" if step[i - 1] == 0 else "out of order"
        raise InputError(f"bars: open_time at row {i} ({times[i]}) is {what} after row {i - 1} ({times[i - 1]}): "
                         "sort the bars by time and drop duplicates (python -m tbjax.prepare does both)")
    for col in ("open", "high", "low", "close"):
        v = np.asarray(table[col], np.float64)
        bad = ~(np.isfinite(v) & (v > 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"bars: price column '{col}' at row {i} is {float(v[i])!r}; prices must be finite and "
                             "positive: clean the bars with python -m tbjax.prepare")
    for col in ["volume"] + list(feature_columns):
        v = np.asarray(table[col], np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"bars: column '{col}' at row {i} is {float(v[i])!r}; it must be finite: pass processed "
                             "bars from python -m tbjax.prepare (it drops the indicators' warm-up rows)")


class TradingPolicy:
    """A restored agent: frozen feature pipeline, frozen observation statistics, deterministic policy."""

    def __init__(self, cfg: Config, pipeline: FeaturePipeline, trainer, params, obs_stats, symbols: list[str],
                 checkpoint: str, meta: dict, policy_apply=None, deployment: dict | None = None):
        """``policy_apply``: the trainer's, or a population's ensemble over stacked members' params.
        ``deployment``: the run's decision (deployment.json); when it deploys the baseline because
        val showed no edge (``abstains``), ``policy_apply`` is the baseline's constant policy."""
        self.config, self.pipeline, self.trainer = cfg, pipeline, trainer
        self.policy_apply = policy_apply or trainer.policy_apply
        self.deployment = deployment
        self.abstains = bool(deployment) and deployment.get("policy") == "baseline"
        self.members = list(meta.get("selected") or [])  # a population's ensemble members ([] for one policy)
        self.params, self.obs_stats = params, obs_stats
        self.symbols = list(symbols)
        self.feature_columns = list(pipeline.columns)
        self.window_size = int(cfg.env.window_size)
        self.position_levels = [float(v) for v in cfg.env.position_levels]
        self.action_mode = cfg.env.action_mode
        self.checkpoint, self.meta = checkpoint, dict(meta)

    def _market(self, columns: dict[str, np.ndarray]):
        """One-symbol MarketData over all rows (one padding row for the last decision's fill bar)."""
        from tbjax.data.bars import BAR_COLUMNS, market_from_tables  # the run's own bars → MarketData path

        needed = list(BAR_COLUMNS) + ["tradable"] + self.feature_columns
        missing = [c for c in needed if c not in columns]
        if missing:
            raise InputError(f"bars lack column(s) {missing}: pass one symbol's processed bars as "
                             f"python -m tbjax.prepare writes them (columns {needed})")
        n = len(columns["close"])
        if any(len(columns[c]) != n for c in needed):
            raise InputError(f"bars columns have different lengths: {({c: len(columns[c]) for c in needed})}")
        if n < self.window_size:
            raise InputError(f"bars hold {n} rows but the policy needs at least window_size = "
                             f"{self.window_size} to decide once: pass a longer history")
        table = {c: np.asarray(columns[c]) for c in needed}
        _check_bars(table, self.feature_columns)
        table = {c: np.concatenate([v, v[-1:]]) for c, v in table.items()}  # padding row: never a fill
        table["tradable"][-1] = False
        table["volume"][-1] = 0
        return market_from_tables(self.pipeline, {"BARS": table}, {"BARS": [(0, 0), (0, 0), (0, n + 1)]},
                                   self.feature_columns), n

    def target_positions(self, bars, position: float = 0.0) -> np.ndarray:
        """Target position (fraction of equity) chosen on every bar of ONE symbol's processed bars.

        ``bars``: a dict of arrays, a pyarrow Table, a pandas DataFrame or the path of a processed
        feather (canonical bar columns, the run's raw feature columns, ``tradable``). ``position``:
        the position held before the first decision (flat by default). Returns float64 [n_bars],
        NaN before the first full window (bar ``window_size - 1``).
        """
        market, n = self._market(_as_columns(bars))
        n_decisions = n - self.window_size + 1
        env_params = _env_params(self.config, role=WALK_ROLE, equity_floor=0.0)
        outs = walk(self.policy_apply, self.params, self.obs_stats, env_params, market,
                    jnp.asarray([self.window_size - 1], jnp.int32), jnp.asarray([n_decisions], jnp.int32),
                    jnp.asarray([position], jnp.float32), jax.random.PRNGKey(0), n_decisions, True)
        target = np.asarray(outs["target"][0], np.float64)
        tradable = np.array(outs["tradable"][0], bool)  # a writable copy
        tradable[-1] = True  # the last decision's fill bar is the next open, not yet in the data
        held = held_positions(target, tradable, initial=position)
        out = np.full(n, np.nan)
        out[self.window_size - 1:] = held
        return out

    def __repr__(self) -> str:
        return (f"TradingPolicy(symbols={self.symbols}, window_size={self.window_size}, "
                f"position_levels={self.position_levels}, checkpoint={self.checkpoint!r}, "
                f"step={self.meta.get('step')})")


def _env_params(cfg: Config, role: int, **overrides):
    from tbjax.run.assembly import env_params_from_config

    params = env_params_from_config(cfg, role)
    return params.replace(**{k: (v if k == "episode_len" else jnp.float32(v)) for k, v in overrides.items()})


def _resolve(path: str | Path) -> tuple[Path, tuple[str, ...]]:
    """A run dir → (run dir, (best, latest)); <run>/checkpoints/<kind> → (run dir, (kind,))."""
    p = Path(path)
    if (p / "config.yaml").is_file():
        return p, CHECKPOINT_KINDS
    if p.name in CHECKPOINT_KINDS and p.parent.name == "checkpoints" and (p.parent.parent / "config.yaml").is_file():
        return p.parent.parent, (p.name,)
    raise InputError(f"'{p}' is neither a run directory (with config.yaml) nor <run>/checkpoints/best|latest: "
                     "pass a directory written by python -m tbjax.train")


def _resolve_run_paths(cfg: Config, run_dir: Path) -> Config:
    """The config's relative paths resolved as training and ``tbjax.evaluate`` resolve them
    (:func:`tbjax.run.rundir.resolve_run_paths`: the folder the run was trained from, then the
    current one). ``env.liquidity_seasonality`` is read by the env, so one found nowhere is an
    error; the processed data is never read here, so ``data.processed_dir`` is resolved where it
    exists and otherwise kept as written."""
    from tbjax.run.rundir import resolve_run_paths

    return resolve_run_paths(cfg, run_dir, optional=("data.processed_dir",))


def _run_symbols(run_dir: Path, cfg: Config) -> list[str]:
    manifest = run_dir / "dataset" / "manifest.json"
    if manifest.is_file():
        try:
            return sorted(json.loads(manifest.read_text())["symbols"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"'{manifest}' is not a dataset manifest (no 'symbols'): re-export the run's "
                             "dataset or remove the file") from None
    return [s.upper() for s in cfg.data.symbols or []]


def load_policy(run_dir_or_checkpoint: str | Path) -> TradingPolicy:
    """Restore a run's agent: ``checkpoints/best`` (falls back to ``latest``) or the named checkpoint."""
    from tbjax.run.checkpoint import RunCheckpoints
    from tbjax.data.market import market_data_from_arrays
    from tbjax.run.assembly import assemble
    from tbjax.evaluation.deployment import baseline_policy
    from tbjax.run.deployed import read_deployment
    from tbjax.run.population import chosen_members, ensemble_policy, initial_carry

    run_dir, kinds = _resolve(run_dir_or_checkpoint)
    cfg = _resolve_run_paths(load_config(run_dir / "config.yaml"), run_dir)
    pipeline = FeaturePipeline.load(str(run_dir / "feature_pipeline.json"))
    symbols = _run_symbols(run_dir, cfg)
    built = assemble(cfg, len(symbols))  # the trainer from the shared cache, as training's (tbjax.run.assembly)
    trainer = built.trainer
    # Shapes only: one zero symbol long enough for the env's episode sampling.
    rows = cfg.env.window_size + cfg.env.episode_len + 2
    zeros = np.zeros(rows, np.float32)
    market = market_data_from_arrays(
        symbols=["TEMPLATE"], features=[np.zeros((rows, len(pipeline.columns)), np.float32)],
        open_=[zeros + 1], close=[zeros + 1], volatility=[zeros], volume=[zeros + 1],
        tradable=[np.ones(rows, bool)], hour_of_week=[np.zeros(rows, np.int32)],
        role_ranges=[[(0, rows), (0, 0), (0, 0)]], feature_names=[f"{c}_z" for c in pipeline.columns])
    template = jax.eval_shape(lambda: initial_carry(cfg, trainer, built.hparams, market))  # stacked for a population
    ckpt = RunCheckpoints(run_dir)
    kind = next((k for k in kinds if ckpt.meta(k) is not None), None)
    if kind is None:
        raise InputError(f"no {' or '.join(kinds)} checkpoint under '{run_dir / 'checkpoints'}': the run has not "
                         "saved one yet; train it (python -m tbjax.train) or pick another run dir")
    carry, meta = ckpt.restore(kind, template)
    deployment = read_deployment(run_dir)
    # no edge on val: every decision is the baseline's (the agent's parameters stay for inspection)
    hold = baseline_policy(cfg)[1] if deployment and deployment.get("policy") == "baseline" else None
    if cfg.train.population == 1:
        return TradingPolicy(cfg, pipeline, trainer, carry.params, carry.obs_stats, symbols, kind, meta,
                             policy_apply=hold, deployment=deployment)
    selected = chosen_members(cfg, meta)
    apply, params, stats = ensemble_policy(cfg, trainer, carry, selected)
    return TradingPolicy(cfg, pipeline, trainer, params, stats, symbols, kind, {**meta, "selected": selected},
                         policy_apply=hold or apply, deployment=deployment)
