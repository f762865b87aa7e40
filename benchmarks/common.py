"""Shared setup of the benchmarks: one planted-signal market, the machine, and atomic JSON output.

Every peer comparison (``vs_sb3``, ``learning_speed``, ``scaling``) must feed both learners the same
data, so the market is built here once, the way ``tbjax.run.setup`` builds a real run:

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

import functools
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tbjax.config import EnvConfig, PPOConfig, TrainConfig
from tbjax.data import features as feats
from tbjax.data.bars import market_from_tables
from tbjax.data.market import ROLE_TEST, ROLE_TRAIN, ROLE_VAL, MarketData
from tbjax.data.pipeline import FeaturePipeline
from tbjax.data.splits import ROLE_EMBARGO, role_ranges
from tbjax.data.synthetic import generate_klines
from tbjax.env import market as market_env
from tbjax.evaluation.metrics import json_safe
from tbjax.evaluation.oracle import threshold_oracle

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_relative(path) -> str:
    """A path as results files and summaries record it: relative to the repository when inside it
    (so a committed result does not name the machine it ran on), else as given."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
HOUR_MS = 3_600_000
HOURLY_BARS_PER_YEAR = 8760.0  # 24/7 hourly bars (docs/ALGORITHMS.md "Risk metrics")
SIGNAL_COLUMN = "taker_buy_ratio_z"
LONG_SHORT = (-1.0, 0.0, 1.0)


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
    return market_env.make_env_params(
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


# ------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_string() -> str:
    """The JAX device the figures came from, e.g. 'cpu (Intel Xeon ...)' or 'NVIDIA H100'."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"cpu ({cpu_model()}, {os.cpu_count()} cores)"
    return str(getattr(dev, "device_kind", dev.platform))


def machine_info() -> dict:
    import jax

    return {"cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "jax_backend": jax.default_backend(),
            "jax_devices": [str(getattr(d, "device_kind", d.platform)) for d in jax.devices()],
            "platform": platform.platform(), "python": platform.python_version()}


def versions(*names: str) -> dict:
    """Installed versions of the named distributions (None when absent)."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def code_commit(root: str | Path = REPO_ROOT) -> str | None:
    """``git rev-parse HEAD`` of ``root``, ``+dirty`` when tracked files under tbjax/ or benchmarks/ (not
    results/, the outputs) differ from it: figures of uncommitted code never pass for the commit's."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "tbjax", "benchmarks",
                      ":(exclude)benchmarks/results")
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, no commit yet
        return None
    return sha + ("+dirty" if changed else "")


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as JSON atomically (temp file in the same folder, then rename): a reader never sees
    half a file. NaN/inf become null (``tbjax.evaluation.metrics.json_safe``). A dict gets ``commit``
    (``code_commit``; the caller's own is kept): every result names the code it measured."""
    path = Path(path)
    if isinstance(obj, dict):
        obj = {"commit": code_commit(), **obj}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(json_safe(obj), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


# ------------------------------------------------------------------------------- both learners

# PPO settings shared by both sides: tbjax's own defaults (tbjax/config.py, chosen by the study in
# docs/TUNING.md), so SB3 gets the same tuned values. Learning rate constant on both sides (a
# time-budgeted run has no known end for a decay).
DEFAULT_PPO = PPOConfig()
DEFAULT_ENV = EnvConfig()
DEFAULT_TRAIN = TrainConfig()
PPO_SETTINGS = {k: getattr(DEFAULT_PPO, k) for k in ("learning_rate", "gamma", "gae_lambda", "clip_eps",
                                                     "ent_coef", "vf_coef", "max_grad_norm", "weight_decay")}
HIDDEN = tuple(DEFAULT_PPO.hidden_sizes)


@functools.lru_cache(maxsize=8)
def tbjax_trainer(n_envs: int, n_steps: int, n_epochs: int, n_minibatches: int, updates_per_chunk: int,
                  n_groups: int, total_updates: int = 1_000, position_levels: tuple = LONG_SHORT, mesh=None,
                  policy: str = "mlp", window_size: int = 32):
    """The tbjax trainer over the market env with the shared widths (2 x 64) and a constant lr.

    Cached per settings: benchmarks run in one process (tests, notebooks) reuse one compiled
    trainer instead of compiling the same program again. ``position_levels`` fixes the action
    space (the network's output size), ``mesh`` shards the env axis over devices; ``policy``
    gru / lstm adds separate actor and critic cores of HIDDEN[-1] units after the encoder;
    ``window_size`` is the market's (the per-bar encoder reads the window row by row)."""
    from tbjax.env.protocol import MarketEnv
    from tbjax.learner.trainer import TrainerSpec, make_trainer

    spec = TrainerSpec(n_envs=n_envs, n_steps=n_steps, n_epochs=n_epochs, n_minibatches=n_minibatches,
                       updates_per_chunk=updates_per_chunk, total_updates=total_updates,
                       hidden_sizes=HIDDEN, lr_schedule="constant", n_groups=n_groups,
                       bar_features=DEFAULT_PPO.bar_features,
                       holdout_size=min(1024, n_envs * n_steps), policy=policy, rnn_size=HIDDEN[-1])
    action_space = market_env.make_env_params(action_mode="discrete", position_levels=tuple(position_levels),
                                              window_size=window_size)
    return make_trainer(spec, MarketEnv(), action_space, mesh=mesh)


def tbjax_hparams(params, **overrides: float):
    """HParams of the shared settings (``PPO_SETTINGS``), with ``overrides`` (a study's trial values)."""
    from tbjax.learner.trainer import make_hparams

    return make_hparams(params, **{**PPO_SETTINGS, **overrides})


def seed_population(trainer, size: int, seed: int, hp, market):
    """(program, hparams, initial carry) of ``size`` members with seeds seed .. seed+size-1 trained
    as one program (``tbjax.learner.population``); size 1 is the lone trainer with ``PRNGKey(seed)``."""
    import jax

    from tbjax.learner.population import member_keys, population_program, stack_trees

    program = population_program(trainer, size)
    hps = stack_trees([hp] * size) if size > 1 else hp
    key = member_keys(seed, size) if size > 1 else jax.random.PRNGKey(seed)
    return program, hps, program.start(key, hps, market)


def add_workload_args(p, ppo_shape: bool = True) -> None:
    """The workload flags the peer benchmarks share, so every script describes the same work:
    market size and window, and (``ppo_shape``) the rollout length, epochs and minibatches."""
    p.add_argument("--symbols", type=int, default=4)
    p.add_argument("--bars", type=int, default=20_000)
    p.add_argument("--window", type=int, default=32)
    if ppo_shape:
        p.add_argument("--n-steps", type=int, default=DEFAULT_PPO.n_steps)
        p.add_argument("--epochs", type=int, default=DEFAULT_PPO.n_epochs)
        p.add_argument("--minibatches", type=int, default=DEFAULT_PPO.n_minibatches)


# --------------------------------------------------------------------------- compile time
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_compile_intervals: list[tuple[float, float]] = []
_listening = False


def _on_compile_event(event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
        end = time.perf_counter()
        _compile_intervals.append((end - duration, end))


def track_compiles() -> None:
    """Record JAX's compile-phase durations from now on (idempotent)."""
    global _listening
    if not _listening:
        import jax

        jax.monitoring.register_event_duration_secs_listener(_on_compile_event)
        _listening = True


def compile_seconds(since: float) -> float:
    """Length of the union of JAX compile intervals that end after ``since`` (nested phases once)."""
    spans = sorted((max(a, since), b) for a, b in _compile_intervals if b > since)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    return total + (cur_b - cur_a if cur_b is not None else 0.0)
