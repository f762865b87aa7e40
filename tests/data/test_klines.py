"""Raw kline readers: layouts, time units, aliases, symbols, cleaning counts, reader errors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as pa_feather
import pyarrow.parquet as pa_parquet
import pytest

from tbjax.data import hashing, klines, textformat, timeparse
from tbjax.errors import InputError

T0_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
HOUR_MS = 3_600_000


def binance_frame(n: int = 6) -> pd.DataFrame:
    """n hourly Binance rows with easy numbers: open = 100 + i, close = open + 0.5, etc."""
    i = np.arange(n)
    open_ = 100.0 + i
    return pd.DataFrame({
        "open_time": T0_MS + i * HOUR_MS, "open": open_, "high": open_ + 1.0,
        "low": open_ - 1.0, "close": open_ + 0.5, "volume": 10.0 + i,
        "close_time": T0_MS + (i + 1) * HOUR_MS - 1, "quote_asset_volume": 1000.0 + i,
        "number_of_trades": 5 + i, "taker_buy_base_asset_volume": 4.0 + i,
        "taker_buy_quote_asset_volume": 400.0 + i, "ignore": 0,
    })


def test_binance_dump_with_and_without_header_parse_identically(tmp_path):
    frame = binance_frame()
    frame.to_csv(tmp_path / "BTCUSDT.csv", index=False)
    (tmp_path / "plain").mkdir()
    frame.to_csv(tmp_path / "plain" / "BTCUSDT-1h-2023-11.csv", index=False, header=False)
    with_header = klines.read_klines(tmp_path / "BTCUSDT.csv")
    without = klines.read_klines(tmp_path / "plain" / "BTCUSDT-1h-2023-11.csv")
    assert with_header.symbol == without.symbol == "BTCUSDT"
    assert set(with_header.bars) == set(without.bars) == {
        "open_time", "open", "high", "low", "close", "volume", "quote_volume", "n_trades",
        "taker_buy_base", "taker_buy_quote"}
    for name in with_header.bars:
        np.testing.assert_array_equal(with_header.bars[name], without.bars[name])
    np.testing.assert_array_equal(without.bars["open_time"], T0_MS + np.arange(6) * HOUR_MS)
    np.testing.assert_array_equal(without.bars["taker_buy_base"], 4.0 + np.arange(6))
    assert without.bars["open_time"].dtype == np.int64
    assert without.bars["n_trades"].dtype == np.float64


@pytest.mark.parametrize("unit_scale", [1e-3, 1, 1e3, 1e6])  # s, ms, µs, ns
def test_epoch_units_detected_by_magnitude(tmp_path, unit_scale):
    frame = binance_frame()[["open_time", "open", "high", "low", "close", "volume"]]
    frame = frame.rename(columns={"open_time": "timestamp"})
    frame["timestamp"] = (frame["timestamp"] * unit_scale).astype(np.int64)
    frame.to_csv(tmp_path / "eth.csv", index=False)
    raw = klines.read_klines(tmp_path / "eth.csv")
    np.testing.assert_array_equal(raw.bars["open_time"], T0_MS + np.arange(6) * HOUR_MS)
    assert raw.symbol == "ETH"


def test_fractional_epoch_seconds_round_to_ms(tmp_path):
    frame = binance_frame(3)[["open", "high", "low", "close", "volume"]]
    frame.insert(0, "ts", [1_700_000_000.25, 1_700_003_600.5, 1_700_007_200.0])
    frame.to_csv(tmp_path / "x.csv", index=False)
    got = klines.read_klines(tmp_path / "x.csv").bars["open_time"]
    np.testing.assert_array_equal(got, [1_700_000_000_250, 1_700_003_600_500, 1_700_007_200_000])


def test_iso_strings_and_time_format_give_the_same_ms(tmp_path):
    base = binance_frame(3)[["open", "high", "low", "close", "volume"]]
    iso = base.copy()
    iso.insert(0, "time", ["2024-01-02T03:00:00Z", "2024-01-02 04:00:00", "2024-01-02T06:00:00+01:00"])
    iso.to_csv(tmp_path / "iso.csv", index=False)
    custom = base.copy()
    custom.insert(0, "date", ["02/01/2024 03:00", "02/01/2024 04:00", "02/01/2024 05:00"])
    custom.to_csv(tmp_path / "custom.csv", index=False)
    expected = 1_704_164_400_000 + np.arange(3) * HOUR_MS  # 2024-01-02T03:00Z
    np.testing.assert_array_equal(klines.read_klines(tmp_path / "iso.csv").bars["open_time"], expected)
    got = klines.read_klines(tmp_path / "custom.csv", time_format="%d/%m/%Y %H:%M")
    np.testing.assert_array_equal(got.bars["open_time"], expected)
    with pytest.raises(InputError, match="custom.csv.*--time-format"):
        klines.read_klines(tmp_path / "custom.csv", time_format="%Y-%m-%d")


def test_case_insensitive_names_and_aliases(tmp_path):
    frame = pd.DataFrame({
        "Date": ["2020-01-02", "2020-01-03"], "OPEN": [10.0, 11.0], "High": [12.0, 13.0],
        "low": [9.0, 10.0], "Close": [11.0, 12.0], "Adj Close": [5.5, 6.0], "Vol": [100, 200],
        "Taker_Buy_Base": [40.0, 90.0], "Symbol": ["spy", "spy"],
    })
    frame.to_csv(tmp_path / "whatever.csv", index=False)
    raw = klines.read_klines(tmp_path / "whatever.csv")
    assert raw.symbol == "SPY"
    assert set(raw.bars) == {"open_time", "open", "high", "low", "close", "volume", "taker_buy_base"}
    np.testing.assert_array_equal(raw.bars["close"], [11.0, 12.0])  # not the adjusted close
    np.testing.assert_array_equal(raw.bars["volume"], [100.0, 200.0])
    np.testing.assert_array_equal(raw.bars["open_time"], [1_577_923_200_000, 1_578_009_600_000])


@pytest.mark.parametrize("fmt", ["parquet", "feather"])
def test_parquet_and_feather_read_like_csv(tmp_path, fmt):
    frame = binance_frame()
    frame.to_csv(tmp_path / "A.csv", index=False)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    path = tmp_path / f"A.{fmt}"
    (pa_parquet.write_table if fmt == "parquet" else pa_feather.write_feather)(table, path)
    from_csv, other = klines.read_klines(tmp_path / "A.csv"), klines.read_klines(path)
    for name in from_csv.bars:
        np.testing.assert_array_equal(from_csv.bars[name], other.bars[name])


def test_native_timestamp_column_with_timezone(tmp_path):
    times = pd.date_range("2024-03-01 09:00", periods=3, freq="h", tz="Europe/Berlin")
    frame = pd.DataFrame({"timestamp": times, "open": 1.0, "high": 2.0, "low": 0.5,
                          "close": 1.5, "volume": 3.0})
    pa_feather.write_feather(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "Q.feather")
    got = klines.read_klines(tmp_path / "Q.feather").bars["open_time"]
    np.testing.assert_array_equal(got, 1_709_280_000_000 + np.arange(3) * HOUR_MS)  # 08:00Z


def test_clean_sorts_dedupes_drops_and_repairs_with_counts(tmp_path):
    frame = pd.DataFrame({
        # file order: 3, 1, 2, 2 (dup), 5, 4 (bad price 0), 6 (negative), 7 (NaN), 8 (bad volume).
        # Valid rows in file order are 3, 1, 2, 2, 5: one step back (3 -> 1), one duplicate.
        "timestamp": np.array([3, 1, 2, 2, 5, 4, 6, 7, 8]) * HOUR_MS + T0_MS,
        "open": [10.0, 10, 10, 99, 10, 0.0, -1, np.nan, 10],
        "high": [11.0, 9, 11, 99, 11, 11, 11, 11, 11],   # row "1": high 9 < open 10 → repaired
        "low": [9.0, 9, 12, 99, 9, 9, 9, 9, 9],          # row "2": low 12 > close 10.5 → repaired
        "close": [10.5, 10.5, 10.5, 99, 10.5, 10, 10, 10, 10],
        "volume": [1.0, 1, 1, 1, 0, 1, 1, 1, -5],
    })
    frame.to_csv(tmp_path / "dirty.csv", index=False)
    bars, report = klines.clean_bars(klines.read_klines(tmp_path / "dirty.csv"))
    assert (report.rows_raw, report.bad_price_dropped, report.bad_volume_dropped) == (9, 3, 1)
    assert (report.unsorted_steps, report.duplicates_dropped, report.high_low_repaired) == (1, 1, 2)
    assert report.rows_clean == 4
    np.testing.assert_array_equal(bars["open_time"], T0_MS + np.array([1, 2, 3, 5]) * HOUR_MS)
    np.testing.assert_array_equal(bars["open"], [10.0, 10.0, 10.0, 10.0])  # first copy of t=2 kept
    np.testing.assert_array_equal(bars["high"], [10.5, 11.0, 11.0, 11.0])
    np.testing.assert_array_equal(bars["low"], [9.0, 10.0, 9.0, 9.0])
    assert "3 bad-price" in report.summary() and "1 duplicate" in report.summary()


def test_unparseable_time_rows_are_counted(tmp_path):
    frame = binance_frame(3)[["open", "high", "low", "close", "volume"]]
    frame.insert(0, "time", ["2024-01-02T03:00:00Z", "not a time", "2024-01-02T05:00:00Z"])
    frame.to_csv(tmp_path / "t.csv", index=False)
    bars, report = klines.clean_bars(klines.read_klines(tmp_path / "t.csv"))
    assert report.bad_time_dropped == 1 and report.rows_clean == 2
    np.testing.assert_array_equal(bars["open"], [100.0, 102.0])


def test_reader_errors_name_file_and_column(tmp_path):
    frame = binance_frame()[["open_time", "open", "high", "close", "volume"]]
    frame.to_csv(tmp_path / "nolow.csv", index=False)
    with pytest.raises(InputError, match=r"nolow\.csv.*missing column\(s\) low"):
        klines.read_klines(tmp_path / "nolow.csv")
    frame = binance_frame()[["open_time", "open", "high", "low", "close", "volume"]]
    frame["close"] = np.nan
    frame.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(InputError, match=r"nan\.csv, column 'close' has no numeric value"):
        klines.read_klines(tmp_path / "nan.csv")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"cannot read .*broken\.parquet"):
        klines.read_klines(tmp_path / "broken.parquet")
    (tmp_path / "ragged.csv").write_text('timestamp,open,high,low,close,volume\n1,"2,3,1,2,5\n')
    with pytest.raises(InputError, match=r"ragged\.csv, line 2: 2 fields where the header \(line 1\) has 6: .*"
                                         r"a quote \(\"\) opened here is never closed"):
        klines.read_klines(tmp_path / "ragged.csv")
    (tmp_path / "short.csv").write_text("1700000000000,1,2,0.5,1.5,3\n")
    with pytest.raises(InputError, match=r"short\.csv has no header row and 6 columns"):
        klines.read_klines(tmp_path / "short.csv")


def test_symbol_column_with_two_symbols_is_an_error(tmp_path):
    frame = binance_frame(2)[["open_time", "open", "high", "low", "close", "volume"]]
    frame["symbol"] = ["BTC", "ETH"]
    frame.to_csv(tmp_path / "mixed.csv", index=False)
    with pytest.raises(InputError, match=r"mixed\.csv holds 2 symbols"):
        klines.read_klines(tmp_path / "mixed.csv")


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = Path(tmp_path / "f.bin")
    path.write_bytes(b"abc" * 1000)
    assert hashing.file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()


@pytest.mark.parametrize("line, expected", [
    ("open_time,open,high,low,close,volume", ","),
    ("date;open;high;low;close;volume", ";"),
    ("date\topen\thigh\tlow\tclose\tvolume", "\t"),
    ("date|open|high|low|close|volume", "|"),
    ("1700000000000;100,5;101,5;99,5;100,25;12,5;1700003599999;1,5;7;2,5;3,5;0", ";"),
    ('ts,"a;b",close', ","),
])
def test_sniff_delimiter(line, expected):
    assert textformat.sniff_delimiter(line) == expected


def test_headerless_semicolon_dump_with_decimal_commas(tmp_path):
    rows = [f"{T0_MS + i * HOUR_MS};{100 + i},5;{101 + i},25;{99 + i},75;{100 + i},5;1,5;"
            f"{T0_MS + (i + 1) * HOUR_MS - 1};150,75;{7 + i};0,5;50,25;0" for i in range(3)]
    (tmp_path / "BTCUSDT-1h-2023-11.csv").write_text("\n".join(rows) + "\n")
    raw = klines.read_klines(tmp_path / "BTCUSDT-1h-2023-11.csv")
    assert raw.symbol == "BTCUSDT"
    np.testing.assert_array_equal(raw.bars["open_time"], T0_MS + np.arange(3) * HOUR_MS)
    np.testing.assert_array_equal(raw.bars["open"], [100.5, 101.5, 102.5])
    np.testing.assert_array_equal(raw.bars["high"], [101.25, 102.25, 103.25])
    np.testing.assert_array_equal(raw.bars["quote_volume"], [150.75] * 3)
    np.testing.assert_array_equal(raw.bars["n_trades"], [7.0, 8.0, 9.0])


def test_parse_numbers_conventions():
    cells = np.array(["12.5", " 7 ", "", None, "n/a", "-", "1e3"], dtype=object)
    np.testing.assert_array_equal(textformat.parse_numbers(cells, "c"),
                                  [12.5, 7.0, np.nan, np.nan, np.nan, np.nan, 1000.0])
    np.testing.assert_array_equal(
        textformat.parse_numbers(np.array(["12,5", "0,25", "3"]), "c", ","), [12.5, 0.25, 3.0])
    for value, decimal, words in [("1,234.5", ".", "thousands separator"),
                                  ("1.234,5", ",", "thousands separator"),
                                  ("1 234", ".", "thousands separator"),
                                  ("1.5", ",", "uses '.' as the decimal mark"),
                                  ("12,5", ".", "decimal comma"),
                                  ("12.5 USD", ".", "is not a number")]:
        with pytest.raises(InputError, match=rf"^c, data row 2: {value!r} .*{words}"):
            textformat.parse_numbers(np.array(["1", value], dtype=object), "c", decimal)


def test_microseconds_among_milliseconds_are_refused(tmp_path):
    frame = binance_frame()[["open_time", "open", "high", "low", "close", "volume"]]
    frame.loc[4, "open_time"] = frame.loc[4, "open_time"] * 1000  # a 2025 µs dump row appended
    frame.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(InputError, match=r"m\.csv, column 'open_time', data row 5: value "
                                         r"1700014400000000 is epoch microseconds .* epoch "
                                         r"milliseconds; 1 row\(s\)"):
        klines.read_klines(tmp_path / "m.csv")


def test_time_bounds_are_configurable(tmp_path):
    frame = binance_frame(3)[["open_time", "open", "high", "low", "close", "volume"]]
    frame.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(InputError, match=r"data row 3: time value 1700007200000 = "
                                         r"2023-11-15T00:13:20Z is after 2023-11-15: .*--latest"):
        klines.read_klines(tmp_path / "b.csv", bounds=timeparse.time_bounds(latest="2023-11-15"))
    bounds = timeparse.time_bounds("2023-11-14", "2023-11-16")
    assert (bounds.earliest_ms, bounds.latest_ms) == (1_699_920_000_000, 1_700_092_800_000)
    np.testing.assert_array_equal(klines.read_klines(tmp_path / "b.csv", bounds=bounds)
                                  .bars["open_time"], T0_MS + np.arange(3) * HOUR_MS)
    with pytest.raises(InputError, match="--earliest 2024-01-01 is not before --latest"):
        timeparse.time_bounds("2024-01-01", "2023-01-01")


def test_epoch_number_among_date_strings_is_refused(tmp_path):
    frame = binance_frame(4)[["open", "high", "low", "close", "volume"]]
    frame.insert(0, "time", ["2024-01-02T03:00:00Z", "2024-01-02T04:00:00Z", "1704168000000",
                             "not a time"])
    frame.to_csv(tmp_path / "e.csv", index=False)
    with pytest.raises(InputError, match=r"e\.csv, column 'time', data row 3: '1704168000000' is "
                                         r"an epoch number but other rows are date strings"):
        klines.read_klines(tmp_path / "e.csv")
