"""Raw kline readers: one symbol per file (CSV / parquet / feather) → canonical bar columns.

Two layouts are understood, both with case-insensitive column names and common aliases:

* Binance kline dumps (data.binance.vision): 12 columns, with or without a header row, in the
  order of ``BINANCE_COLUMNS``. A header-less file is recognised by its first field being a number.
* General OHLCV tables whose time column is one of ``open_time / timestamp / ts / ts_ms / time /
  date / datetime`` (first match in that order).

CSV separators, decimal marks, field counts and strict number parsing are
:mod:`tbjax.data.textformat`'s; time columns (epoch units, ISO / strftime strings, the plausible
``TimeBounds``) are :mod:`tbjax.data.timeparse`'s. Everything becomes ``open_time`` in int64 ms UTC.

Canonical columns (what ``tbjax.data.features.compute_features`` relies on): ``open_time`` (int64),
``open, high, low, close, volume`` (float64); optional ``quote_volume, n_trades, taker_buy_base,
taker_buy_quote`` (float64). Other columns (``adj close``, ``close_time``, ``ignore``...) are
ignored. The symbol comes from a ``symbol`` column (one value per file) or the file name.

Every reader failure is turned into :class:`tbjax.errors.InputError` naming the file, so a
corrupt download never surfaces as a traceback.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as pa_feather
import pyarrow.parquet as pa_parquet

from tbjax.data.hashing import file_sha256
from tbjax.data.textformat import (check_field_counts, float_column, looks_numeric, number_format,
                                   sniff_decimal, sniff_delimiter, trailing_empty_rows, with_number_format)
from tbjax.data.timeparse import TimeBounds, parse_time_column
from tbjax.errors import InputError

BINANCE_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_asset_volume",
    "number_of_trades", "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume", "ignore",
)
REQUIRED_COLUMNS = ("open", "high", "low", "close", "volume")
OPTIONAL_COLUMNS = ("quote_volume", "n_trades", "taker_buy_base", "taker_buy_quote")
TIME_COLUMNS = ("open_time", "timestamp", "ts", "ts_ms", "time", "date", "datetime")

# canonical name -> accepted spellings (after lower-casing and turning spaces/dashes into "_")
ALIASES = {
    "open": ("open", "o", "open_price"),
    "high": ("high", "h", "high_price"),
    "low": ("low", "l", "low_price"),
    "close": ("close", "c", "close_price"),
    "volume": ("volume", "vol", "v", "base_volume", "volume_base"),
    "quote_volume": ("quote_volume", "quote_asset_volume", "quote_vol", "volume_quote"),
    "n_trades": ("n_trades", "number_of_trades", "num_trades", "trades", "count", "trade_count"),
    "taker_buy_base": ("taker_buy_base", "taker_buy_base_asset_volume", "taker_buy_base_volume",
                       "taker_buy_volume"),
    "taker_buy_quote": ("taker_buy_quote", "taker_buy_quote_asset_volume", "taker_buy_quote_volume"),
}
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2")
TABLE_SUFFIXES = CSV_SUFFIXES + (".parquet", ".pq", ".feather", ".arrow", ".ipc")
KLINE_COLUMN_NAMES = frozenset(TIME_COLUMNS + ("symbol",) + sum(ALIASES.values(), ()))
_BINANCE_STEM = re.compile(r"^([A-Z0-9]+)-\d+(S|M|H|D|W|MO)-\d{4}-\d{2}(-\d{2})?$")
_SAFE_SYMBOL = re.compile(r"^[A-Za-z0-9._-]+$")
_SURPLUS = "\x00surplus"  # names given to empty surplus fields (no header can hold a NUL)


@dataclass(frozen=True)
class RawBars:
    """One file's bars in canonical columns, before cleaning.

    ``bars`` holds the canonical columns (rows in file order); ``time_valid`` is False where the
    time value could not be parsed (those rows are dropped with a count by the cleaner).
    """

    symbol: str
    path: Path
    sha256: str
    bars: dict
    time_valid: np.ndarray
    empty_optional: tuple = ()
    trailing_empty_rows: int = 0  # CSV rows whose empty fields beyond the header's were dropped


def table_suffix(path: Path) -> str | None:
    """The supported suffix of ``path`` (``.csv.gz`` counts as one), or None."""
    name = path.name.lower()
    return next((s for s in TABLE_SUFFIXES if name.endswith(s)), None)


def normal_name(name: str) -> str:
    """Column name for matching: lower case, surrounding blanks removed, spaces/dashes → '_'."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _first_line(path: Path) -> str:
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(1 << 16)
    text = head.decode("utf-8-sig", errors="replace")
    return text.splitlines()[0] if text.strip() else ""


