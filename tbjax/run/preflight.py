"""The preflight checks of ``python -m tbjax.check``: one :class:`Check` per question, nothing written
and nothing compiled.

config valid (the CLI) · processed data found, schema valid · rows per symbol and split (train /
val / test / embargo) · warm-up (:func:`tbjax.run.warmup.warmup_rule`, the rule ``tbjax.train``
applies too) · splits non-empty, long enough and embargoed · devices seen by JAX · free disk for
the run directory (≥ 1 GB) · estimated training memory against available memory, with the largest
power-of-two ``ppo.n_envs`` that fits when it does not.

Memory estimate (bytes): ``UPDATE_FACTOR × n_envs × n_steps × observation_size × 4`` for each
population member stepped at once (``train.population`` on an accelerator, where the members are
one vmap; one on a CPU, where they run one after another) plus the MarketData arrays (``S × T × (F + 6) × 4``). The rollout keeps one float32 observation per
transition; UPDATE_FACTOR = 4 counts that buffer, the shuffled copy each PPO epoch makes, the
normalised observations fed to the network, and as much again for activations, gradients and XLA
temporaries. Available memory: the accelerator's ``bytes_limit - bytes_in_use`` when JAX reports
it (GPU), else MemAvailable from /proc/meminfo (os.sysconf's free pages where that is missing).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tbjax.errors import InputError
from tbjax.run.warmup import read_prepared_warmup, warmup_rule

UPDATE_FACTOR = 4
MIN_FREE_DISK = 1 << 30  # 1 GiB: dataset export, checkpoints, TensorBoard and plots of one run
MARKET_ARRAYS = 6  # open, close, volatility, volume, tradable, hour_of_week besides the F features
ACCOUNT_FEATURES = 4  # tbjax.env.observation.N_ACCOUNT_FEATURES (kept here so check needs no JAX)


@dataclass
class Check:
    ok: bool
    name: str
    detail: str


def available_memory_bytes() -> tuple[int, str]:
    """(bytes available to a run, where the number comes from)."""
    try:
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            stats = device.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), f"{device.platform} memory"
    except Exception:  # no accelerator stats: fall back to host memory
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable"
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages"


def estimate_memory_bytes(n_envs: int, n_steps: int, obs_size: int, market_bytes: int) -> int:
    """See the module docstring: UPDATE_FACTOR rollout-sized float32 buffers plus the market data."""
    return UPDATE_FACTOR * n_envs * n_steps * obs_size * 4 + market_bytes


def largest_fitting_n_envs(n_steps: int, n_minibatches: int, n_devices: int, obs_size: int, market_bytes: int,
                           available: int) -> int | None:
    """Largest power of two n_envs whose estimate fits and that keeps the config rules (n_minibatches
    divides n_envs × n_steps, n_devices divides n_envs); None if not even one env fits."""
    best, k = None, 1
    while k <= 1 << 30 and estimate_memory_bytes(k, n_steps, obs_size, market_bytes) <= available:
        if (k * n_steps) % n_minibatches == 0 and k % n_devices == 0:
            best = k
        k *= 2
    return best


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


# ---------------------------------------------------------------------- data


def _table_check(cfg, tables: dict, columns: list) -> Check:
    """Bar times strictly increasing, prices finite and positive, in every processed table."""
    problems = []
    for sym, t in tables.items():
        times = np.asarray(t["open_time"], np.int64)
        if len(times) > 1 and not np.all(np.diff(times) > 0):
            problems.append(f"{sym}: open_time is not strictly increasing")
        prices = np.stack([np.asarray(t[c], np.float64) for c in ("open", "high", "low", "close")])
        if not np.all(np.isfinite(prices) & (prices > 0)):
            problems.append(f"{sym}: non-positive or non-finite prices")
    if problems:
        return Check(False, "processed data", "; ".join(problems) + ": re-run python -m tbjax.prepare")
    return Check(True, "processed data",
                 f"{len(tables)} symbol(s), {len(columns)} feature columns in {cfg.data.processed_dir}")


def _warmup_check(cfg) -> Check:
    try:
        ok, detail = warmup_rule(cfg.env.window_size, read_prepared_warmup(cfg.data.processed_dir))
    except InputError as exc:
        ok, detail = False, str(exc)
    return Check(ok, "warm-up", detail)


def _split_checks(cfg, tables: dict) -> list[Check]:
    """Rows per symbol and split, then one "splits" check: long enough and embargoed."""
    from tbjax.data import features as feats
    from tbjax.data.splits import ROLE_EMBARGO, ROLE_TEST, ROLE_TRAIN, ROLE_VAL, assign_roles, split_bounds

    window, episode = cfg.env.window_size, cfg.env.episode_len
    warmup = feats.warmup_bars(window)
    d = cfg.data
    embargo = d.embargo_bars if d.embargo_bars is not None else warmup
    try:
        bounds = split_bounds(d.train_start, d.train_end, d.val_start, d.val_end, d.test_start, d.test_end)
        roles = {s: assign_roles(np.asarray(t["open_time"], np.int64), bounds, embargo, s) for s, t in tables.items()}
    except InputError as exc:
        return [Check(False, "splits", str(exc))]
    needs = {ROLE_TRAIN: window + episode + 1, ROLE_VAL: window + 1, ROLE_TEST: window + 1}
    checks, short = [], []
    for sym, r in roles.items():
        counts = {role: int(np.sum(r == role)) for role in (ROLE_TRAIN, ROLE_VAL, ROLE_TEST, ROLE_EMBARGO)}
        checks.append(Check(True, f"rows {sym}", f"train {counts[ROLE_TRAIN]}, val {counts[ROLE_VAL]}, "
                                                 f"test {counts[ROLE_TEST]}, embargo {counts[ROLE_EMBARGO]} "
                                                 f"(of {len(tables[sym]['close'])})"))
        for role, name in ((ROLE_TRAIN, "train"), (ROLE_VAL, "val"), (ROLE_TEST, "test")):
            if counts[role] < needs[role]:
                short.append(f"{sym} {name} has {counts[role]} rows, needs {needs[role]}")
    embargo_ok = embargo >= warmup
    detail = (f"train/val/test non-empty; embargo {embargo} bars before val and test "
              f"(warm-up {warmup})")
    if short:
        detail = "; ".join(short) + (" (train: window_size + episode_len + 1, val/test: window_size + 1): "
                                     "widen the splits or lower env.window_size / env.episode_len")
    elif not embargo_ok:
        detail = (f"data.embargo_bars {embargo} is shorter than the warm-up of {warmup} bars, so val/test "
                  f"indicators would read training rows: set data.embargo_bars >= {warmup} or null")
    return checks + [Check(not short and embargo_ok, "splits", detail)]


def _data_checks(cfg) -> tuple[list[Check], int | None, int]:
    """Processed data, rows per split, warm-up, splits; returns (checks, n_features, market bytes)."""
    from tbjax.data.processed import load_processed

    try:
        tables, columns, _ = load_processed(cfg)
    except InputError as exc:
        return [Check(False, "processed data", str(exc))], None, 0
    n_rows = max(len(t["close"]) for t in tables.values())
    market_bytes = len(tables) * n_rows * (len(columns) + MARKET_ARRAYS) * 4
    checks = [_table_check(cfg, tables, columns), _warmup_check(cfg)] + _split_checks(cfg, tables)
    return checks, len(columns), market_bytes


# ---------------------------------------------------------------------- machine


def _device_check(cfg, devices) -> Check:
    kinds = sorted({f"{d.platform}:{d.device_kind}" for d in devices})
    divisible = cfg.ppo.n_envs % len(devices) == 0
    return Check(divisible, "devices", f"{len(devices)} × {', '.join(kinds)}"
                 + ("" if divisible else f": ppo.n_envs {cfg.ppo.n_envs} must be a multiple of "
                                         f"{len(devices)} to shard the envs"))


def _disk_check(cfg) -> Check:
    run_root = Path(cfg.output.runs_dir).resolve()
    probe = run_root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return Check(free >= MIN_FREE_DISK, "disk", f"{_gb(free)} free at {probe} for {run_root}"
                 + ("" if free >= MIN_FREE_DISK else ": free at least 1 GB or set output.runs_dir "
                                                     "to a larger disk"))


def _memory_check(cfg, n_features: int | None, market_bytes: int, n_devices: int) -> Check:
    if n_features is None:
        return Check(False, "memory", "not estimated: needs the processed data (see above)")
    obs_size = cfg.env.window_size * n_features + ACCOUNT_FEATURES
    from tbjax.learner.population import default_member_batch

    p = cfg.ppo
    # a population's members step together on an accelerator (one vmap), one at a time on a CPU
    together = default_member_batch(cfg.train.population)
    need = together * estimate_memory_bytes(p.n_envs, p.n_steps, obs_size, 0) + market_bytes
    available, source = available_memory_bytes()
    members = "" if together == 1 else f" × {together} population members stepped together"
    detail = (f"about {_gb(need)} for n_envs {p.n_envs} × n_steps {p.n_steps} × observation {obs_size} "
              f"floats (×{UPDATE_FACTOR} for the update){members} + market data; {_gb(available)} available ({source})")
    if need > available:
        fit = largest_fitting_n_envs(p.n_steps, p.n_minibatches, n_devices, obs_size, market_bytes // together,
                                     available // together)
        detail += (f": does not fit, try --set ppo.n_envs={fit}" if fit else
                   ": does not fit even with one env; lower ppo.n_steps or env.window_size")
    return Check(need <= available, "memory", detail)


def run_checks(cfg) -> list[Check]:
    """Every check after the config loaded (each independent of the others where possible)."""
    checks, n_features, market_bytes = _data_checks(cfg)

    import jax

    devices = jax.devices()
    return checks + [_device_check(cfg, devices), _disk_check(cfg),
                     _memory_check(cfg, n_features, market_bytes, len(devices))]
