"""HPO throughput: trials per hour with B = 1 (one trial per compiled call) vs B = 8 (vmapped).

    python benchmarks/hpo_throughput.py [--quick] [--trials N] [--out benchmarks/results/hpo_throughput.json]

Both sweeps run the same trials (the same enqueued hyperparameters, pruning off, so every trial
spends the full per-trial budget) on a synthetic market (tbjax.synth + tbjax.prepare in a temp
folder) through :class:`tbjax.hpo.runner.TrialRunner`, each with a fresh runner so each pays its
own compilation. Trials per hour = trials / sweep wall time × 3600, compile included.

Compile share: JAX reports the duration of every trace, MLIR lowering and XLA compilation
(``jax.monitoring`` events ``/jax/core/compile/*``); each event is turned into its time interval and
the union of the intervals is taken (a nested jit's trace lies inside its caller's, so a plain sum
would count it twice). Share = that union / sweep wall time, for the B = 1 sweep (the
``compile_share`` field) and the B = 8 sweep. Goals (2-core CPU): compile share < 5 % of a
20-trial sweep; B = 8 ≥ 2× the trials/hour of B = 1.

``dead_members``: one chunk of an 8-member program (64 envs x 64 steps each) with all members
alive and with 2 alive, the other 6 pruned: what a batch of mostly pruned trials still costs.

    python benchmarks/hpo_throughput.py --storage postgresql://... [--quick] [--trials N]

With ``--storage``: trials per hour of 1 and 2 worker processes (``python -m tbjax.hpo``, the
command users run, sharing one study) on that storage and on the SQLite default, written to
``benchmarks/results/hpo_storage_throughput.json``. Each sweep is timed from the workers' launch to
their exit (process start, data loading and the compiled-program cache read included: that is what
a worker costs); a warm-up study fills the shared JAX compilation cache first, so no sweep compiles.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import yaml  # noqa: E402

from benchmarks import common  # noqa: E402
from tbjax.config import load_config  # noqa: E402
from tbjax.data.prepare import prepare  # noqa: E402
from tbjax.data.synthetic_dump import write_synthetic_dump  # noqa: E402
from tbjax.run.experiment import build_experiment  # noqa: E402
from tbjax.hpo.runner import TrialRunner  # noqa: E402
from tbjax.hpo.space import build_search_space, user_set_keys  # noqa: E402


def make_config(folder: Path, quick: bool) -> Path:
    raw, processed = folder / "raw", folder / "processed"
    write_synthetic_dump(raw, symbols=4, bars=3000, seed=7)  # python -m tbjax.synth
    prepare(raw, processed)  # python -m tbjax.prepare
    n_envs, n_steps, updates = (16, 16, 4) if quick else (64, 64, 20)
    body = {
        "data": {"processed_dir": str(processed), "train_start": "2020-01-01", "train_end": "2020-03-20",
                 "val_start": "2020-03-21", "val_end": "2020-04-05", "test_start": "2020-04-06",
                 "test_end": "2020-05-06"},
        "env": {"episode_len": 64},
        "ppo": {"n_envs": n_envs, "n_steps": n_steps, "n_minibatches": 4, "n_epochs": 2, "hidden_sizes": [64, 64],
                "num_quantiles": 16},
        "train": {"total_env_steps": n_envs * n_steps * updates, "updates_per_chunk": updates // 2,
                  "eval_every": updates // 2},
        "eval": {"regime_bars": 300},
        "hpo": {"pruner": "none", "space": {
            "ppo.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}},
        "output": {"tensorboard": False},
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def sweep(cfg, exp, space, params: list[dict], batch: int, run_dir: Path) -> dict:
    runner = TrialRunner(cfg, exp, space, run_dir)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    for p in params:
        study.enqueue_trial(p)
    t0 = time.perf_counter()
    runner.optimize(study, n_trials=len(params), batch=batch)
    wall = time.perf_counter() - t0
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials())
    comp = common.compile_seconds(t0)
    return {"batch": batch, "trials": done, "wall_s": wall, "compile_s": comp, "compile_share": comp / wall,
            "trials_per_hour": done / wall * 3600.0}


def dead_member_cost(batch: int = 8, alive_count: int = 2, repeats: int = 3) -> dict:
    """Seconds of one chunk of a ``batch``-member program with every member alive and with only
    ``alive_count`` alive (the rest pruned), median of ``repeats``, compile excluded. Members stepped
    one by one (a CPU's default) skip a dead member's chunk (``tbjax.learner.population``), so a
    batch whose trials were mostly pruned should cost about alive / batch of a full one."""
    from tbjax.learner.population import default_member_batch

    pm = common.planted_market(4, 3_000, signal_rho=0.1, seed=7, window_size=32)
    trainer = common.tbjax_trainer(64, 64, 2, 4, 4, n_groups=len(pm.symbols), window_size=pm.window_size)
    program, hps, carry = common.seed_population(trainer, batch, 0, common.tbjax_hparams(common.env_params(pm)),
                                                 pm.market)
    masks = {"all": [True] * batch, "some": [i < alive_count for i in range(batch)]}
    carry, _ = jax.block_until_ready(program.advance(carry, hps, masks["all"], pm.market))  # compiles
    seconds = {}
    for name, mask in masks.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            carry, _ = jax.block_until_ready(program.advance(carry, hps, mask, pm.market))
            times.append(time.perf_counter() - t0)
        seconds[name] = float(np.median(times))
    return {"batch": batch, "alive": alive_count, "member_batch": default_member_batch(batch),
            "chunk_s_all_alive": seconds["all"], "chunk_s_some_alive": seconds["some"],
            "ratio": seconds["some"] / seconds["all"]}


def worker_sweep(config: Path, storage: str | None, workers: int, n_trials: int, run_dir: Path, env: dict) -> dict:
    """``workers`` processes of ``python -m tbjax.hpo`` on one new study; trials/hour of the whole."""
    import subprocess
    import uuid

    from tbjax.hpo.liveness import counted_trials
    from tbjax.hpo.storage import make_storage

    name = f"bench-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "tbjax.hpo", "--config", str(config), "--run-dir", str(run_dir), "--study-name", name,
           "--n-trials", str(n_trials)] + (["--storage", storage] if storage else [])
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd + ["--set", f"hpo.sampler_seed={k}"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for k in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise SystemExit(f"a worker failed ({p.returncode}): {err[-2000:]}")
    study = optuna.load_study(study_name=name, storage=make_storage(storage, run_dir))
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in counted_trials(study))
    return {"storage": "sqlite" if storage is None else storage.split(":", 1)[0], "workers": workers,
            "trials": done, "wall_s": wall, "trials_per_hour": done / wall * 3600.0}


def storage_main(args, n_trials: int) -> int:
    """1 and 2 workers on ``args.storage`` and on SQLite (module docstring)."""
    import platform

    out_path = Path(args.out if args.out != DEFAULT_OUT else DEFAULT_OUT.with_name("hpo_storage_throughput.json"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = make_config(folder, args.quick)
        env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
               "JAX_COMPILATION_CACHE_DIR": str(folder / "jax_cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        worker_sweep(config, None, 1, 1, folder / "warmup", env)  # fills the compilation cache
        sweeps = [worker_sweep(config, storage, w, n_trials, folder / f"{k}-w{w}", env)
                  for k, storage in (("sqlite", None), ("given", args.storage)) for w in (1, 2)]
    for r in sweeps:
        print(f"{r['storage']:>10}, {r['workers']} worker(s): {r['trials']} trials in {r['wall_s']:.1f} s -> "
              f"{r['trials_per_hour']:.0f} trials/h")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    out = {"cpu": cpu, "cores": os.cpu_count(), "n_trials": n_trials, "quick": args.quick, "sweeps": sweeps}
    return common.finish(out_path, out)


DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "hpo_throughput.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", help="compare 1 and 2 worker processes on this storage URL with SQLite")
    ap.add_argument("--quick", action="store_true", help="tiny budget, 8 trials: checks that it runs")
    ap.add_argument("--trials", type=int, default=None, help="trials per sweep (default 24; quick 8)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    n_trials = args.trials or (8 if args.quick else 24)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.storage:
        return storage_main(args, n_trials)
    common.track_compiles()
    rng = np.random.default_rng(0)
    params = [{"ppo.learning_rate": float(10 ** rng.uniform(-5, -3)), "ppo.cvar_alpha": float(rng.uniform(1 / 16, 0.2)),
               "ppo.cvar_weight": float(10 ** rng.uniform(-1, np.log10(2.0)))} for _ in range(n_trials)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = make_config(folder, args.quick)
        cfg = load_config(path)
        space = build_search_space(cfg, user_set_keys(path))
        exp = build_experiment(cfg)
        results = [sweep(cfg, exp, space, params, b, folder / f"b{b}") for b in (1, 8)]
    b1, b8 = results
    dead = dead_member_cost(alive_count=2) if not args.quick else None
    for r in results:
        print(f"B={r['batch']}: {r['trials']} trials in {r['wall_s']:.1f} s -> {r['trials_per_hour']:.0f} trials/h; "
              f"compile {r['compile_s']:.1f} s ({r['compile_share']:.1%})")
    print(f"speed-up B=8 / B=1: {b8['trials_per_hour'] / b1['trials_per_hour']:.2f}x")
    if dead:
        print(f"one chunk of 8 members: {dead['chunk_s_all_alive']:.2f} s all alive, {dead['chunk_s_some_alive']:.2f} s "
              f"with {dead['alive']} alive ({dead['ratio']:.2f}x)")
    out = {"device": str(jax.devices()[0].device_kind) + f" x{jax.device_count()} ({jax.default_backend()}, "
                     f"{os.cpu_count()} cores)",
           "trials_per_hour_b1": b1["trials_per_hour"], "trials_per_hour_b8": b8["trials_per_hour"],
           "compile_share": b1["compile_share"], "compile_share_b8": b8["compile_share"],
           "n_trials": n_trials, "quick": args.quick, "sweeps": results,
           "per_trial_updates": cfg.n_updates, "n_envs": cfg.ppo.n_envs, "n_steps": cfg.ppo.n_steps,
           "dead_members": dead}
    return common.finish(args.out, out)


if __name__ == "__main__":
    sys.exit(main())
