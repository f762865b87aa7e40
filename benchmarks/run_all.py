"""Run every benchmark and collect the figures in benchmarks/results/summary.md (--quick: results/quick/).

Each benchmark runs as its own subprocess (a crash or a hang in one cannot take the others
down; each has a time limit) and writes benchmarks/results/<name>.json. A JSON that was not
rewritten during this run is reported as missing rather than shown with stale figures. The
summary lists the machine (CPU model, cores, JAX backend and devices), the date, the command of
each benchmark, its status and wall time, and every figure from its JSON.

    python benchmarks/run_all.py [--quick] [--only env,train,...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


MAX_TABLE_ROWS = 20  # longer record lists (e.g. learning curves) are shown by their ends


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    script: str
    quick_args: tuple = ("--quick",)
    full_args: tuple = ()
    quick_timeout: float = 240.0
    full_timeout: float = 3600.0
    in_quick: bool = True


BENCHMARKS = (
    Benchmark("env_throughput", "Environment throughput", "env_throughput.py"),
    Benchmark("train_throughput", "Training throughput", "train_throughput.py"),
    Benchmark("hpo_throughput", "HPO throughput", "hpo_throughput.py"),
    Benchmark("prepare_speed", "Data preparation speed", "prepare_speed.py",
              quick_args=("--bars", "100000"), quick_timeout=120.0),
    Benchmark("vs_sb3", "Peer: tbjax vs Stable-Baselines3 (training env-steps/s)", "vs_sb3.py"),
    Benchmark("vs_sb3_recurrent", "Peer: tbjax GRU / LSTM vs sb3-contrib RecurrentPPO (training env-steps/s)",
              "vs_sb3.py", quick_args=("--quick", "--policy", "gru,lstm"), full_args=("--policy", "gru,lstm")),
    Benchmark("learning_speed", "Learning speed: time to 80 % of the oracle Sharpe", "learning_speed.py"),
    Benchmark("walkforward_speed", "Walk-forward: K folds vmapped vs sequential", "walkforward_speed.py"),
    Benchmark("policy_quality", "Policy quality at equal wall-clock: tbjax population vs SB3", "policy_quality.py"),
    Benchmark("frontier", "Risk frontier: 5 x 2 points as one program vs a population, lone runs; its points",
              "frontier.py"),
    Benchmark("scaling", "Scaling over devices", "scaling.py", in_quick=False),
)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short versions of every benchmark")
    p.add_argument("--only", default=None, help="comma-separated benchmark names")
    return p.parse_args(argv)


def run_one(b: Benchmark, quick: bool, results_dir: Path) -> dict:
    """Run one script; status ok / failed / timeout / missing (script absent) / no-json."""
    script = Path(__file__).resolve().parent / b.script
    out = results_dir / f"{b.name}.json"
    args = list(b.quick_args if quick else b.full_args)
    shown = list(args)  # the command as the summary prints it: paths inside the repository relative to it
    if results_dir != common.RESULTS_DIR:
        args += ["--out", str(out)]
        shown += ["--out", common.repo_relative(out)]
    cmd = [sys.executable, str(script), *args]
    record = {"name": b.name, "title": b.title, "command": f"python benchmarks/{b.script} {' '.join(shown)}".strip()}
    if not script.is_file():
        return {**record, "status": "missing", "detail": f"{script.name} not found", "seconds": 0.0}
    before = out.stat().st_mtime if out.is_file() else None
    t0 = time.perf_counter()
    print(f"== {b.name}: {record['command']}", flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=b.quick_timeout if quick else b.full_timeout)
        status = "ok" if proc.returncode == 0 else "failed"
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    except subprocess.TimeoutExpired as exc:
        status, tail = "timeout", [f"killed after {exc.timeout:.0f} s"]
    seconds = time.perf_counter() - t0
    print("\n".join("   " + line for line in tail), flush=True)
    fresh = out.is_file() and (before is None or out.stat().st_mtime > before)
    data = None
    if fresh:
        try:
            data = json.loads(out.read_text())
        except json.JSONDecodeError as exc:
            status, tail = "failed", [f"invalid JSON in {out.name}: {exc}"]
    elif status == "ok":
        status, tail = "no-json", [f"exited 0 but did not write {out.name}"]
    return {**record, "status": status, "seconds": seconds, "data": data,
            "detail": "" if status == "ok" else " | ".join(tail[-3:])}


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e3 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    return str(v).replace("|", "/")


def _flatten(obj, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, scalar) pairs of a JSON object; lists of objects are rendered as tables."""
    out = []
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            continue
        elif isinstance(v, list):
            out.append((key, ", ".join(_fmt(x) for x in v) if len(v) <= 12 else f"[{len(v)} values]"))
        else:
            out.append((key, v))
    return out


def _tables(obj, prefix: str = "") -> list[tuple[str, list[dict]]]:
    found = []
    for k, v in obj.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            found.append((prefix + k, v))
        elif isinstance(v, dict):
            found.extend(_tables(v, prefix + k + "."))
    return found


def render_figures(data: dict) -> list[str]:
    """Every scalar as a bullet, every list of records as a Markdown table (nested lists summarised)."""
    lines = [f"- `{k}`: {_fmt(v)}" for k, v in _flatten(data)]
    for name, rows in _tables(data):
        cols = list(dict.fromkeys(c for r in rows for c, v in r.items() if not isinstance(v, (dict, list))))
        lines += ["", f"`{name}`:", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        shown = rows if len(rows) <= MAX_TABLE_ROWS else rows[:5] + [{c: "…" for c in cols}] + rows[-5:]
        lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in shown]
        if len(rows) > MAX_TABLE_ROWS:
            lines.append(f"({len(rows)} rows; first and last 5 shown, all in the JSON)")
    return lines


def write_summary(records: list[dict], quick: bool, path: Path) -> str:
    m = common.machine_info()
    lines = [
        f"# tbjax benchmark summary{' (quick)' if quick else ''}",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {m['cpu_model']}, {m['cpu_cores']} cores",
        f"- JAX backend: {m['jax_backend']}, devices: {', '.join(m['jax_devices'])}",
        f"- platform: {m['platform']}, Python {m['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in common.versions(
            "jax", "jaxlib", "flax", "optax", "optuna", "stable_baselines3", "torch").items() if v),
        "",
        "| benchmark | status | wall s | command |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['status']} | {r['seconds']:.0f} | `{r['command']}` |" for r in records]
    for r in records:
        lines += ["", f"## {r['title']}", ""]
        if r["status"] != "ok":
            lines.append(f"**{r['status']}**: {r['detail']}")
        if r.get("data"):
            lines += render_figures(r["data"])
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    # quick figures go to results/quick/ so they never overwrite the full run's JSON
    results_dir = common.RESULTS_DIR / "quick" if args.quick else common.RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    chosen = [b for b in BENCHMARKS if (only is None or b.name in only) and (b.in_quick or not args.quick
                                                                             or only is not None)]
    t0 = time.perf_counter()
    records = [run_one(b, args.quick, results_dir) for b in chosen]
    write_summary(records, args.quick, results_dir / "summary.md")
    print(f"\n{'benchmark':<18} {'status':<8} {'wall s':>7}")
    for r in records:
        print(f"{r['name']:<18} {r['status']:<8} {r['seconds']:>7.0f}")
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {results_dir / 'summary.md'}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
