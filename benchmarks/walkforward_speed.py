"""Walk-forward speed: K folds trained as ONE vmapped program vs one by one (``--sequential``).

    python benchmarks/walkforward_speed.py [--quick | --small] [--folds 4 8] [--out benchmarks/results/walkforward_speed.json]

The default workload is the shipped config's shape (FULL below) for a quarter of its budget;
``--small`` is a short run where compilation dominates (the vmapped program takes longer to compile
than the single-fold one), kept to show that cost.

A synthetic hourly market (``tbjax.synth`` + ``tbjax.prepare`` into a temp folder, as
hpo_throughput does) is split into K walk-forward folds by :func:`tbjax.walkforward.driver.build_folds`
and trained by tbjax's own drivers, :func:`~tbjax.walkforward.driver.train_vmapped` and
:func:`~tbjax.walkforward.driver.train_sequential`, with the same config, hence the same total
updates per fold (``cfg.n_updates``) and the same evaluations (``train.eval_every`` = the whole
run, so each fold evaluates its val split once, after its last chunk, in both modes; the regime
weights ``eval.w_choppy`` / ``eval.w_trend`` are 0, so no regime market is built or walked).

What is timed (the drivers expose no timing, so it is measured from outside):

* ``vmapped_s`` / ``sequential_s``: wall-clock of the driver call end to end (stacking, init,
  compile, every chunk, the val evaluations); ``ratio`` = sequential_s / vmapped_s.
* per chunk: the driver's ``advance`` call (one compiled ``train_chunk``, then
  ``block_until_ready``; the carry it gets is awaited before the clock starts), taken by wrapping
  the ``run_chunks`` that ``tbjax.walkforward.driver`` calls (the module attribute is swapped for the
  duration of the call; the fold logic is tbjax's). ``compile_s_*`` = first chunk call minus a steady chunk (the median of the other
  chunk calls; in sequential mode fold 1.. reuse fold 0's compiled chunk), as train_throughput
  and vs_sb3 estimate it. ``train_s_*`` = the sum of the chunk calls minus that compile
  estimate (pure training), ``ratio_train`` its sequential / vmapped ratio.
* ``setup_s``: driver start to the first chunk call (stacking, init compile and run);
  ``other_s``: the rest outside chunk calls (val evaluations, sequential folds' own inits).
* ``compile_events_s_*``: the union of JAX's own trace / lowering / XLA-compile intervals
  (``jax.monitoring``, as hpo_throughput does) during the driver call; this includes init and the
  backtest walk of the evaluation, so it is at least the chunk's compile.

Every (K, mode) starts from cleared JAX caches (``jax.clear_caches`` and the drivers' program
caches), so each pays its own compilation. The machine may be shared, so each (K, mode) is
measured ``--repeats`` times (default 2, in A B B A order) and the fastest end-to-end run is kept;
every run's wall time is listed (``*_s_runs``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax

from benchmarks import common
from tbjax.config import load_config
from tbjax.data.prepare import prepare
from tbjax.data.processed import load_processed
from tbjax.data.synthetic_dump import write_synthetic_dump
from tbjax.learner import population
from tbjax.run import assembly
from tbjax.walkforward import driver as wfm

RESULTS = common.RESULTS_DIR / "walkforward_speed.json"

# market (symbols x hourly bars), trainer shape, updates per fold and per chunk, fold counts.
# FULL: the shipped config's shape per fold (tbjax.config's defaults, as configs/base.yaml writes
# them: 64 envs x 64 steps, 4 x 4 SGD, 2 x 64, 32 quantiles, 10 updates per chunk; a fold is one
# lone learner) for 60 updates per fold, about a quarter of base.yaml's budget; ``--envs`` changes
# the envs per fold (256 was the shipped shape before populations became the default).
# SMALL (``--small``): the compile-dominated workload of 64 envs x 20 updates.
FULL = {"symbols": 4, "bars": 8000, "n_envs": common.DEFAULT_PPO.n_envs, "n_steps": common.DEFAULT_PPO.n_steps,
        "n_epochs": common.DEFAULT_PPO.n_epochs, "n_minibatches": common.DEFAULT_PPO.n_minibatches,
        "hidden": common.HIDDEN[-1], "quantiles": common.DEFAULT_PPO.num_quantiles, "updates": 60,
        "per_chunk": common.DEFAULT_TRAIN.updates_per_chunk, "episode_len": 256, "window": 32, "folds": (4, 8)}
SMALL = dict(FULL, n_envs=64, updates=20, per_chunk=5)
QUICK = {"symbols": 2, "bars": 1500, "n_envs": 8, "n_steps": 16, "n_epochs": 1, "n_minibatches": 2, "hidden": 16,
         "quantiles": 8, "updates": 4, "per_chunk": 2, "episode_len": 64, "window": 32, "folds": (2,)}


def make_data(folder: Path, w: dict) -> Path:
    raw, processed = folder / "raw", folder / "processed"
    write_synthetic_dump(raw, w["symbols"], w["bars"], "1h", seed=0, signal=0.2)  # python -m tbjax.synth
    prepare(raw, processed)  # python -m tbjax.prepare
    return processed


def make_config(processed: Path, w: dict, folds: int):
    n_envs, n_steps = w["n_envs"], w["n_steps"]
    overrides = [
        f"data.processed_dir={processed}", f"walkforward.folds={folds}",
        "walkforward.seeds=1",  # K lone folds: the program over folds against one fold at a time
        f"ppo.n_envs={n_envs}", f"ppo.n_steps={n_steps}", f"ppo.n_epochs={w['n_epochs']}",
        f"ppo.n_minibatches={w['n_minibatches']}", f"ppo.hidden_sizes=[{w['hidden']}, {w['hidden']}]",
        f"ppo.num_quantiles={w['quantiles']}", f"env.episode_len={w['episode_len']}",
        f"env.window_size={w['window']}", f"train.total_env_steps={n_envs * n_steps * w['updates']}",
        f"train.updates_per_chunk={w['per_chunk']}", f"train.eval_every={w['updates']}",
        "output.tensorboard=false",
        # the best carry is chosen by val Sortino alone: no regime markets are built or walked
        "eval.w_choppy=0.0", "eval.w_trend=0.0",
    ]
    cfg = load_config(common.REPO_ROOT / "configs" / "base.yaml", overrides)
    assert cfg.n_updates == w["updates"], (cfg.n_updates, w["updates"])
    return cfg


@contextlib.contextmanager
def timed_chunks(chunk_times: list[float], first_call: list[float]):
    """Swap ``tbjax.walkforward.driver.run_chunks`` for one that times every ``advance`` call."""
    real = wfm.run_chunks

    def run_chunks(advance, carry, schedule, hooks, **kw):
        def timed(c, alive):
            # dispatch is asynchronous: wait for the carry first, or a fold's init (run just before
            # its first chunk) would be counted as chunk time
            jax.block_until_ready(c)
            t0 = time.perf_counter()
            if not first_call:
                first_call.append(t0)
            out = advance(c, alive)
            jax.block_until_ready(out)
            chunk_times.append(time.perf_counter() - t0)
            return out
        return real(timed, carry, schedule, hooks, **kw)

    wfm.run_chunks = run_chunks
    try:
        yield
    finally:
        wfm.run_chunks = real


def fresh_caches() -> None:
    """Every measurement pays its own compile: clear JAX's jit caches and the drivers' caches."""
    jax.clear_caches()
    population._PROGRAMS.clear()  # the population programs the walk-forward driver compiled
    assembly._TRAINERS.clear()


def measure(cfg, loaded, sequential: bool) -> dict:
    fresh_caches()
    wf = wfm.build_folds(cfg, loaded)  # host work (per-fold pipelines), not timed
    chunk_times, first_call = [], []
    t0 = time.perf_counter()
    with timed_chunks(chunk_times, first_call):
        (wfm.train_sequential if sequential else wfm.train_vmapped)(wf)
    wall = time.perf_counter() - t0
    assert all(b is not None for b in wf.best) and not wf.diverged, wf.diverged
    steady = statistics.median(chunk_times[1:]) if len(chunk_times) > 1 else float("nan")
    compile_s = max(0.0, chunk_times[0] - steady)
    return {"wall_s": wall, "compile_s": compile_s, "compile_events_s": common.compile_seconds(t0),
            "setup_s": first_call[0] - t0, "chunks_s": sum(chunk_times), "train_s": sum(chunk_times) - compile_s,
            "other_s": wall - (first_call[0] - t0) - sum(chunk_times), "steady_chunk_s": steady, "first_chunk_s": chunk_times[0], "chunk_calls": len(chunk_times),
            "chunk_s": chunk_times}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny market and trainer, K = 2 (seconds)")
    ap.add_argument("--small", action="store_true", help="64 envs x 20 updates per fold (compile-dominated)")
    ap.add_argument("--envs", type=int, default=None, help="envs per fold (default: ppo.n_envs's default)")
    ap.add_argument("--folds", type=int, nargs="*", default=None, help="fold counts (default 4 8; quick 2)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="measurements per (K, mode), ABBA order, the fastest kept (default 2; quick 1)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    w = dict(QUICK if args.quick else SMALL if args.small else FULL)
    w["n_envs"] = args.envs or w["n_envs"]
    folds = tuple(args.folds or w["folds"])
    args.repeats = args.repeats or (1 if args.quick else 2)
    common.track_compiles()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        processed = make_data(Path(tmp), w)
        loaded = load_processed(make_config(processed, w, folds[0]))[:2]
        for k in folds:
            cfg = make_config(processed, w, k)
            runs = {False: [], True: []}
            for rep in range(args.repeats):  # ABBA order: neither mode always runs first
                for sequential in ((False, True) if rep % 2 == 0 else (True, False)):
                    runs[sequential].append(measure(cfg, loaded, sequential))
            vm, sq = (min(runs[s], key=lambda m: m["wall_s"]) for s in (False, True))
            row = {"folds": k, "vmapped_s": vm["wall_s"], "sequential_s": sq["wall_s"],
                   "ratio": sq["wall_s"] / vm["wall_s"],
                   "compile_s_vmapped": vm["compile_s"], "compile_s_sequential": sq["compile_s"],
                   "train_s_vmapped": vm["train_s"], "train_s_sequential": sq["train_s"],
                   "ratio_train": sq["train_s"] / vm["train_s"] if vm["train_s"] > 0 else None,
                   "compile_events_s_vmapped": vm["compile_events_s"],
                   "compile_events_s_sequential": sq["compile_events_s"],
                   "vmapped_s_runs": [m["wall_s"] for m in runs[False]],
                   "sequential_s_runs": [m["wall_s"] for m in runs[True]],
                   "updates_per_fold": cfg.n_updates, "env_steps_per_fold": cfg.n_updates * cfg.batch_size,
                   "vmapped": vm, "sequential": sq}
            results.append(row)
            print(f"K={k}: vmapped {vm['wall_s']:.1f} s (compile {vm['compile_s']:.1f}, train {vm['train_s']:.1f}) | "
                  f"sequential {sq['wall_s']:.1f} s (compile {sq['compile_s']:.1f}, train {sq['train_s']:.1f}) | "
                  f"ratio seq/vmap {row['ratio']:.2f} (training only {row['ratio_train'] or float('nan'):.2f})",
                  flush=True)
    common.print_table(results, ["folds", "vmapped_s", "sequential_s", "ratio", "compile_s_vmapped",
                                 "compile_s_sequential", "ratio_train"])
    report = {
        "device": common.device_string(),
        "machine": common.machine_info(),
        "quick": args.quick,
        "small": args.small,
        "results": results,
        "workload": {"symbols": w["symbols"], "bars_per_symbol": w["bars"], "timeframe": "1h",
                     "n_envs": w["n_envs"], "n_steps": w["n_steps"], "n_epochs": w["n_epochs"],
                     "n_minibatches": w["n_minibatches"], "hidden_sizes": [w["hidden"]] * 2,
                     "num_quantiles": w["quantiles"], "window": w["window"], "episode_len": w["episode_len"],
                     "updates_per_fold": w["updates"], "updates_per_chunk": w["per_chunk"],
                     "eval": ("val backtest once per fold, after its last chunk (both modes); "
                              "regime weights 0, so no regime market is walked")},
        "method": ("vmapped_s/sequential_s: train_vmapped / train_sequential end to end (compile and val "
                   "evaluations included); compile_s: first chunk call minus the median later chunk call; "
                   "train_s: chunk calls minus compile_s; fresh JAX caches per measurement; fastest of "
                   f"{args.repeats} run(s) per (K, mode), ABBA order"),
        "repeats": args.repeats,
    }
    return common.finish(args.out, report, ("jax", "jaxlib", "flax", "optax"))


if __name__ == "__main__":
    sys.exit(main())
