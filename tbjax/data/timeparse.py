"""Time columns of raw tables: epoch units, ISO / strftime strings, the plausible range.

Time values may be epoch seconds, milliseconds, microseconds or nanoseconds (detected by the
magnitude of the median value: Binance spot dumps switched from ms to µs in 2025), ISO-8601
strings (naive strings are taken as UTC), native timestamp/date columns, or strings in a
user-given ``strftime`` format. Everything becomes int64 ms UTC. A column whose epoch values mix
units, an epoch number among date strings, and any time outside ``TimeBounds`` (default
1990-01-01 .. now + 1 year) are refused with the data row: they are misread data, never real bars.
Used by the kline reader (:mod:`tbjax.data.klines`) and the side-data reader
(:mod:`tbjax.data.sidedata`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tbjax.errors import InputError

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
