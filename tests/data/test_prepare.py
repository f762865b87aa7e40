"""python -m tbjax.prepare end to end: outputs, tradable mask, repairs, bad input, sample data."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.feather as pa_feather
import pytest

from tbjax.cli import prepare
from tbjax.data import features, hashing, klines, tables
from tbjax.errors import InputError

REPO = Path(__file__).resolve().parents[2]
HOUR = 3_600_000
DAY = 24 * HOUR
MONDAY = 1_704_067_200_000  # 2024-01-01T00:00Z, a Monday
WARMUP = features.warmup_bars(32)  # 52


def hourly_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """n hourly bars from Monday 2024-01-01 00:00 UTC, a seeded random walk with valid OHLC."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    spread = np.abs(rng.normal(0.0, 0.005, n)) * close
    return pd.DataFrame({
        "timestamp": MONDAY + np.arange(n) * HOUR, "open": open_,
        "high": np.maximum(open_, close) + spread, "low": np.minimum(open_, close) - spread,
        "close": close, "volume": rng.uniform(1.0, 2.0, n),
    })


def run(argv, capsys):
    code = prepare.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_failure(argv, capsys, out_dir, *needles):
    """Exit 2, one 'error:' line naming what is wrong, no traceback, nothing written to --out."""
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not Path(out_dir).exists() or not any(Path(out_dir).iterdir())


def test_tradable_mask_by_hand():
    open_time = MONDAY + np.array([0, 1, 2, 5, 6, 7, 24, 25]) * HOUR  # gaps before 5 h and 24 h
    volume = np.array([1.0, 1, 0, 1, 1, 1, 1, 1])
    windows = [tables.parse_no_trade_window("06:00-07:30"), tables.parse_no_trade_window("23:30-00:30")]
    got = tables.tradable_mask(open_time, volume, HOUR, windows)
    #                 00:00 (wrap window), 01, 02 zero vol, 05 gap, 06 window, 07 window, 00 gap, 01
    expected = np.array([False, True, False, False, False, False, False, True])
    np.testing.assert_array_equal(got, expected)


def test_exchange_daily_calendar_does_not_flag_weekends():
    weekdays = MONDAY + np.array([d for d in range(21) if d % 7 < 5]) * DAY  # three Mon-Fri weeks
    assert tables.is_exchange_daily(weekdays, DAY)
    assert not tables.after_gap(weekdays, DAY).any()
    no_tuesday_to_friday = weekdays[~np.isin(weekdays, MONDAY + np.array([8, 9, 10, 11]) * DAY)]
    flags = tables.after_gap(no_tuesday_to_friday, DAY)  # Mon 7 -> Mon 14: 7 days > 4
    assert flags.sum() == 1 and no_tuesday_to_friday[flags][0] == MONDAY + 14 * DAY
    every_day = MONDAY + np.array([0, 1, 2, 4, 5]) * DAY  # 24/7 daily with day 3 missing
    assert not tables.is_exchange_daily(every_day, DAY)
    np.testing.assert_array_equal(tables.after_gap(every_day, DAY), [0, 0, 0, 1, 0])


def test_timeframe_parse_and_format():
    assert tables.parse_timeframe("4h") == 4 * HOUR and tables.parse_timeframe("15m") == 900_000
    assert tables.format_timeframe(DAY) == "1d" and tables.format_timeframe(5_400_000) == "90m"