def _read_csv(path: Path, time_format: str | None, wanted) -> pa.Table:
    """CSV via pandas' C parser (about 2x faster and leaner than type-inferring Arrow here).

    Comma-separated files keep pandas' number inference (the fast path for big Binance dumps);
    any other separator reads its value columns as text, so the decimal mark is decided from the
    whole file and every number is parsed by ``textformat.parse_numbers``.
    """
    first = _first_line(path)
    delimiter = sniff_delimiter(first)
    fields = next(csv.reader([first], delimiter=delimiter)) if first else []
    if fields and looks_numeric(fields[0]):
        if len(fields) != len(BINANCE_COLUMNS):
            raise InputError(
                f"file {path} has no header row and {len(fields)} columns; Binance kline dumps "
                f"have 12: add a header row naming the columns (open_time/timestamp, open, high, "
                f"low, close, volume, ...)")
        header, names = None, list(BINANCE_COLUMNS)
    else:
        header, names = 0, None
    columns = list(names or fields)
    trailing, widest = check_field_counts(path, delimiter, columns, header is not None) if columns else (0, 0)
    # Only the useful columns are parsed: memory stays near their size (a 1M-row Binance dump
    # peaks at about 2x the table instead of 3x); every row's field count was checked above.
    usecols = (lambda name: normal_name(name) in wanted) if wanted is not None else None
    if widest > len(columns):  # rows with empty surplus fields: name those fields, then leave them out
        columns = names = _unique_names(columns) + [f"{_SURPLUS}{i}" for i in range(widest - len(columns))]
        usecols = (lambda name, keep=usecols: not name.startswith(_SURPLUS) and (keep is None or keep(name)))
    text = {}
    for name in columns:
        is_time = normal_name(name) in TIME_COLUMNS
        if (is_time and time_format is not None) or (not is_time and delimiter != ","):
            text[name] = str
    frame = pd.read_csv(path, sep=delimiter, header=header, names=names, usecols=usecols,
                        dtype=text or None)
    for name in frame.columns[frame.dtypes == object]:  # mixed text/numbers → text, parsed later
        frame[name] = frame[name].astype("string")
    skip = [name for name in frame.columns if normal_name(name) in TIME_COLUMNS + ("symbol",)]
    decimal = sniff_decimal(frame, path, delimiter, skip)
    return with_number_format(pa.Table.from_pandas(frame, preserve_index=False), decimal, delimiter, trailing)


def _unique_names(fields: list[str]) -> list[str]:
    """Header names as pandas makes them (empty -> "Unnamed: i", repeats -> "x.1"), for ``names=``."""
    out, seen = [], set()
    for i, name in enumerate(fields):
        base = name if name.strip() else f"Unnamed: {i}"
        unique, k = base, 0
        while unique in seen:
            k += 1
            unique = f"{base}.{k}"
        seen.add(unique)
        out.append(unique)
    return out


