"""Raw kline readers: one symbol per file (CSV / parquet / feather) → canonical bar columns.

Two layouts are understood, both with case-insensitive column names and common aliases:

* Binance kline dumps (data.binance.vision): 12 columns, with or without a header row, in the
  order of ``BINANCE_COLUMNS``. A header-less file is recognised by its first field being a number.
* General OHLCV tables whose time column is one of ``open_time / timestamp / ts / ts_ms / time /
  date / datetime`` (first match in that order).

CSV fields may be separated by ``,``, ``;``, tab or ``|`` (the separator that splits the first
line into the most fields). In a comma-separated file the decimal mark is ``.``; in any other
file it is ``,`` when some number settles it (``1234,5``, ``0,25``), else ``.``. Numbers are never
guessed at: a value with a thousands separator (``1,234.5``), the other decimal mark, or a ``,``
that could be either (``1,234`` with nothing else in the file deciding) stops with an error naming
file, column and data row (rows count from 1 after the header).

Time values may be epoch seconds, milliseconds, microseconds or nanoseconds (detected by the
magnitude of the median value: Binance spot dumps switched from ms to µs in 2025), ISO-8601
strings (naive strings are taken as UTC), native timestamp/date columns, or strings in a
user-given ``strftime`` format. Everything becomes ``open_time`` in int64 ms UTC. A file whose
epoch values mix units, and any time outside ``TimeBounds`` (default 1990-01-01 .. now + 1 year),
is refused with the data row: both are misread data, never real bars.

Canonical columns (what ``tbjax.data.features.compute_features`` relies on): ``open_time`` (int64),
``open, high, low, close, volume`` (float64); optional ``quote_volume, n_trades, taker_buy_base,
taker_buy_quote`` (float64). Other columns (``adj close``, ``close_time``, ``ignore``...) are
ignored. The symbol comes from a ``symbol`` column (one value per file) or the file name.

Every reader failure is turned into :class:`tbjax.errors.InputError` naming the file, so a
corrupt download never surfaces as a traceback.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as pa_feather
import pyarrow.parquet as pa_parquet

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

DELIMITERS = (",", ";", "\t", "|")  # ties go to the earlier one
_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
DECIMAL_KEY = b"tbjax.decimal"      # Arrow schema metadata: the decimal mark of a CSV's numbers
DELIMITER_KEY = b"tbjax.delimiter"
# "1,234" (1-3 digits, a comma, exactly three digits) is 1.234 with a decimal comma or 1234 with a
# thousands separator: such a value alone never decides the decimal mark of a file.
_COMMA_GROUPED = r"[+-]?[1-9]\d{0,2},\d{3}"
_COMMA_NUMBER = r"[+-]?\d*,\d+"
_DOT_NUMBER = r"[+-]?\d*\.\d+"
_THOUSANDS = re.compile(r"[+-]?\d{1,3}([,. '\u00a0\u202f\u2019])\d{3}(\1\d{3})*([.,]\d+)?")

EARLIEST_DEFAULT = "1990-01-01"
FUTURE_SLACK = pd.Timedelta(days=365)
UNIT_NAMES = ("seconds", "milliseconds", "microseconds", "nanoseconds")
_UNIT_EDGES = np.array([1e11, 1e14, 1e17])  # |value| below edge k is unit k (see _epoch_band)
_UNIT_TO_MS = np.array([1e3, 1.0, 1e-3, 1e-6])


@dataclass(frozen=True)
class TimeBounds:
    """The plausible range of time values, [earliest, latest] in ms UTC.

    Bars before 1990 or more than a year ahead are, in practice, a wrong unit, a typo or a
    placeholder (0, 2100-01-01), and one such row silently becomes a huge gap or a bar out of
    order. ``--earliest`` / ``--latest`` move the ends for data that really lies outside.
    """

    earliest_ms: int
    latest_ms: int
    earliest_text: str
    latest_text: str


def _date_ms(text: str, flag: str) -> int:
    """A ``--earliest`` / ``--latest`` date (naive = UTC) → ms; InputError naming the flag."""
    try:
        stamp = pd.Timestamp(str(text).strip())
    except (ValueError, TypeError, OverflowError):
        stamp = pd.NaT
    if pd.isna(stamp):
        example = "1980-01-01" if flag == "--earliest" else "2030-12-31"
        raise InputError(f"{flag} {text!r} is not a date; write it as YYYY-MM-DD, e.g. "
                         f"{flag} {example}") from None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.as_unit("ms").asm8.astype(np.int64))


def time_bounds(earliest: str | None = None, latest: str | None = None) -> TimeBounds:
    """TimeBounds from ``--earliest`` / ``--latest`` (None: 1990-01-01 and now + 1 year)."""
    earliest_text = earliest if earliest is not None else EARLIEST_DEFAULT
    if latest is None:
        latest_stamp = pd.Timestamp.now(tz="UTC").floor("D") + FUTURE_SLACK
        latest_text = f"{latest_stamp:%Y-%m-%d} (now + 1 year)"
        latest_ms = int(latest_stamp.as_unit("ms").asm8.astype(np.int64))
    else:
        latest_text, latest_ms = str(latest), _date_ms(latest, "--latest")
    earliest_ms = _date_ms(earliest_text, "--earliest")
    if earliest_ms >= latest_ms:
        raise InputError(f"--earliest {earliest_text} is not before --latest {latest_text}; "
                         f"pass an earlier --earliest or a later --latest")
    return TimeBounds(earliest_ms, latest_ms, str(earliest_text), latest_text)


def iso_ms(ms) -> str:
    """ms since 1970 → '2024-01-02T03:00:00Z' (the raw number when no calendar date fits)."""
    try:
        return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, TypeError):
        return f"{ms} ms since 1970"


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


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (recorded in the manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _looks_numeric(field: str) -> bool:
    try:
        float(field.strip().strip('"'))
    except ValueError:
        return False
    return True


def sniff_delimiter(first_line: str) -> str:
    """The field separator that splits the header (or first row) into the most fields.

    European spreadsheets write ';' (their decimal mark is ','), databases often tab or '|'.
    Read with the wrong one, the whole line becomes one column and nothing else is found.
    Quotes are honoured, so a quoted "1,5" in a ';' file does not count as a split.
    """
    if not first_line:
        return ","
    counts = {d: len(next(csv.reader([first_line], delimiter=d))) for d in DELIMITERS}
    return max(DELIMITERS, key=lambda d: (counts[d], -DELIMITERS.index(d)))


def _text_cells(frame: pd.DataFrame, skip) -> list[tuple[str, pd.Series]]:
    """(column name, stripped text) of every text column not in ``skip`` (normalised names)."""
    return [(name, frame[name].astype("string").str.strip()) for name in frame.columns
            if normal_name(name) not in skip and not pd.api.types.is_numeric_dtype(frame[name])]


def _sniff_decimal(frame: pd.DataFrame, path: Path, delimiter: str) -> str:
    """The decimal mark of a CSV read as text, from every number in it (see module doc).

    A comma-separated file cannot hold a bare decimal comma, so its mark is '.'. Elsewhere one
    unambiguous comma number ("1234,5", "0,25", "12,5") makes it ','. If the only commas are
    "1,234"-shaped and no '.' number settles it, the file is refused rather than guessed.
    """
    if delimiter == ",":
        return "."
    comma = dot = ambiguous = None
    for name, text in _text_cells(frame, TIME_COLUMNS + ("symbol",)):
        grouped = text.str.fullmatch(_COMMA_GROUPED).fillna(False)
        if comma is None and (text.str.fullmatch(_COMMA_NUMBER).fillna(False) & ~grouped).any():
            comma = name
        if dot is None and text.str.fullmatch(_DOT_NUMBER).fillna(False).any():
            dot = name
        if ambiguous is None and grouped.any():
            row = int(np.flatnonzero(grouped.to_numpy())[0])
            ambiguous = (name, row, text.iloc[row])
    if comma is not None:
        return ","
    if ambiguous is not None and dot is None:
        name, row, value = ambiguous
        raise InputError(
            f"file {path}, column '{name}', data row {row + 1}: {value!r} could be a decimal comma "
            f"or a thousands separator and no other number in the file settles it; save the file "
            f"with '.' as the decimal mark and no thousands separators (e.g. 1234.5)")
    return "."


def _read_csv(path: Path, time_format: str | None, wanted) -> pa.Table:
    """CSV via pandas' C parser (about 2x faster and leaner than type-inferring Arrow here).

    Comma-separated files keep pandas' number inference (the fast path for big Binance dumps);
    any other separator reads its value columns as text, so the decimal mark is decided from the
    whole file and every number is parsed by ``parse_numbers``.
    """
    first = _first_line(path)
    delimiter = sniff_delimiter(first)
    fields = next(csv.reader([first], delimiter=delimiter)) if first else []
    if fields and _looks_numeric(fields[0]):
        if len(fields) != len(BINANCE_COLUMNS):
            raise InputError(
                f"file {path} has no header row and {len(fields)} columns; Binance kline dumps "
                f"have 12: add a header row naming the columns (open_time/timestamp, open, high, "
                f"low, close, volume, ...)")
        header, names = None, list(BINANCE_COLUMNS)
    else:
        header, names = 0, None
    text = {}
    for name in names or fields:
        is_time = normal_name(name) in TIME_COLUMNS
        if (is_time and time_format is not None) or (not is_time and delimiter != ","):
            text[name] = str
    # Only the useful columns are parsed: memory stays near their size (a 1M-row Binance dump
    # peaks at about 2x the table instead of 3x). Cost: a row with surplus fields is not noticed;
    # a row with missing fields reads as NaN and is dropped (and counted) by clean_bars.
    usecols = (lambda name: normal_name(name) in wanted) if wanted is not None else None
    frame = pd.read_csv(path, sep=delimiter, header=header, names=names, usecols=usecols,
                        dtype=text or None)
    for name in frame.columns[frame.dtypes == object]:  # mixed text/numbers → text, parsed later
        frame[name] = frame[name].astype("string")
    decimal = _sniff_decimal(frame, path, delimiter)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata.update({DECIMAL_KEY: decimal.encode(), DELIMITER_KEY: delimiter.encode()})
    return table.replace_schema_metadata(metadata)


def number_format(table: pa.Table) -> tuple[str, str]:
    """(decimal mark, field separator) a table was read with; ('.', ',') for parquet/feather."""
    metadata = table.schema.metadata or {}
    return (metadata.get(DECIMAL_KEY, b".").decode(), metadata.get(DELIMITER_KEY, b",").decode())


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


def _epoch_band(values: np.ndarray) -> np.ndarray:
    """Unit index per value (0 s, 1 ms, 2 µs, 3 ns) by magnitude: s < 1e11 ≤ ms < 1e14 ≤ µs <
    1e17 ≤ ns. 1e11 s is the year 5138 and 1e11 ms is 1973, so for any date from 1973 on the
    bands cannot be confused."""
    with np.errstate(invalid="ignore"):
        return np.searchsorted(_UNIT_EDGES, np.abs(values.astype(np.float64)), side="right")


def _epoch_to_ms(values: np.ndarray, band: int) -> np.ndarray:
    """Epoch numbers in unit ``band`` → int64 ms (floats rounded to the ms)."""
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore", over="ignore"):
            return np.round(np.nan_to_num(values, nan=0.0) * _UNIT_TO_MS[band]).astype(np.int64)
    values = values.astype(np.int64, copy=False)
    return values * 1000 if band == 0 else values // int(round(1 / _UNIT_TO_MS[band]))


def _check_one_unit(values: np.ndarray, valid: np.ndarray, band: int, bounds: TimeBounds,
                    where: str) -> None:
    """Refuse a column whose rows are in different units (e.g. seconds among milliseconds).

    The column's unit comes from its median; a row of another unit whose own reading is a
    plausible date means rows from two sources were joined, and converting it with the
    column's unit would put it centuries away (or in 1970). Rows implausible in every unit are
    left to the range check, whose message fits them better.
    """
    bands = _epoch_band(values)
    other = valid & (bands != band)
    if not other.any():
        return
    with np.errstate(invalid="ignore", over="ignore"):
        own_ms = values.astype(np.float64) * _UNIT_TO_MS[np.minimum(bands, 3)]
    joined = other & (own_ms >= bounds.earliest_ms) & (own_ms <= bounds.latest_ms)
    if joined.any():
        row = int(np.flatnonzero(joined)[0])
        raise InputError(
            f"{where}, data row {row + 1}: value {values[row].item()!r} is epoch "
            f"{UNIT_NAMES[bands[row]]} ({iso_ms(own_ms[row])}) but most of the column is epoch "
            f"{UNIT_NAMES[band]}; {int(joined.sum())} row(s) use the other unit, so the file "
            f"joins two sources: convert the column to one unit (e.g. all milliseconds) and run "
            f"prepare again")


def check_time_range(open_ms: np.ndarray, valid: np.ndarray, bounds: TimeBounds, where: str,
                     column: pa.ChunkedArray | None = None) -> None:
    """Refuse valid times outside ``bounds``, naming the first such data row and the flag."""
    outside = valid & ((open_ms < bounds.earliest_ms) | (open_ms > bounds.latest_ms))
    if not outside.any():
        return
    row = int(np.flatnonzero(outside)[0])
    count = int(outside.sum())
    more = f" ({count - 1} more row(s) like it)" if count > 1 else ""
    value = f"value {column[row].as_py()!r} = " if column is not None else ""
    if open_ms[row] < bounds.earliest_ms:
        side, flag = f"before {bounds.earliest_text}", "--earliest YYYY-MM-DD"
    else:
        side, flag = f"after {bounds.latest_text}", "--latest YYYY-MM-DD"
    raise InputError(
        f"{where}, data row {row + 1}: time {value}{iso_ms(open_ms[row])} is {side}{more}: "
        f"almost always a wrong unit, a typo or a placeholder; fix or remove the row, or pass "
        f"{flag} if such dates are real")


def _check_no_epoch_among_dates(text: np.ndarray, valid: np.ndarray, where: str) -> None:
    """Refuse epoch numbers in a column whose other rows are date strings.

    Unparseable times are normally dropped and counted, but an epoch number there is a real time
    in another format (rows joined from two sources); dropping it would lose bars without a
    reason a user can see in the file.
    """
    if not valid.any() or valid.all():
        return
    bad = pd.Series(text[~valid], dtype="string").str.strip()
    epoch = bad.str.fullmatch(r"[+-]?\d{9,}(\.\d+)?").fillna(False).to_numpy()
    if epoch.any():
        row = int(np.flatnonzero(~valid)[np.flatnonzero(epoch)[0]])
        raise InputError(f"{where}, data row {row + 1}: {text[row]!r} is an epoch number but other "
                         f"rows are date strings; the file joins two sources: write every time in "
                         f"one format")


def parse_time_column(column: pa.ChunkedArray, time_format: str | None, where: str,
                      bounds: TimeBounds | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Arrow time column → (int64 ms UTC, valid mask). ``where`` names file and column in errors.

    Valid times must lie within ``bounds`` (default ``time_bounds()``) and epoch numbers must
    share one unit; anything else stops with the data row (see ``check_time_range``).
    """
    bounds = bounds if bounds is not None else time_bounds()
    kind = column.type
    if time_format is None and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        valid = ~np.asarray(pc.is_null(column, nan_is_null=True))
        raw = pc.fill_null(column, 0).to_numpy()
        finite = raw[valid & np.isfinite(raw)] if raw.dtype.kind == "f" else raw[valid]
        band = int(_epoch_band(np.array([np.median(np.abs(finite))]))[0]) if finite.size else 1
        _check_one_unit(raw, valid, band, bounds, where)
        open_ms = _epoch_to_ms(raw, band)
        check_time_range(open_ms, valid, bounds, where, column)
        return open_ms, valid
    if time_format is None and (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
        valid = ~np.asarray(pc.is_null(column))
        as_ms = pc.cast(pc.cast(column, pa.timestamp("ms")) if pa.types.is_date(kind)
                        else column, pa.timestamp("ms", tz=getattr(kind, "tz", None)))
        open_ms = pc.fill_null(as_ms.cast(pa.int64()), 0).to_numpy()
        check_time_range(open_ms, valid, bounds, where)
        return open_ms, valid
    text = np.asarray(column.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
    fmt = time_format if time_format is not None else "ISO8601"
    try:
        parsed = pd.to_datetime(pd.Series(text), format=fmt, utc=True, errors="coerce")
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: time format {fmt!r} is not usable ({exc}); pass a strftime "
                         f"format such as --time-format '%Y-%m-%d %H:%M:%S'") from None
    valid = parsed.notna().to_numpy()
    if time_format is None:  # with a format, digits-only times can be legitimate ("%Y%m%d")
        _check_no_epoch_among_dates(text, valid, where)
    if text.size and not valid.any():
        raise InputError(f"{where}: no value parses as a time (first value {text[0]!r} with format "
                         f"{fmt!r}); pass --time-format matching the column, e.g. '%d/%m/%Y %H:%M'")
    if not valid.all():
        parsed = parsed.fillna(pd.Timestamp(0, tz="UTC"))
    open_ms = parsed.dt.as_unit("ms").astype("int64").to_numpy()
    check_time_range(open_ms, valid, bounds, where, column)
    return open_ms, valid


def _number_problem(value: str, decimal: str, delimiter: str) -> str:
    """Why a text cell with digits is not a number here, and how to fix it (one clause)."""
    if _THOUSANDS.fullmatch(value):  # "1,234.5", "1.234,5", "1 234": grouped, never a plain number
        return ("has a thousands separator; save the numbers without digit grouping "
                "(e.g. 1234.5) and run prepare again")
    if decimal == "." and "," in value:
        return (f"uses a decimal comma in a file separated by {_DELIMITER_NAMES[delimiter]}, "
                f"where the decimal mark is '.'; save the file with ';' between fields or with "
                f"'.' as the decimal mark")
    if decimal == "," and "." in value:
        return ("uses '.' as the decimal mark while other numbers in the file use ','; save the "
                "file with one decimal mark")
    return "is not a number; fix the cell or leave it empty (the row is then dropped and counted)"


def parse_numbers(text, where: str, decimal: str = ".", delimiter: str = ",") -> np.ndarray:
    """Text cells → float64 in the file's convention; NaN for empty or word cells (n/a, null, -).

    A cell with digits that is not a plain number in that convention ("1,234.5", "12.5 USD",
    "1.5" in a decimal-comma file) stops with its data row: reading it as NaN would silently
    drop the bar, reading it any other way would be a guess.
    """
    cells = pd.Series(np.asarray(text, dtype=object), dtype="string").str.strip()
    plain = cells
    if decimal == ",":
        plain = cells.str.replace(",", ".", regex=False).where(
            ~cells.str.contains(".", regex=False).fillna(False))
    values = pd.to_numeric(plain.astype(object), errors="coerce").astype(np.float64)
    bad = values.isna() & cells.str.contains(r"\d", regex=True).fillna(False)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        more = f" ({int(bad.sum()) - 1} more cell(s) like it)" if bad.sum() > 1 else ""
        raise InputError(f"{where}, data row {row + 1}: {cells.iloc[row]!r}{more} "
                         f"{_number_problem(cells.iloc[row], decimal, delimiter)}")
    return values.to_numpy(np.float64)


def float_column(column: pa.ChunkedArray, where: str = "column", decimal: str = ".",
                 delimiter: str = ",") -> np.ndarray:
    """Any column → float64 with NaN for nulls; text goes through ``parse_numbers``."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    text = column.cast(pa.string()).to_numpy(zero_copy_only=False)
    return parse_numbers(text, where, decimal, delimiter)


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
                   bars=bars, time_valid=valid, empty_optional=tuple(empty_optional))


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