def test_prepare_writes_tables_tradable_and_side_features(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    frame = hourly_frame(75)
    frame.loc[65, "volume"] = 0.0
    frame.drop(index=[60, 61]).to_csv(raw / "btcusdt.csv", index=False)
    fg_times = MONDAY + np.arange(4) * DAY
    pd.DataFrame({"timestamp": fg_times // 1000, "value": [10, 20, 30, 40]}).to_csv(
        tmp_path / "fg.csv", index=False)
    code, stdout, _ = run(["--raw-dir", raw, "--out", out, "--fear-greed", tmp_path / "fg.csv",
                           "--no-trade-window", "05:00-06:00", "23:30-00:30"], capsys)
    assert code == 0
    assert stdout.startswith("BTCUSDT: 73 raw rows -> 73 clean") and "1 gap(s)" in stdout
    written = pa_feather.read_table(out / "BTCUSDT.feather").to_pandas()
    kept = np.array([i for i in range(WARMUP, 75) if i not in (60, 61)])
    np.testing.assert_array_equal(written["open_time"], MONDAY + kept * HOUR)
    # untradable: 53 = day 2 05:00 (window), 62 first after the gap, 65 zero volume, 72 = day 3 00:00
    np.testing.assert_array_equal(written["tradable"], ~np.isin(kept, [53, 62, 65, 72]))
    # decision time = close: the 23:00 bar of day 2 (index 71) already sees day 3's value.
    fg_expected = np.where(kept + 1 >= 72, 0.40, 0.30).astype(np.float32)
    np.testing.assert_array_equal(written["fear_greed"], fg_expected)
    bars, _ = klines.clean_bars(klines.read_klines(raw / "btcusdt.csv"))
    for name, values in features.compute_features(bars).items():
        np.testing.assert_array_equal(written[name].to_numpy(), values[WARMUP:])
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["symbols"]["BTCUSDT"]
    assert (entry["rows_raw"], entry["rows_clean"], entry["rows_written"]) == (73, 73, 21)
    assert entry["gaps"] == 1 and entry["untradable_written"] == 4
    assert manifest["timeframe"] == "1h" and manifest["warmup_bars"] == WARMUP
    assert manifest["feature_names"][-1] == "fear_greed"
    assert manifest["side_data"]["fear_greed"]["file"] == "fg.csv"
    assert entry["input_sha256"] == hashing.file_sha256(raw / "btcusdt.csv")
    assert sorted(p.name for p in out.iterdir()) == ["BTCUSDT.feather", "manifest.json"]


def test_unsorted_duplicate_and_bad_price_rows_are_repaired_with_counts(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    frame = hourly_frame(70)
    frame.loc[[10, 11], "open"] = [0.0, -3.0]
    shuffled = pd.concat([frame.iloc[40:], frame.iloc[:40], frame.iloc[[5, 6, 7]]])
    shuffled.to_csv(raw / "ETH.csv", index=False)
    code, stdout, _ = run(["--raw-dir", raw, "--out", out], capsys)
    assert code == 0
    assert "73 raw rows -> 68 clean (sorted 2 out-of-order, dropped 3 duplicate, 2 bad-price" in stdout
    entry = json.loads((out / "manifest.json").read_text())["symbols"]["ETH"]
    assert (entry["unsorted_steps"], entry["duplicates_dropped"], entry["bad_price_dropped"]) == (2, 3, 2)
    written = pa_feather.read_table(out / "ETH.feather")["open_time"].to_numpy()
    assert np.all(np.diff(written) > 0) and len(written) == 68 - WARMUP


@pytest.fixture
def raw_dir(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    hourly_frame(70).to_csv(raw / "GOOD.csv", index=False)
    return raw


def test_missing_and_empty_raw_dir(tmp_path, capsys):
    out = tmp_path / "out"
    assert_clean_failure(["--raw-dir", tmp_path / "nope", "--out", out], capsys, out,
                         "nope does not exist", "--raw-dir")
    (tmp_path / "empty").mkdir()
    assert_clean_failure(["--raw-dir", tmp_path / "empty", "--out", out], capsys, out,
                         "holds no kline files")


def test_corrupt_file_leaves_no_outputs(raw_dir, tmp_path, capsys):
    (raw_dir / "BAD.parquet").write_bytes(b"\x00garbage")
    out = tmp_path / "out"
    assert_clean_failure(["--raw-dir", raw_dir, "--out", out], capsys, out, "BAD.parquet")


def test_missing_ohlc_and_all_nan_columns(raw_dir, tmp_path, capsys):
    out = tmp_path / "out"
    hourly_frame(70).drop(columns="high").to_csv(raw_dir / "NOHIGH.csv", index=False)
    assert_clean_failure(["--raw-dir", raw_dir, "--out", out], capsys, out, "NOHIGH.csv",
                         "missing column(s) high")
    (raw_dir / "NOHIGH.csv").unlink()
    hourly_frame(70).assign(low=np.nan).to_csv(raw_dir / "NANLOW.csv", index=False)
    assert_clean_failure(["--raw-dir", raw_dir, "--out", out], capsys, out, "NANLOW.csv",
                         "column 'low'")


def test_too_few_rows_for_warmup(raw_dir, tmp_path, capsys):
    hourly_frame(40).to_csv(raw_dir / "SHORT.csv", index=False)
    out = tmp_path / "out"
    assert_clean_failure(["--raw-dir", raw_dir, "--out", out], capsys, out,
                         "symbol SHORT", "40 clean rows", f"at least {WARMUP + 1}", "--window-size")


def test_side_data_with_bad_schema(raw_dir, tmp_path, capsys):
    pd.DataFrame({"timestamp": [MONDAY], "greed": [50]}).to_csv(tmp_path / "fg.csv", index=False)
    out = tmp_path / "out"
    assert_clean_failure(["--raw-dir", raw_dir, "--out", out, "--fear-greed", tmp_path / "fg.csv"],
                         capsys, out, "fg.csv", "'value'")
    pd.DataFrame({"timestamp": [MONDAY], "importance": ["big"]}).to_csv(tmp_path / "ev.csv",
                                                                         index=False)
    assert_clean_failure(["--raw-dir", raw_dir, "--out", out, "--events", tmp_path / "ev.csv"],
                         capsys, out, "ev.csv", "'big'")


def test_bad_arguments(raw_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert_clean_failure(["--raw-dir", raw_dir], capsys, out, "--out")
    assert_clean_failure(["--raw-dir", raw_dir, "--out", out, "--timeframe", "1d"], capsys, out,
                         "--timeframe 1d", "GOOD", "1h")
    assert_clean_failure(["--raw-dir", raw_dir, "--out", out, "--no-trade-window", "25:00-01:00"],
                         capsys, out, "25:00-01:00", "HH:MM-HH:MM")
    assert_clean_failure(["--raw-dir", raw_dir, "--out", raw_dir], capsys, tmp_path / "none",
                         "raw directory")


def test_shipped_sample_data_is_reproduced(tmp_path, capsys):
    shipped = REPO / "data" / "sample" / "processed"
    code, stdout, _ = run(["--raw-dir", REPO / "data" / "sample" / "raw", "--out", tmp_path], capsys)
    assert code == 0 and stdout.count("\n") == 5  # one line per symbol + the final line
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in shipped.iterdir())
    assert json.loads((tmp_path / "manifest.json").read_text()) == json.loads(
        (shipped / "manifest.json").read_text())
    for symbol in ("AAPL", "GOOG", "IBM", "MSFT"):
        fresh = pa_feather.read_table(tmp_path / f"{symbol}.feather")
        kept = pa_feather.read_table(shipped / f"{symbol}.feather")
        assert fresh.schema.equals(kept.schema)
        for name in fresh.column_names:
            np.testing.assert_array_equal(fresh[name].to_numpy(), kept[name].to_numpy(), err_msg=name)


def test_speed_benchmark_runs(tmp_path):
    import subprocess
    import sys

    results = tmp_path / "prepare_speed.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "prepare_speed.py"),
                           "--bars", "3000", "--results", str(results)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    measured = json.loads(results.read_text())
    assert measured["device"] == "cpu" and measured["bars"] == 3000
    assert measured["raw_table_mb"] == round(3000 * 12 * 8 / 2**20, 1)
    assert measured["seconds"] > 0 and measured["peak_memory_mb"] >= 0


def test_failure_after_first_table_leaves_no_temp_or_partial_files(tmp_path, capsys, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    out.mkdir()
    (out / "OLD.txt").write_text("kept")
    hourly_frame(70, seed=1).to_csv(raw / "AAA.csv", index=False)
    hourly_frame(70, seed=2).to_csv(raw / "BBB.csv", index=False)
    real = features.compute_features
    calls = []

    def failing_on_second(bars):
        calls.append(1)
        if len(calls) == 2:
            raise InputError("BBB: simulated feature failure; fix the input")
        return real(bars)

    monkeypatch.setattr(features, "compute_features", failing_on_second)
    code, _, err = run(["--raw-dir", raw, "--out", out], capsys)
    assert code == 2 and err == "error: BBB: simulated feature failure; fix the input\n"
    assert sorted(p.name for p in out.iterdir()) == ["OLD.txt"]  # no temp, no AAA.feather


def test_mixed_timeframe_signs_and_no_false_alarms():
    hourly = MONDAY + np.arange(100) * HOUR
    assert tables.mixed_timeframe(hourly, HOUR) is None
    with_gaps = np.delete(hourly, [10, 11, 12, 50, 70, 71])  # missing bars are gaps, not a timeframe
    assert tables.mixed_timeframe(with_gaps, HOUR) is None
    weekdays = MONDAY + np.array([d for d in range(200) if d % 7 < 5]) * DAY
    assert tables.mixed_timeframe(weekdays, DAY) is None  # weekends: 3-day steps, never 24 in a row
    local_midnight = MONDAY + np.arange(60) * DAY + np.where(np.arange(60) < 30, 0, -HOUR)
    assert tables.mixed_timeframe(local_midnight, DAY) is None  # one 23 h step at a DST change
    then_4h = np.r_[hourly, hourly[-1] + np.arange(1, 31) * 4 * HOUR]
    assert tables.mixed_timeframe(then_4h, HOUR) == {"kind": "run", "first": 99, "last": 129,
                                                     "step_ms": 4 * HOUR}
    short_4h = np.r_[hourly, hourly[-1] + np.arange(1, 24) * 4 * HOUR]  # 23 steps: just gaps
    assert tables.mixed_timeframe(short_4h, HOUR) is None
    daily = MONDAY + np.arange(50) * DAY
    inserted = np.sort(np.r_[daily, daily[20] + 6 * HOUR])
    assert tables.mixed_timeframe(inserted, DAY) == {"kind": "overlap", "first": 20, "last": 21,
                                                     "step_ms": 6 * HOUR}
