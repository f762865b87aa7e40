"""Processed tables: bar timing (timeframe, gaps, no-trade windows), the ``tradable`` mask, and
atomic file I/O for ``<SYMBOL>.feather`` and ``manifest.json``.

Gap rule (what makes the next bar untradable, DESIGN.md "tradable"):
* Daily exchange data (timeframe 1 day and no bar opening on a Saturday or Sunday UTC): a gap is a
  jump of more than 4 calendar days between consecutive open times. A weekend is 3 days and a
  weekend plus a Monday or Friday holiday 4, so ordinary closures never count; a longer closure
  (e.g. NYSE 11-14 Sep 2001) does.
* Everything else (24/7 markets, intraday data): a gap is a spacing of more than 1.5 x timeframe.
  Intraday exchange data therefore flags each session's first bar, which is where overnight
  price jumps make a fill at the open unlike the previous close.

A bar is tradable unless its volume is 0, it is the first bar after a gap, or its UTC open time
of day falls inside a configured no-trade window [start, end) (a window with start > end wraps
past midnight, e.g. 23:55-00:05).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as pa_feather

from tbjax.errors import InputError

MS_PER_MINUTE = 60_000
MS_PER_DAY = 86_400_000
EXCHANGE_DAILY_GAP_MS = 4 * MS_PER_DAY
_UNIT_MS = {"s": 1000, "m": MS_PER_MINUTE, "h": 3_600_000, "d": MS_PER_DAY, "w": 7 * MS_PER_DAY}
_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


def parse_timeframe(text: str) -> int:
    """'15m', '1h', '4h', '1d', '1w', '30s' → milliseconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", str(text).lower())
    if not match or int(match.group(1)) == 0:
        raise InputError(f"--timeframe {text!r} is not a bar length; use a number and a unit "
                         f"s/m/h/d/w, e.g. 1m, 15m, 1h, 4h, 1d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def format_timeframe(ms: int) -> str:
    """Milliseconds → the largest exact unit, e.g. 3_600_000 → '1h', 5_400_000 → '90m'."""
    for unit in ("w", "d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


def median_spacing_ms(open_time: np.ndarray) -> int:
    """Median distance between consecutive open times (sorted unique input)."""
    return int(np.median(np.diff(open_time)))


def is_exchange_daily(open_time: np.ndarray, timeframe_ms: int) -> bool:
    """Daily bars with no Saturday/Sunday bar: a stock-exchange calendar."""
    if timeframe_ms != MS_PER_DAY:
        return False
    weekday = (np.floor_divide(open_time, MS_PER_DAY) + 3) % 7  # 1970-01-01 was a Thursday (3)
    return not bool(np.any(weekday >= 5))


def gap_threshold_ms(open_time: np.ndarray, timeframe_ms: int) -> int:
    """Largest spacing that is not a gap (see the module docstring)."""
    if is_exchange_daily(open_time, timeframe_ms):
        return EXCHANGE_DAILY_GAP_MS
    return (3 * timeframe_ms) // 2


def after_gap(open_time: np.ndarray, timeframe_ms: int) -> np.ndarray:
    """True on every bar whose distance to the previous bar exceeds the gap threshold."""
    flags = np.zeros(len(open_time), dtype=bool)
    flags[1:] = np.diff(open_time) > gap_threshold_ms(open_time, timeframe_ms)
    return flags


def parse_no_trade_window(text: str) -> tuple[int, int]:
    """'HH:MM-HH:MM' (UTC) → (start, end) in ms after midnight."""
    match = _WINDOW.match(str(text).strip())
    if match:
        h0, m0, h1, m1 = (int(g) for g in match.groups())
        if h0 < 24 and h1 < 24 and m0 < 60 and m1 < 60 and (h0, m0) != (h1, m1):
            return (h0 * 60 + m0) * MS_PER_MINUTE, (h1 * 60 + m1) * MS_PER_MINUTE
    raise InputError(f"--no-trade-window {text!r} is not a UTC time range; write HH:MM-HH:MM with "
                     f"different start and end, e.g. 00:00-00:05 (start > end wraps midnight)")


def in_no_trade_window(open_time: np.ndarray, windows: list[tuple[int, int]]) -> np.ndarray:
    """True where the bar's UTC open time of day lies in [start, end) of any window."""
    time_of_day = np.mod(open_time, MS_PER_DAY)
    inside = np.zeros(len(open_time), dtype=bool)
    for start, end in windows:  # a handful of windows, not rows
        if start < end:
            inside |= (time_of_day >= start) & (time_of_day < end)
        else:
            inside |= (time_of_day >= start) | (time_of_day < end)
    return inside


def tradable_mask(open_time: np.ndarray, volume: np.ndarray, timeframe_ms: int,
                  windows: list[tuple[int, int]]) -> np.ndarray:
    """False on zero-volume bars, on the first bar after a gap and inside no-trade windows."""
    return ((volume > 0.0) & ~after_gap(open_time, timeframe_ms)
            & ~in_no_trade_window(open_time, windows))


def gap_list(open_time: np.ndarray, timeframe_ms: int) -> list[tuple[int, int]]:
    """(last open time before, first open time after) for every gap."""
    starts = np.flatnonzero(after_gap(open_time, timeframe_ms))
    return list(zip(open_time[starts - 1].tolist(), open_time[starts].tolist()))


# ----------------------------------------------------------------------------- atomic I/O


def temp_path(path: Path) -> Path:
    """A hidden sibling of ``path`` (same folder, so os.replace is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_feather_temp(columns: dict[str, np.ndarray], path: Path) -> Path:
    """Write a column dict as Feather v2 (zstd) next to ``path``; return the temp file to rename."""
    temp = temp_path(path)
    table = pa.table({name: pa.array(values) for name, values in columns.items()})
    pa_feather.write_feather(table, temp, compression="zstd")
    return temp


def write_json_temp(document: dict, path: Path) -> Path:
    """Write JSON (sorted keys, indent 2, trailing newline) next to ``path``; return the temp file."""
    temp = temp_path(path)
    with open(temp, "w", encoding="utf-8", newline="\n") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return temp


def commit_files(pending: list[tuple[Path, Path]]) -> None:
    """Rename every (temp, final) pair into place; each rename is atomic on one file system."""
    for temp, final in pending:
        os.replace(temp, final)


def discard_files(pending: list[tuple[Path, Path]]) -> None:
    """Remove temp files after a failure, so no partial output is left behind."""
    for temp, _ in pending:
        Path(temp).unlink(missing_ok=True)


def read_processed(path: Path) -> dict[str, np.ndarray]:
    """Read a processed ``<SYMBOL>.feather`` back into a dict of NumPy columns."""
    try:
        table = pa_feather.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read processed table {path}: {str(exc).splitlines()[0]}; "
                         f"re-run python -m tbjax.prepare") from None
    return {name: table[name].to_numpy() for name in table.column_names}
