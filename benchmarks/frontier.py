"""Risk frontier cost: a 5 x 2 frontier as ONE program vs a population of 10, a lone run and the 10 runs one by one.

    python benchmarks/frontier.py [--quick] [--updates 20] [--sample-steps 500000] [--sample-seeds 0 2]
                                  [--tail-steps 204800] [--skip-points] [--out benchmarks/results/frontier.json]

Two parts, both through tbjax's own jobs (what ``python -m tbjax.frontier`` / ``python -m
tbjax.train`` run, with temp run folders):

1. **Speed** on the planted-tail market (the market of tests/run/test_frontier_tail.py:
   ``tbjax.synth --regime STRONG_TREND --crash 0.02``), the shipped network shape (tbjax.config's
   ppo defaults), ``--updates`` updates per member, every job end to end (data, compile, chunks,
   val evaluations, the final evaluation and its files):

   * ``frontier_s``: :func:`tbjax.run.frontier.frontier_job`, ``frontier.cvar_weight`` 5 values x
     ``frontier.seeds`` 2 = 10 members (its extra work: each point's ensemble on val and test,
     the choice, frontier.json / .png);
   * ``population_s``: :func:`tbjax.run.job.train_job` with ``train.population = 10`` (the same
     member count, one setting); the goal is ``frontier_s / population_s <= 1.3``;
   * ``lone_s`` and ``sequential_s``: the frontier's 10 members as 10 lone runs
     (``train.population = 1``, each point's ``ppo.cvar_weight`` and seed ``train.seed + s``)
     one after the other in this process; ``lone_s`` is the first (it compiles), the other nine
     reuse its compiled program as ``python -m tbjax.train``'s persistent compile cache would.

   Each of frontier / population starts from cleared JAX and tbjax caches (it pays its compile),
   twice in A B B A order, the faster kept; the lone runs start from cleared caches once.
   ``compile_s_*``: the union of JAX's compile intervals during the job (``track_compiles``).

2. **Points** (``--skip-points`` skips): every point's val / test total return, Sortino, per-bar
   CVaR 5 %, max drawdown and exposure, the val Pareto set and the chosen point, of the default
   frontier (``frontier.*`` of configs/base.yaml) on the shipped sample (data/sample, the shipped
   config with ``train.total_env_steps = --sample-steps`` per member, once per ``--sample-seeds``
   ``train.seed``: 0 and 2 train disjoint seed pairs) and of the test's frontier
   on the tail market (``--tail-steps`` per member). docs/TUNING.md reads the default
   ``ppo.cvar_weight`` off these figures.

``--quick``: a tiny market and network, 2 x 2 points, a few updates (seconds; checks, not claims);
the tail market's points are then the speed part's frontier, and no cache is cleared (the
population reuses the frontier's compiled program: the figures are not comparable).
The machine may be shared: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

RESULTS = common.RESULTS_DIR / "frontier.json"
CONFIG = common.REPO_ROOT / "configs" / "base.yaml"
# the market of tests/run/test_frontier_tail.py and its run (splits, costs, evaluation)
# markets: arguments of tbjax.data.synthetic_dump.write_synthetic_dump, each a python -m tbjax.synth flag
# (crash: the --crash probability, the other Crash settings at their defaults)
TAIL_MARKET = {"symbols": 2, "bars": 12000, "timeframe": "1h", "seed": 2, "regime": "STRONG_TREND", "crash": 0.02}
TAIL_SPLITS = ["data.train_start=2020-01-01", "data.train_end=2020-12-31", "data.val_start=2021-01-01",
               "data.val_end=2021-04-10", "data.test_start=2021-04-15", "data.test_end=null"]
TAIL_WEIGHTS = [0.0, 0.05, 0.15, 0.4, 1.0]
TAIL_RUN = TAIL_SPLITS + [
    "env.episode_len=128", "ppo.n_envs=16", "ppo.n_steps=32", "ppo.n_epochs=2", "ppo.n_minibatches=2",
    "ppo.hidden_sizes=[32]", "ppo.num_quantiles=16", "ppo.learning_rate=1e-3", "train.patience=0",
    "train.ensemble_top_k=2", "eval.w_choppy=0", "eval.w_trend=0", "eval.edge_confidence=0", "eval.regime_bars=200",
    f"frontier.cvar_weight={TAIL_WEIGHTS}", "frontier.seeds=2"]
TINY = ["env.episode_len=32", "ppo.n_envs=8", "ppo.n_steps=16", "ppo.n_epochs=1", "ppo.n_minibatches=2",
        "ppo.hidden_sizes=[16]", "ppo.num_quantiles=8", "ppo.cvar_alpha=0.25", "eval.regime_bars=200"]
QUICK_MARKET = {"symbols": 2, "bars": 1500, "seed": 3, "crash": 0.02}
QUICK_SPLITS = ["data.train_start=2020-01-01", "data.train_end=2020-02-09", "data.val_start=2020-02-10",
                "data.val_end=2020-02-22", "data.test_start=2020-02-23", "data.test_end=null"]
POINT_KEYS = ("total_return", "sortino", "cvar_5", "max_drawdown", "exposure", "turnover")


def fresh_caches() -> None:
    """The next job pays its own compile: JAX's jit caches and tbjax's program caches cleared."""
    import jax

    from tbjax.learner import population
    from tbjax.run import assembly

    jax.clear_caches()
    population._PROGRAMS.clear()
    population._ensemble.cache_clear()
    assembly._TRAINERS.clear()


def synth_command(market: dict) -> str:
    """The ``python -m tbjax.synth`` command that writes ``market``'s raw files."""
    return "python -m tbjax.synth " + " ".join(f"--{key} {value}" for key, value in market.items())