def read_raw_table(path: Path, time_format: str | None = None, wanted=None) -> pa.Table:
    """Read one CSV / parquet / feather file into an Arrow table with its original column names.

    CSV files without a header row get the 12 Binance names (any other width is an error because
    the meaning of the columns would be a guess). With ``time_format`` set, the time column is read
    as text so the format decides how it parses. ``wanted`` (normalised names) limits which CSV
    columns are parsed at all. The CSV's decimal mark and separator ride along in the schema
    metadata (``number_format``).
    """
    path = Path(path)
    suffix = table_suffix(path)
    try:
        if path.stat().st_size == 0:
            raise InputError(f"file {path} is empty; remove it or replace it with a kline table")
        if suffix in (".parquet", ".pq"):
            return pa_parquet.read_table(path)
        if suffix in (".feather", ".arrow", ".ipc"):
            return pa_feather.read_table(path)
        return _read_csv(path, time_format, wanted)
    except InputError:
        raise
    except (pa.ArrowException, OSError, ValueError, UnicodeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fix = ("save it as UTF-8 text (or check that it is not a binary file)"
               if isinstance(exc, UnicodeError) else
               "check that the file is a complete, uncorrupted CSV, parquet or feather table")
        raise InputError(f"cannot read {path}: {detail}; {fix}") from None


def _column_map(names: list[str], path: Path) -> dict[str, str]:
    """Canonical name -> original column name, for the columns present."""
    normal = {}
    for name in names:
        normal.setdefault(normal_name(name), name)
    found = {}
    time_name = next((t for t in TIME_COLUMNS if t in normal), None)
    if time_name is None:
        raise InputError(f"file {path} has no time column (looked for {', '.join(TIME_COLUMNS)}; "
                         f"found {', '.join(map(str, names))}); rename its time column to timestamp")
    found["open_time"] = normal[time_name]
    for canonical, spellings in ALIASES.items():
        hit = next((s for s in spellings if s in normal), None)
        if hit is not None:
            found[canonical] = normal[hit]
    missing = [c for c in REQUIRED_COLUMNS if c not in found]
    if missing:
        raise InputError(f"file {path} is missing column(s) {', '.join(missing)} (found "
                         f"{', '.join(map(str, names))}); add them or rename the existing ones")
    return found


def symbol_for(table: pa.Table, path: Path) -> str:
    """Symbol from a ``symbol`` column (exactly one distinct value) or the file stem, upper-case.

    A Binance dump name such as ``BTCUSDT-1h-2024-01.csv`` gives ``BTCUSDT``.
    """
    by_name = {normal_name(n): n for n in table.column_names}
    if "symbol" in by_name:
        values = [v for v in pc.unique(table[by_name["symbol"]]).to_pylist() if v is not None]
        if len(values) != 1:
            raise InputError(f"file {path} holds {len(values)} symbols in column "
                             f"'{by_name['symbol']}' ({', '.join(map(str, values[:5]))}); write "
                             f"one file per symbol")
        symbol = str(values[0]).strip().upper()
    else:
        suffix = table_suffix(path) or path.suffix
        symbol = path.name[: len(path.name) - len(suffix)].strip().upper()
        match = _BINANCE_STEM.match(symbol)
        symbol = match.group(1) if match else symbol
    if not _SAFE_SYMBOL.match(symbol):
        raise InputError(f"symbol {symbol!r} from {path} is not usable as a file name; use only "
                         f"letters, digits, '.', '_' and '-' (rename the file or fix the symbol column)")
    return symbol


def read_klines(path: Path, time_format: str | None = None,
                bounds: TimeBounds | None = None) -> RawBars:
    """Read one raw kline file into canonical columns (no cleaning yet; see ``clean_bars``).

    Raises InputError for an unreadable file, a missing time/OHLCV column, a required column
    whose values are all missing or non-numeric, a number that is not plain in the file's
    convention, mixed epoch units, or a time outside ``bounds`` (default ``time_bounds()``).
    """
    path = Path(path)
    table = read_raw_table(path, time_format, KLINE_COLUMN_NAMES)
    if table.num_rows == 0:
        raise InputError(f"file {path} has no data rows; remove it or add bars")
    names = _column_map(table.column_names, path)
    open_time, valid = parse_time_column(table[names["open_time"]], time_format,
                                         f"file {path}, column '{names['open_time']}'", bounds)
    decimal, delimiter = number_format(table)
    bars = {"open_time": open_time}
    empty_optional = []
    for canonical in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        if canonical not in names:
            continue
        values = float_column(table[names[canonical]], f"file {path}, column '{names[canonical]}'",
                              decimal, delimiter)
        if not np.isfinite(values).any():
            if canonical in REQUIRED_COLUMNS:
                raise InputError(f"file {path}, column '{names[canonical]}' has no numeric value "
                                 f"(all empty/NaN); fill it or remove the file")
            empty_optional.append(canonical)
            continue
        bars[canonical] = values
    return RawBars(symbol=symbol_for(table, path), path=path, sha256=file_sha256(path),
                   bars=bars, time_valid=valid, empty_optional=tuple(empty_optional),
                   trailing_empty_rows=trailing_empty_rows(table))


@dataclass(frozen=True)
class CleanReport:
    """What cleaning did to one symbol, so nothing is changed silently (one log line, manifest)."""

    rows_raw: int
    bad_time_dropped: int      # time value missing or unparseable
    bad_price_dropped: int     # an open/high/low/close that is non-finite or <= 0
    bad_volume_dropped: int    # volume non-finite or negative
    unsorted_steps: int        # rows whose time is earlier than the previous row's (input order)
    duplicates_dropped: int    # repeated open_time, first occurrence in file order kept
    high_low_repaired: int     # high < max(open, close) or low > min(open, close), widened
    rows_clean: int
    # file row (0-based data row) of each clean bar; None when every row was kept in file order.
    # Not part of the manifest: later checks use it to name the row a user has to fix.
    kept_rows: np.ndarray | None = field(default=None, compare=False, repr=False)

    def source_row(self, index: int) -> int:
        """1-based data row in the input file of clean bar ``index``."""
        return int(index if self.kept_rows is None else self.kept_rows[index]) + 1

    def summary(self) -> str:
        return (f"{self.rows_raw} raw rows -> {self.rows_clean} clean (sorted {self.unsorted_steps} "
                f"out-of-order, dropped {self.duplicates_dropped} duplicate, "
                f"{self.bad_price_dropped} bad-price, {self.bad_volume_dropped} bad-volume, "
                f"{self.bad_time_dropped} bad-time rows; repaired high/low on "
                f"{self.high_low_repaired})")


def clean_bars(raw: RawBars) -> tuple[dict, CleanReport]:
    """Validate and clean canonical bars: the returned rows have sorted unique open times, finite
    positive prices, finite non-negative volume and high >= max(open, close) >= min(open, close)
    >= low.

    Order matters: invalid rows go first, so a duplicate time whose first copy is broken keeps
    its valid copy; the sort is stable, so among duplicates the first one in the file wins.
    Inconsistent high/low are repaired (widened to cover open and close) rather than dropped,
    because the open/close pair, which is what fills and returns use, is still valid.
    """
    bars = raw.bars
    n_raw = len(bars["open_time"])
    price_ok = np.ones(n_raw, dtype=bool)
    with np.errstate(invalid="ignore"):
        for name in ("open", "high", "low", "close"):
            price_ok &= np.isfinite(bars[name]) & (bars[name] > 0.0)
        volume_ok = np.isfinite(bars["volume"]) & (bars["volume"] >= 0.0)
    time_ok = raw.time_valid
    keep = time_ok & price_ok & volume_ok
    bad_time = int((~time_ok).sum())
    bad_price = int((time_ok & ~price_ok).sum())
    bad_volume = int((time_ok & price_ok & ~volume_ok).sum())
    rows = np.flatnonzero(keep) if not keep.all() else None  # None: every row, no copy
    times = bars["open_time"] if rows is None else bars["open_time"][rows]
    unsorted = int(np.count_nonzero(np.diff(times) < 0))
    if unsorted:
        order = np.argsort(times, kind="stable")
        rows = order if rows is None else rows[order]
        times = times[order]
    first_copy = np.ones(len(times), dtype=bool)
    first_copy[1:] = np.diff(times) != 0
    duplicates = int((~first_copy).sum())
    if duplicates:
        rows = np.flatnonzero(first_copy) if rows is None else rows[first_copy]
    out = dict(bars) if rows is None else {name: values[rows] for name, values in bars.items()}
    body_high = np.maximum(out["open"], out["close"])
    body_low = np.minimum(out["open"], out["close"])
    broken = (out["high"] < body_high) | (out["low"] > body_low)
    out["high"] = np.maximum(out["high"], body_high)
    out["low"] = np.minimum(out["low"], body_low)
    report = CleanReport(rows_raw=n_raw, bad_time_dropped=bad_time, bad_price_dropped=bad_price,
                         bad_volume_dropped=bad_volume, unsorted_steps=unsorted,
                         duplicates_dropped=duplicates, high_low_repaired=int(broken.sum()),
                         rows_clean=len(out["open_time"]), kept_rows=rows)
    return out, report
