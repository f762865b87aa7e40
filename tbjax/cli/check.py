"""``python -m tbjax.check --config C [--set a.b=c ...]``: preflight before a long run.

Prints one line per check, ✓ or ✗, and exits 0 when every check passes, 2 otherwise (an invalid
config or bad arguments: one ``error:`` line, exit 2). Nothing is written and nothing is compiled:

config valid · processed data found, schema valid · rows per symbol and split (train / val / test /
embargo) · warm-up (:func:`warmup_rule`, the rule ``tbjax.train`` applies too) · splits non-empty,
long enough and embargoed · devices seen by JAX · free disk for the run directory (≥ 1 GB) ·
estimated training memory against available memory, with the largest power-of-two ``ppo.n_envs``
that fits when it does not.

Memory estimate (bytes): ``UPDATE_FACTOR × n_envs × n_steps × observation_size × 4`` plus the
MarketData arrays (``S × T × (F + 6) × 4``). The rollout keeps one float32 observation per
transition; UPDATE_FACTOR = 4 counts that buffer, the shuffled copy each PPO epoch makes, the
normalised observations fed to the network, and as much again for activations, gradients and XLA
temporaries. Available memory: the accelerator's ``bytes_limit - bytes_in_use`` when JAX reports
it (GPU), else MemAvailable from /proc/meminfo (os.sysconf's free pages where that is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tbjax.errors import InputError

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


def read_prepared_warmup(processed_dir: str | Path) -> int | None:
    """``warmup_bars`` that prepare recorded in the processed manifest; None when it is not recorded."""
    path = Path(processed_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("warmup_bars")
        return None if value is None else int(value)
    except (OSError, ValueError, TypeError, AttributeError):
        raise InputError(f"'{path}' is not a readable prepare manifest: re-run python -m tbjax.prepare") from None


def warmup_rule(window_size: int, prepared: int | None) -> tuple[bool, str]:
    """The one warm-up rule, used by this preflight and by ``python -m tbjax.train``: (ok, detail).

    prepare drops the first rows of each symbol so that every indicator in the processed files has
    settled: 2 × the slowest lookback (``tbjax.data.features.warmup_bars``). The observation window
    is not part of the rule: the env decides from ``role_start + window_size - 1`` on, so any window
    is filled from processed rows with settled features; a longer ``env.window_size`` only costs the
    first rows of each split as decision points (and lengthens the default embargo). So a window
    longer than the prepared warm-up is fine, and processed data that dropped fewer rows than the
    indicators need is refused by both commands.
    """
    from tbjax.data import features as feats

    needed = feats.warmup_bars(0)  # the indicators' part of the warm-up, without a window
    if prepared is None:
        return True, (f"warm-up not recorded in the processed manifest (indicators need {needed} bars); "
                      f"env.window_size {window_size} is filled from the processed rows")
    if prepared < needed:
        return False, (f"prepare dropped {prepared} warm-up rows but the indicators need {needed} to settle, so "
                       f"the first rows' features are wrong: re-run python -m tbjax.prepare (it drops {needed})")
    return True, (f"prepare dropped {prepared} warm-up rows (indicators need {needed}); env.window_size "
                  f"{window_size} is filled from the processed rows")


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _data_checks(cfg) -> tuple[list[Check], int | None, int]:
    """Processed data, rows per split, warm-up, splits; returns (checks, n_features, market bytes)."""
    from tbjax.data import features as feats
    from tbjax.data.splits import ROLE_EMBARGO, ROLE_TEST, ROLE_TRAIN, ROLE_VAL, assign_roles, split_bounds
    from tbjax.run.setup import load_processed

    checks: list[Check] = []
    try:
        tables, columns, _ = load_processed(cfg)
    except InputError as exc:
        return [Check(False, "processed data", str(exc))], None, 0
    problems = []
    for sym, t in tables.items():
        times = np.asarray(t["open_time"], np.int64)
        if len(times) > 1 and not np.all(np.diff(times) > 0):
            problems.append(f"{sym}: open_time is not strictly increasing")
        prices = np.stack([np.asarray(t[c], np.float64) for c in ("open", "high", "low", "close")])
        if not np.all(np.isfinite(prices) & (prices > 0)):
            problems.append(f"{sym}: non-positive or non-finite prices")
    n_rows = {s: len(t["close"]) for s, t in tables.items()}
    checks.append(Check(not problems, "processed data",
                        f"{len(tables)} symbol(s), {len(columns)} feature columns in {cfg.data.processed_dir}"
                        if not problems else "; ".join(problems) + ": re-run python -m tbjax.prepare"))
    market_bytes = len(tables) * max(n_rows.values()) * (len(columns) + MARKET_ARRAYS) * 4

    window, episode = cfg.env.window_size, cfg.env.episode_len
    warmup = feats.warmup_bars(window)
    try:
        prepared = read_prepared_warmup(cfg.data.processed_dir)
        warm_ok, warm_detail = warmup_rule(window, prepared)
    except InputError as exc:
        warm_ok, warm_detail = False, str(exc)
    checks.append(Check(warm_ok, "warm-up", warm_detail))

    d = cfg.data
    embargo = d.embargo_bars if d.embargo_bars is not None else warmup
    try:
        bounds = split_bounds(d.train_start, d.train_end, d.val_start, d.val_end, d.test_start, d.test_end)
        roles = {s: assign_roles(np.asarray(t["open_time"], np.int64), bounds, embargo, s) for s, t in tables.items()}
    except InputError as exc:
        checks.append(Check(False, "splits", str(exc)))
        return checks, len(columns), market_bytes
    needs = {ROLE_TRAIN: window + episode + 1, ROLE_VAL: window + 1, ROLE_TEST: window + 1}
    short = []
    for sym, r in roles.items():
        counts = {role: int(np.sum(r == role)) for role in (ROLE_TRAIN, ROLE_VAL, ROLE_TEST, ROLE_EMBARGO)}
        checks.append(Check(True, f"rows {sym}", f"train {counts[ROLE_TRAIN]}, val {counts[ROLE_VAL]}, "
                                                 f"test {counts[ROLE_TEST]}, embargo {counts[ROLE_EMBARGO]} "
                                                 f"(of {n_rows[sym]})"))
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
    checks.append(Check(not short and embargo_ok, "splits", detail))
    return checks, len(columns), market_bytes


def run_checks(cfg) -> list[Check]:
    """Every check after the config loaded (each independent of the others where possible)."""
    checks, n_features, market_bytes = _data_checks(cfg)

    import jax

    devices = jax.devices()
    kinds = sorted({f"{d.platform}:{d.device_kind}" for d in devices})
    divisible = cfg.ppo.n_envs % len(devices) == 0
    checks.append(Check(divisible, "devices", f"{len(devices)} × {', '.join(kinds)}"
                        + ("" if divisible else f": ppo.n_envs {cfg.ppo.n_envs} must be a multiple of "
                                                f"{len(devices)} to shard the envs")))

    run_root = Path(cfg.output.runs_dir).resolve()
    probe = run_root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    checks.append(Check(free >= MIN_FREE_DISK, "disk", f"{_gb(free)} free at {probe} for {run_root}"
                        + ("" if free >= MIN_FREE_DISK else ": free at least 1 GB or set output.runs_dir "
                                                            "to a larger disk")))

    if n_features is None:
        checks.append(Check(False, "memory", "not estimated: needs the processed data (see above)"))
        return checks
    obs_size = cfg.env.window_size * n_features + ACCOUNT_FEATURES
    p = cfg.ppo
    need = estimate_memory_bytes(p.n_envs, p.n_steps, obs_size, market_bytes)
    available, source = available_memory_bytes()
    detail = (f"about {_gb(need)} for n_envs {p.n_envs} × n_steps {p.n_steps} × observation {obs_size} "
              f"floats (×{UPDATE_FACTOR} for the update) + market data; {_gb(available)} available ({source})")
    if need > available:
        fit = largest_fitting_n_envs(p.n_steps, p.n_minibatches, len(devices), obs_size, market_bytes, available)
        detail += (f": does not fit, try --set ppo.n_envs={fit}" if fit else
                   ": does not fit even with one env; lower ppo.n_steps or env.window_size")
    checks.append(Check(need <= available, "memory", detail))
    return checks


def _mark(ok: bool) -> str:
    mark = "✓" if ok else "✗"
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        mark.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "OK  " if ok else "FAIL"
    return mark


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line through InputError, not usage text
        raise InputError(f"{message} (see python -m tbjax.check --help)")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m tbjax.check", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/base.yaml", help="YAML config (default configs/base.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="A.B=C", help="override a config key")
    try:
        args = parser.parse_args(argv)
        from tbjax.config import load_config

        cfg = load_config(args.config, args.set)
        checks = [Check(True, "config", f"{args.config} valid" + (f" with {len(args.set)} override(s)"
                                                                  if args.set else ""))]
        checks += run_checks(cfg)
    except InputError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{_mark(c.ok)} {c.name:<{width}}  {c.detail}")
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed} of {len(checks)} checks passed" + ("" if not failed else
                                                                      f"; fix the {failed} marked ✗"
                                                                      .replace("✗", _mark(False))))
    return 0 if failed == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