def prepared(root: Path, market: dict) -> Path:
    """``market``'s raw files, then prepared: what ``python -m tbjax.synth`` and ``python -m
    tbjax.prepare`` run; the processed folder."""
    from tbjax.data.prepare import prepare
    from tbjax.data.synthetic import Crash
    from tbjax.data.synthetic_dump import write_synthetic_dump

    settings = dict(market)
    crash = settings.pop("crash", None)
    write_synthetic_dump(root / "raw", crash=None if crash is None else Crash(prob=crash), **settings)
    prepare(root / "raw", root / "processed")
    return root / "processed"


def run_frontier(sets: list[str], run_dir: Path) -> dict:
    from tbjax.run.frontier import frontier_job
    from tbjax.run.job import RunOptions
    from tbjax.run.resume import plan_fresh

    summary = frontier_job(plan_fresh(str(CONFIG), sets, run_dir), {}, command=["benchmarks/frontier.py"],
                           options=RunOptions(quiet=True))
    assert summary is not None
    return summary


def run_train(sets: list[str], run_dir: Path) -> float | None:
    """One ``python -m tbjax.train``-equivalent job; returns its best val objective."""
    import json

    from tbjax.run.job import RunOptions, train_job
    from tbjax.run.resume import plan_fresh

    assert train_job(plan_fresh(str(CONFIG), sets, run_dir), command=["benchmarks/frontier.py"],
                     options=RunOptions(quiet=True)).finished
    return json.loads((run_dir / "eval" / "val.json").read_text())["checkpoint"]["objective"]


def timed(fn, *args) -> tuple[float, float, object]:
    """(wall seconds, JAX compile seconds, result) of ``fn(*args)``."""
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, common.compile_seconds(t0), out


