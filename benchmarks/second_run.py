"""The Quickstart's second run against its first: what JAX's persistent compilation cache saves.

    python benchmarks/second_run.py [--quick] [--repeats 2] [--out benchmarks/results/second_run.json]

Runs the README's main job, ``python -m tbjax.train --config configs/base.yaml --quiet``, as a
user does (a fresh process each time, the shipped data), in pairs on one machine:

* ``cold``: an empty cache folder (``JAX_COMPILATION_CACHE_DIR``), so every program is compiled
  and written to it — a first run on a new machine;
* ``warm``: the same command again with the folder the cold run filled — a second run.

Each pair uses a new folder; pairs alternate order-wise (cold, warm, cold, warm) so a machine
that slows down mid-benchmark hurts both sides. Reported per mode: every run's wall time, the
fastest, and the saving warm vs cold. ``cache_entries`` counts the programs the cold run wrote
(the warm run must add none: the same programs, the same keys). ``--quick`` trains a tenth of
the steps (the compile share is then larger).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICK_STEPS = 51_200  # a tenth of configs/base.yaml's train.total_env_steps


def run_once(cache: Path, run_dir: Path, extra: list[str]) -> float:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
           "JAX_COMPILATION_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tbjax.train", "--config", "configs/base.yaml", "--run-dir", str(run_dir),
           "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"second_run: the train command failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall


def entries(cache: Path) -> int:
    return sum(1 for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="cold/warm pairs")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "second_run.json"))
    args = ap.parse_args(argv)
    extra = ["--set", f"train.total_env_steps={QUICK_STEPS}"] if args.quick else []
    runs = {"cold": [], "warm": []}
    cache_entries, added_by_warm = [], []
    with tempfile.TemporaryDirectory(prefix="tbjax-second-run-") as tmp:
        for r in range(args.repeats):
            cache = Path(tmp) / f"cache{r}"
            runs["cold"].append(run_once(cache, Path(tmp) / f"cold{r}", extra))
            cache_entries.append(entries(cache))
            runs["warm"].append(run_once(cache, Path(tmp) / f"warm{r}", extra))
            added_by_warm.append(entries(cache) - cache_entries[-1])
            print(f"pair {r}: cold {runs['cold'][-1]:.1f} s, warm {runs['warm'][-1]:.1f} s, "
                  f"{cache_entries[-1]} cached programs, {added_by_warm[-1]} added by the warm run", flush=True)
    cold, warm = min(runs["cold"]), min(runs["warm"])
    doc = {"machine": common.machine_info(), "command": "python -m tbjax.train --config configs/base.yaml --quiet",
           "quick": args.quick, "cold_s": cold, "warm_s": warm, "saved_s": cold - warm, "speedup": cold / warm,
           "cold_s_runs": runs["cold"], "warm_s_runs": runs["warm"], "cache_entries": cache_entries,
           "entries_added_by_warm": added_by_warm}
    common.print_table([{"mode": m, "best_s": min(v), "runs": ", ".join(f"{x:.1f}" for x in v)}
                        for m, v in runs.items()], ["mode", "best_s", "runs"])
    print(f"second run: {warm:.1f} s vs first {cold:.1f} s ({cold / warm:.2f}x, {cold - warm:.1f} s saved)")
    common.write_json(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
