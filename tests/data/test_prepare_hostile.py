"""Hostile inputs to python -m tbjax.prepare and to training's reader of its output.

Each case either parses to the hand-computed numbers or stops with exit 2 and one line naming the
file, the data row and the fix, with nothing written to --out. Also: re-runs remove stale tables,
training reads only what manifest.json lists, and a full disk leaves no partial file.
"""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.feather as pa_feather
import pytest

from tbjax.cli import prepare
from tbjax.data import features, tables
from tbjax.errors import InputError

HOUR = 3_600_000
DAY = 24 * HOUR
MONDAY = 1_704_067_200_000  # 2024-01-01T00:00Z
WARMUP = features.warmup_bars(32)  # 52
N = 80  # bars per hand-made file: WARMUP + 28 written


def bars(n: int = N, times=None) -> pd.DataFrame:
    """n hourly bars with round numbers: open = 1000 + i + 0.25, close = open + 0.5, volume 10 + i."""
    i = np.arange(n)
    open_ = 1000.0 + i + 0.25
    return pd.DataFrame({
        "timestamp": MONDAY + i * HOUR if times is None else times, "open": open_,
        "high": open_ + 2.0, "low": open_ - 2.0, "close": open_ + 0.5, "volume": 10.0 + i,
    })


def run(argv, capsys):
    code = prepare.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listing(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones included) with its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(raw: Path, out: Path, capsys, *needles, extra=()):
    """Exit 2, exactly one 'error:' line containing every needle, no traceback, --out unchanged."""
    before = listing(out)
    code, _, err = run(["--raw-dir", raw, "--out", out, *extra], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert listing(out) == before
    return err


@pytest.fixture
def raw(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    return folder


# ----------------------------------------------------------------------------- numbers


def test_semicolon_file_with_decimal_commas_reads_the_right_numbers(raw, tmp_path, capsys):
    frame = bars()
    lines = ["date;open;high;low;close;volume"]
    for row in frame.itertuples():
        stamp = pd.Timestamp(row.timestamp, unit="ms").strftime("%Y-%m-%d %H:%M:%S")
        cells = [f"{v:.2f}".replace(".", ",") for v in (row.open, row.high, row.low, row.close)]
        lines.append(";".join([stamp, *cells, f"{row.volume:.0f}"]))
    (raw / "EUR.csv").write_text("\n".join(lines) + "\n")
    assert lines[1] == "2024-01-01 00:00:00;1000,25;1002,25;998,25;1000,75;10"
    code, _, err = run(["--raw-dir", raw, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    written = pa_feather.read_table(tmp_path / "out" / "EUR.feather").to_pandas()
    i = np.arange(WARMUP, N)
    np.testing.assert_array_equal(written["open_time"], MONDAY + i * HOUR)
    np.testing.assert_array_equal(written["open"], 1000.25 + i)
    np.testing.assert_array_equal(written["close"], 1000.75 + i)
    np.testing.assert_array_equal(written["volume"], 10.0 + i)


def test_tab_separated_file_reads_like_the_comma_file(raw, tmp_path, capsys):
    bars().to_csv(raw / "TAB.csv", index=False, sep="\t")
    (tmp_path / "raw2").mkdir()
    bars().to_csv(tmp_path / "raw2" / "TAB.csv", index=False)
    assert run(["--raw-dir", raw, "--out", tmp_path / "a"], capsys)[0] == 0
    assert run(["--raw-dir", tmp_path / "raw2", "--out", tmp_path / "b"], capsys)[0] == 0
    assert (tmp_path / "a" / "TAB.feather").read_bytes() == (tmp_path / "b" / "TAB.feather").read_bytes()


def test_thousands_separator_is_refused_with_row_and_fix(raw, tmp_path, capsys):
    text = bars().to_csv(index=False).splitlines()
    cells = text[5].split(",")
    cells[1] = '"1,004.25"'  # data row 5 (i = 4): open 1004.25 with a thousands separator
    text[5] = ",".join(cells)
    (raw / "US.csv").write_text("\n".join(text) + "\n")
    assert_refused(raw, tmp_path / "out", capsys, "US.csv", "column 'open'", "data row 5",
                   "'1,004.25'", "thousands separator", "without digit grouping")


def test_unquoted_digit_grouping_comma_is_refused_with_line_and_field_counts(raw, tmp_path, capsys):
    # unquoted, "1,004.25" is two fields: the row's open would read 1 and its high 4.25, every later
    # value one column left of its name (volume = the close), the real volume dropped, and prepare
    # reported only "repaired high/low"
    text = bars().to_csv(index=False).splitlines()
    text[5] = text[5].replace(",1004.25,", ",1,004.25,", 1)  # line 6 of the file (header = line 1)
    assert text[5].count(",") == 6
    (raw / "US.csv").write_text("\n".join(text) + "\n")
    assert_refused(raw, tmp_path / "out", capsys, "US.csv", "line 6:", "7 fields where the header (line 1) has 6",
                   repr(text[5]), "digit-grouping comma", "without digit grouping", "quote such values")


def test_rows_cut_short_are_refused_with_the_first_line_and_a_count(raw, tmp_path, capsys):
    text = bars().to_csv(index=False).splitlines()
    text[40] = ",".join(text[40].split(",")[:4])   # line 41: the close and volume are missing
    text[-1] = ",".join(text[-1].split(",")[:3])   # the last line, cut by an interrupted download
    (raw / "CUT.csv").write_text("\n".join(text) + "\n")
    assert_refused(raw, tmp_path / "out", capsys, "CUT.csv", "line 41:", "4 fields where the header (line 1) has 6",
                   "(1 more row(s) with a wrong number of fields)", "cut short", "delete the line")


@pytest.mark.parametrize("every", [3, 1])  # some rows / every row (a spreadsheet's trailing separators)
def test_trailing_empty_fields_are_dropped_and_counted(raw, tmp_path, capsys, every):
    text = bars().to_csv(index=False).splitlines()
    rows = [line + ",," if k % every == 0 else line for k, line in enumerate(text[1:])]
    (raw / "XL.csv").write_text("\n".join([text[0], *rows]) + "\n")
    code, out, err = run(["--raw-dir", raw, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    counted = N // every + (N % every > 0)  # data rows k = 0, every, 2 every, ... < N: 27 or 80
    assert f"dropped the empty fields after the header's last column on {counted} row(s)" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["symbols"]["XL"]["trailing_empty_fields_rows"] == counted
    written = pa_feather.read_table(tmp_path / "out" / "XL.feather").to_pandas()
    i = np.arange(WARMUP, N)  # the values are the hand-made ones, in their own columns
    np.testing.assert_array_equal(written["open_time"], MONDAY + i * HOUR)
    np.testing.assert_array_equal(written["open"], 1000.25 + i)
    np.testing.assert_array_equal(written["high"], 1002.25 + i)
    np.testing.assert_array_equal(written["close"], 1000.75 + i)
    np.testing.assert_array_equal(written["volume"], 10.0 + i)
    assert "high_low_repaired" in manifest["symbols"]["XL"] and manifest["symbols"]["XL"]["high_low_repaired"] == 0


def test_decimal_comma_in_a_comma_separated_file_is_refused(raw, tmp_path, capsys):
    text = bars().to_csv(index=False).splitlines()
    cells = text[3].split(",")
    cells[4] = '"1002,75"'  # data row 3 (i = 2): close 1002.75 with a decimal comma
    text[3] = ",".join(cells)
    (raw / "DE.csv").write_text("\n".join(text) + "\n")
    assert_refused(raw, tmp_path / "out", capsys, "DE.csv", "column 'close'", "data row 3",
                   "decimal comma", "';' between fields")


def test_semicolon_file_mixing_decimal_marks_is_refused(raw, tmp_path, capsys):
    lines = ["timestamp;open;high;low;close;volume"]
    for row in bars().itertuples():
        cells = [f"{v:.2f}".replace(".", ",") for v in (row.open, row.high, row.low, row.close)]
        lines.append(";".join([str(row.timestamp), *cells, "1"]))
    lines[7] = lines[7].replace("1006,75", "1006.75")  # data row 7 (i = 6): close with a '.'
    (raw / "MIX.csv").write_text("\n".join(lines) + "\n")
    assert_refused(raw, tmp_path / "out", capsys, "MIX.csv", "column 'close'", "data row 7",
                   "'1006.75'", "uses '.' as the decimal mark", "one decimal mark")


def test_ambiguous_comma_is_refused_not_guessed(raw, tmp_path, capsys):
    lines = ["timestamp;open;high;low;close;volume"]
    for k in range(N):
        lines.append(f"{MONDAY + k * HOUR};1,{k + 100:03d};1,{k + 200:03d};1,{k:03d};1,{k + 100:03d};5")
    (raw / "AMB.csv").write_text("\n".join(lines) + "\n")
    assert_refused(raw, tmp_path / "out", capsys, "AMB.csv", "data row 1", "'1,100'",
                   "decimal comma or a thousands separator", "'.' as the decimal mark")


# ----------------------------------------------------------------------------- times


def test_seconds_among_milliseconds_are_refused(raw, tmp_path, capsys):
    frame = bars()
    frame.loc[30, "timestamp"] = (MONDAY + 30 * HOUR) // 1000  # data row 31 in seconds
    frame.to_csv(raw / "UNITS.csv", index=False)
    assert_refused(raw, tmp_path / "out", capsys, "UNITS.csv", "column 'timestamp'", "data row 31",
                   "epoch seconds", "most of the column is epoch milliseconds",
                   "convert the column to one unit")


def test_far_future_and_placeholder_times_are_refused(raw, tmp_path, capsys):
    frame = bars()
    frame.loc[10, "timestamp"] = MONDAY + 10 * HOUR + 500 * 365 * DAY  # a typo: year ~2523
    frame.to_csv(raw / "FUT.csv", index=False)
    assert_refused(raw, tmp_path / "out", capsys, "FUT.csv", "data row 11", "now + 1 year",
                   "--latest")
    frame = bars()
    frame.loc[0, "timestamp"] = 0
    frame.to_csv(raw / "FUT.csv", index=False)
    assert_refused(raw, tmp_path / "out", capsys, "FUT.csv", "data row 1", "1970-01-01",
                   "before 1990-01-01", "--earliest")


def test_pre_1990_history_needs_earliest_and_then_parses(raw, tmp_path, capsys):
    days = pd.date_range("1985-01-01", periods=N, freq="D")
    frame = bars().assign(timestamp=days.strftime("%Y-%m-%d"))
    frame.to_csv(raw / "OLD.csv", index=False)
    assert_refused(raw, tmp_path / "out", capsys, "OLD.csv", "column 'timestamp'", "data row 1",
                   "'1985-01-01'", "--earliest")
    code, _, err = run(["--raw-dir", raw, "--out", tmp_path / "out", "--earliest", "1980-01-01"],
                       capsys)
    assert code == 0, err
    written = pa_feather.read_table(tmp_path / "out" / "OLD.feather")["open_time"].to_numpy()
    assert written[0] == 473_385_600_000 + WARMUP * DAY  # 1985-01-01T00:00Z + 52 days
    assert run(["--raw-dir", raw, "--out", tmp_path / "x", "--earliest", "soon"], capsys)[2] \
        .startswith("error: --earliest 'soon' is not a date")


def test_hourly_then_4h_bars_are_refused(raw, tmp_path, capsys):
    times = np.r_[MONDAY + np.arange(60) * HOUR, MONDAY + 60 * HOUR + np.arange(40) * 4 * HOUR]
    bars(100, times).to_csv(raw / "MIXTF.csv", index=False)
    assert_refused(raw, tmp_path / "out", capsys, "MIXTF.csv", "data rows 61-100",
                   "40 consecutive bars are 4h apart", "1h apart", "mixes timeframes", "--out")


def test_hourly_rows_inside_a_daily_file_are_refused(raw, tmp_path, capsys):
    daily = MONDAY + np.arange(N) * DAY
    times = np.r_[daily[:40], daily[39] + np.array([1, 2, 3]) * HOUR, daily[40:]]
    bars(len(times), times).to_csv(raw / "D.csv", index=False)
    assert_refused(raw, tmp_path / "out", capsys, "D.csv", "data row 41",
                   "opens 1h after the bar of data row 40", "bar length 1d", "mixes timeframes")


def test_dangling_symlink_is_reported(raw, tmp_path, capsys):
    bars().to_csv(raw / "GOOD.csv", index=False)
    os.symlink(tmp_path / "moved" / "BTC.csv", raw / "BTC.csv")
    assert_refused(raw, tmp_path / "out", capsys, "symlink BTC.csv", str(tmp_path / "moved"),
                   "fix the link or remove it")


# ----------------------------------------------------------------------------- re-runs and training


def test_rerun_removes_stale_tables_only_after_success(raw, tmp_path, capsys):
    out = tmp_path / "out"
    for k, name in enumerate(("AAA", "BBB", "CCC")):
        bars().assign(volume=5.0 + k).to_csv(raw / f"{name}.csv", index=False)
    assert run(["--raw-dir", raw, "--out", out], capsys)[0] == 0
    (out / "notes.feather").write_bytes(b"not ours")  # a user's file: never touched
    (raw / "BBB.csv").unlink()
    (raw / "CCC.csv").write_text("timestamp,open\n1,2\n")  # broken: the re-run must fail first
    before = listing(out)
    assert_refused(raw, out, capsys, "CCC.csv", "missing column(s)")
    assert listing(out) == before  # BBB and CCC tables still there with the old manifest
    (raw / "CCC.csv").unlink()
    code, stdout, _ = run(["--raw-dir", raw, "--out", out], capsys)
    assert code == 0
    assert "removed 2 stale table(s) of symbols no longer in --raw-dir: BBB.feather, CCC.feather" \
        in stdout.splitlines()[-1]
    assert sorted(p.name for p in out.iterdir()) == ["AAA.feather", "manifest.json", "notes.feather"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["symbols"]) == ["AAA"]


def test_rerun_over_the_shipped_sample_keeps_it_byte_identical(tmp_path, capsys):
    import shutil

    repo = Path(__file__).resolve().parents[2]
    shipped = repo / "data" / "sample" / "processed"
    out = tmp_path / "processed"
    shutil.copytree(shipped, out)
    code, stdout, err = run(["--raw-dir", repo / "data" / "sample" / "raw", "--out", out], capsys)
    assert code == 0, err
    assert "stale" not in stdout
    assert listing(out) == listing(shipped)  # same names, same bytes, no temp files


def load(processed: Path, *overrides):
    from tbjax.config import load_config
    from tbjax.data.processed import load_processed

    return load_processed(load_config(None, [f"data.processed_dir={processed}", *overrides]))


def test_training_reads_only_what_the_manifest_lists(raw, tmp_path, capsys):
    out = tmp_path / "out"
    for name in ("AAA", "BBB"):
        bars().to_csv(raw / f"{name}.csv", index=False)
    assert run(["--raw-dir", raw, "--out", out], capsys)[0] == 0
    (out / "ZZZ.feather").write_bytes((out / "AAA.feather").read_bytes())  # stray copy
    tables_read, columns, hashes = load(out)
    assert sorted(tables_read) == sorted(hashes) == ["AAA", "BBB"]
    assert columns == json.loads((out / "manifest.json").read_text())["feature_names"]
    (out / "BBB.feather").unlink()
    with pytest.raises(InputError, match=r"lists BBB\.feather for BBB but the file is missing; "
                                         r"re-run prepare: run `python -m tbjax\.prepare"):
        load(out)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"symbols": {}}', "\xff\xfe"])
def test_corrupt_manifest_is_one_clear_error(raw, tmp_path, capsys, text):
    out = tmp_path / "out"
    bars().to_csv(raw / "AAA.csv", index=False)
    assert run(["--raw-dir", raw, "--out", out], capsys)[0] == 0
    (out / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError, match=r"manifest .*manifest\.json .*re-run prepare: run "
                                         r"`python -m tbjax\.prepare .*data\.processed_dir"):
        load(out)
    # and a re-run of prepare over it repairs the folder
    assert run(["--raw-dir", raw, "--out", out], capsys)[0] == 0
    assert sorted(load(out)[0]) == ["AAA"]


# ----------------------------------------------------------------------------- full disk


@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_while_writing_leaves_no_partial_files(raw, tmp_path, capsys, monkeypatch,
                                                          existing):
    out = tmp_path / "out"
    for name in ("AAA", "BBB"):
        bars().to_csv(raw / f"{name}.csv", index=False)
    if existing:
        assert run(["--raw-dir", raw, "--out", out], capsys)[0] == 0
        bars().assign(volume=99.0).to_csv(raw / "AAA.csv", index=False)
    before = listing(out)
    real = tables.pa_feather.write_feather
    calls = []

    def full_on_second(table, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # half a file reaches the disk, then it is full
            Path(path).write_bytes(b"ARROW1\x00\x00partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, path, **kwargs)

    monkeypatch.setattr(tables.pa_feather, "write_feather", full_on_second)
    err = assert_refused(raw, out, capsys, "BBB.feather", "the disk is full",
                         "nothing partial was kept", "free disk space")
    assert len(calls) == 2 and listing(out) == before
    assert existing or not out.exists()
    assert str(out / "BBB.feather") in err