def measure_speed(root: Path, sets: list[str], weights: list[float], seeds: int, repeats: int,
                  fresh: bool = True) -> tuple[dict, dict]:
    """Frontier vs population (ABBA, fastest kept) vs lone runs one by one (module docstring); also the
    first frontier's summary."""
    from tbjax.config import load_config

    cfg = load_config(CONFIG, sets)
    grid_sets = sets + [f"frontier.cvar_weight={weights}", f"frontier.seeds={seeds}"]
    members = len(weights) * seeds
    runs: dict[str, list] = {"frontier": [], "population": []}
    jobs = {"frontier": lambda d: run_frontier(grid_sets, d),
            "population": lambda d: run_train(sets + [f"train.population={members}"], d)}
    for rep in range(repeats):
        for name in (("frontier", "population") if rep % 2 == 0 else ("population", "frontier")):
            if fresh:
                fresh_caches()
            runs[name].append(timed(jobs[name], root / f"{name}{rep}"))
    summary = runs["frontier"][0][2]
    frontier_objectives = [m["val_objective"] for p in summary["points"] for m in p["members"]]
    if fresh:
        fresh_caches()
    lone = []
    for p, w in enumerate(weights):
        for s in range(seeds):
            wall, comp, objective = timed(run_train, sets + ["train.population=1", f"ppo.cvar_weight={w}",
                                                             f"train.seed={cfg.train.seed + s}"], root / f"lone{p}_{s}")
            lone.append({"cvar_weight": w, "seed": cfg.train.seed + s, "wall_s": wall, "compile_s": comp,
                         "val_objective": objective,
                         "frontier_member_val_objective": frontier_objectives[p * seeds + s]})
    (fw, fc, _), (pw, pc, _) = (min(runs[n], key=lambda r: r[0]) for n in ("frontier", "population"))
    sequential = sum(r["wall_s"] for r in lone)
    return {"members": members, "points": len(weights), "seeds": seeds, "updates_per_member": cfg.n_updates,
            "env_steps_per_member": cfg.n_updates * cfg.batch_size,
            "frontier_s": fw, "population_s": pw, "lone_s": lone[0]["wall_s"], "sequential_s": sequential,
            "frontier_over_population": fw / pw, "frontier_over_lone": fw / lone[0]["wall_s"],
            "sequential_over_frontier": sequential / fw, "goal_frontier_over_population": 1.3,
            "compile_s_frontier": fc, "compile_s_population": pc, "compile_s_lone": lone[0]["compile_s"],
            "frontier_s_runs": [r[0] for r in runs["frontier"]],
            "population_s_runs": [r[0] for r in runs["population"]],
            "lone_runs": lone}, summary


def point_rows(summary: dict) -> list[dict]:
    """Each point's settings, val / test figures, Pareto flag and whether it is the chosen one."""
    chosen = (summary.get("chosen") or {}).get("point")
    return [{"point": p["point"], **p["settings"], "val_pareto": p["pareto"]["val"], "chosen": p["point"] == chosen,
             **{f"{split}_{k}": p[split].get(k) for split in ("val", "test") for k in POINT_KEYS}}
            for p in summary["points"]]


def frontier_points(sets: list[str], run_dir: Path, summary: dict | None = None) -> dict:
    """The points part of one frontier (trained here, or ``summary``'s when given)."""
    t0 = time.perf_counter()
    summary = summary or run_frontier(sets, run_dir)
    base = {split: {name: {k: summary["baselines"][split][name].get(k) for k in ("total_return", "cvar_5")}
                    for name in ("buy_and_hold", "flat")} for split in ("val", "test")}
    return {"wall_s": time.perf_counter() - t0, "points": point_rows(summary), "val_pareto": summary["val_pareto"],
            "chosen": summary["chosen"], "test_keeps_val_order": summary["test_keeps_val_order"], "baselines": base}


def show_points(title: str, part: dict) -> None:
    print(f"\n{title} ({part['wall_s']:.0f} s): val Pareto set {part['val_pareto']}, chosen point "
          f"{part['chosen']['point']}")
    common.print_table(part["points"], ["point", "ppo.cvar_weight", "val_total_return", "val_cvar_5", "val_sortino",
                                        "test_total_return", "test_cvar_5", "test_sortino", "val_exposure"])


