"""Benchmark ``tbjax.prepare`` on one symbol of N hourly Binance-style bars (default 1,000,000).

Measures the whole run (CSV reading, cleaning, all features, Fear & Greed and event side
features, tradable mask, feather + manifest writing) in a fresh child process, so the figures
are not polluted by generating the input. Peak memory is the child's ru_maxrss after the run
minus ru_maxrss after its imports, compared with the raw table as read (12 numeric columns x
8 bytes x N). Goals: < 10 s and < 3x the raw table.

    python benchmarks/prepare_speed.py [--bars N] [--results PATH]

Writes benchmarks/results/prepare_speed.json:
{"device": "cpu", "bars", "seconds", "peak_memory_mb", "raw_table_mb", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOUR_MS = 3_600_000
START_MS = 1_577_836_800_000  # 2020-01-01T00:00Z


def write_inputs(folder: Path, n_bars: int, seed: int = 0) -> Path:
    """Header-less Binance kline CSV (12 columns) plus daily Fear & Greed and an events file."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(seed)
    close = 30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.006, n_bars)))
    open_ = np.concatenate([[30_000.0], close[:-1]])
    wick = np.abs(rng.normal(0.0, 0.002, n_bars)) * close
    volume = rng.gamma(2.0, 50.0, n_bars)
    open_time = START_MS + np.arange(n_bars, dtype=np.int64) * HOUR_MS
    taker = volume * rng.uniform(0.3, 0.7, n_bars)
    columns = {
        "open_time": open_time, "open": open_.round(2), "high": (np.maximum(open_, close) + wick).round(2),
        "low": (np.minimum(open_, close) - wick).round(2), "close": close.round(2),
        "volume": volume.round(5), "close_time": open_time + HOUR_MS - 1,
        "quote_volume": (volume * close).round(2), "n_trades": rng.integers(100, 5000, n_bars),
        "taker_buy_base": taker.round(5), "taker_buy_quote": (taker * close).round(2),
        "ignore": np.zeros(n_bars, dtype=np.int64),
    }
    raw = folder / "raw"
    raw.mkdir()
    pa_csv.write_csv(pa.table(columns), raw / "BTCUSDT.csv",
                     pa_csv.WriteOptions(include_header=False))
    days = np.arange(START_MS, open_time[-1] + HOUR_MS, 24 * HOUR_MS)
    pa_csv.write_csv(pa.table({"timestamp": days // 1000,
                               "value": rng.integers(0, 101, len(days))}), folder / "fg.csv")
    events = START_MS + np.sort(rng.choice(n_bars, size=max(1, n_bars // 200), replace=False)) * HOUR_MS
    pa_csv.write_csv(pa.table({"timestamp": events, "importance": rng.integers(1, 4, len(events))}),
                     folder / "events.csv")
    return raw


def child(folder: Path) -> None:
    """Run prepare once in this (fresh) process and print seconds and the peak-RSS increase."""
    from tbjax.data.prepare import prepare

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    prepare(folder / "raw", folder / "out", fear_greed=str(folder / "fg.csv"), latest="2200-01-01",
            events=str(folder / "events.csv"), no_trade_windows=["00:00-00:05"], log=lambda line: None)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_kib": peak - base}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--out", "--results", dest="results", default=str(REPO / "benchmarks/results/prepare_speed.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child))
        return 0
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        raw = write_inputs(folder, args.bars)
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        done = subprocess.run([sys.executable, __file__, "--child", str(folder)], env=env,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        csv_mb = (raw / "BTCUSDT.csv").stat().st_size / 2**20
    raw_table_mb = args.bars * 12 * 8 / 2**20
    result = {
        "device": "cpu", "bars": args.bars, "seconds": round(measured["seconds"], 3),
        "peak_memory_mb": round(measured["peak_kib"] / 1024, 1),
        "raw_table_mb": round(raw_table_mb, 1), "csv_file_mb": round(csv_mb, 1),
        "memory_ratio": round(measured["peak_kib"] / 1024 / raw_table_mb, 2),
        "goal": "< 10 s and < 3x raw table", "cpu_count": os.cpu_count(),
    }
    print(f"prepare {args.bars:,} hourly bars (CSV {csv_mb:.0f} MB, raw table {raw_table_mb:.0f} MB): "
          f"{result['seconds']:.2f} s, peak +{result['peak_memory_mb']:.0f} MB "
          f"({result['memory_ratio']:.2f}x raw table)")
    # Imported only now, after the child finished: the child never loads it (its baseline memory stays
    # what it was) and the parent's import does not compete with the measured run for the CPU.
    sys.path.insert(0, str(REPO))
    from benchmarks import common

    common.write_json(args.results, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