def with_budget(sets: list[str], env_steps: int, evaluations: int) -> list[str]:
    """``sets`` with ``env_steps`` per member and that many val evaluations (chunks of equal updates)."""
    from tbjax.config import load_config

    updates = max(1, env_steps // load_config(CONFIG, sets).batch_size)
    every = max(1, updates // evaluations)
    return sets + [f"train.total_env_steps={updates * load_config(CONFIG, sets).batch_size}",
                   f"train.updates_per_chunk={every}", f"train.eval_every={every}", "output.tensorboard=false"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny market and network, 2 x 2 points (seconds)")
    ap.add_argument("--updates", type=int, default=None, help="updates per member in the speed part (default 20)")
    ap.add_argument("--repeats", type=int, default=None, help="frontier / population measurements, ABBA (default 2)")
    ap.add_argument("--sample-steps", type=int, default=None,
                    help="env steps per member of the sample's frontier (default 500,000, half the shipped budget)")
    ap.add_argument("--sample-seeds", type=int, nargs="+", default=None,
                    help="train.seed of each sample frontier (default 0 2; quick 0)")
    ap.add_argument("--tail-steps", type=int, default=None, help="env steps per member on the tail market "
                    "(default 204,800: 400 updates, 4x the test's)")
    ap.add_argument("--skip-points", action="store_true", help="only the speed part")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from tbjax.config import load_config

    quick = args.quick
    if quick:  # tiny everything: 2 x 2 points
        market, splits, shape, weights = QUICK_MARKET, QUICK_SPLITS, TINY, [0.0, 1.0]
        tail_run = QUICK_SPLITS + TINY + ["frontier.cvar_weight=[0.0, 1.0]", "frontier.seeds=2"]
        sample_run = TINY + ["frontier.cvar_weight=[0.0, 1.0]"]
        tiny_batch = load_config(CONFIG, TINY).batch_size
        sample_steps, tail_steps, updates, repeats = 2 * tiny_batch, 0, 2, 1
    else:  # the shipped network shape (tbjax.config's ppo defaults) for the speed part
        market, splits, shape, weights = TAIL_MARKET, TAIL_SPLITS, [], TAIL_WEIGHTS
        tail_run, sample_run = TAIL_RUN, []
        sample_steps, tail_steps, updates, repeats = 500_000, 204_800, 20, 2
    sample_steps, tail_steps = args.sample_steps or sample_steps, args.tail_steps or tail_steps
    updates, repeats = args.updates or updates, args.repeats or repeats
    common.track_compiles()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tail = prepared(root / "tail", market)
        speed_sets = [f"data.processed_dir={tail}", *splits, *shape, "train.patience=0"]
        speed_sets = with_budget(speed_sets, updates * load_config(CONFIG, speed_sets).batch_size, 2)
        speed, speed_summary = measure_speed(root / "speed", speed_sets, weights, 2, repeats, fresh=not quick)
        print(f"{speed['members']} members x {speed['updates_per_member']} updates: "
              f"frontier {speed['frontier_s']:.1f} s "
              f"| population {speed['population_s']:.1f} s | one lone run {speed['lone_s']:.1f} s | "
              f"{speed['members']} lone runs one by one {speed['sequential_s']:.1f} s")
        print(f"frontier / population {speed['frontier_over_population']:.2f} (goal <= 1.3) | frontier / lone "
              f"{speed['frontier_over_lone']:.2f} | one by one / frontier {speed['sequential_over_frontier']:.2f}",
              flush=True)
        result = {"device": common.device_string(), "machine": common.machine_info(), "quick": quick, "speed": speed}
        if not args.skip_points:
            result["sample"] = {"config": "configs/base.yaml", "env_steps_per_member": sample_steps, "runs": []}
            for seed in args.sample_seeds or ([0] if quick else [0, 2]):
                sets = sample_run + [f"train.total_env_steps={sample_steps}", f"train.seed={seed}",
                                     "output.tensorboard=false"]
                result["sample"]["runs"].append({"train_seed": seed, **frontier_points(sets, root / f"sample{seed}")})
                show_points(f"shipped sample, default frontier, train.seed {seed}", result["sample"]["runs"][-1])
            tail_sets = with_budget([f"data.processed_dir={tail}", *tail_run], tail_steps, 4)
            result["tail"] = {"market": synth_command(market),
                              "env_steps_per_member": speed["env_steps_per_member"] if quick else tail_steps,
                              **frontier_points(tail_sets, root / "tail_run", speed_summary if quick else None)}
            show_points("planted-tail market, the test's frontier", result["tail"])
    result.update({
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "shared_machine": "measured on a 2-core machine shared with other jobs: wall-clock figures are noisy; "
                          "the ratios come from one run of this script",
        "method": ("end to end through tbjax.run.frontier.frontier_job / tbjax.run.job.train_job in temp folders; "
                   "frontier and population from cleared caches, ABBA, fastest kept; lone runs one by one in one "
                   "process (the first compiles, the others reuse it)"),
    })
    return common.finish(args.out, result, ("jax", "jaxlib", "flax", "optax"))


if __name__ == "__main__":
    sys.exit(main())
