"""Processed tables: bar timing (timeframe, gaps, no-trade windows), the ``tradable`` mask, and
the files ``<SYMBOL>.feather`` and ``manifest.json`` (written through :mod:`tbjax.atomic`).

Gap rule (what makes the next bar untradable, docs/DESIGN.md "Tradable bars"):
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

Also here: the check that one file holds one timeframe (``mixed_timeframe``) and the processed
files themselves (writers for staged temp files, the manifest reader that training trusts, and
which old tables a re-run removes).
"""

from __future__ import annotations

import json
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


def parse_timeframe(text: str, key: str = "--timeframe") -> int:
    """'15m', '1h', '4h', '1d', '1w', '30s' → milliseconds (prepare's and synth's --timeframe, the
    walk-forward spans given as durations; ``key`` names the setting in the error)."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", str(text).lower())
    if not match or int(match.group(1)) == 0:
        raise InputError(f"{key} {text!r} is not a length of time; use a number and a unit "
                         f"s/m/h/d/w, e.g. 1m, 15m, 1h, 4h, 1d, 90d, 12w")
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


MIXED_RUN_BARS = 24  # this many equal spacings in a row other than the bar length: a 2nd timeframe


def _spacing_runs(step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start index, length) of each run of equal consecutive values in ``step``."""
    starts = np.flatnonzero(np.r_[True, step[1:] != step[:-1]])
    return starts, np.diff(np.r_[starts, len(step)])


def mixed_timeframe(open_time: np.ndarray, spacing_ms: int) -> dict | None:
    """The first sign that sorted unique ``open_time`` holds bars of more than one length.

    Two signs, each impossible for one timeframe with missing bars (which only makes gaps):
    * a run of ``MIXED_RUN_BARS`` equal spacings other than the bar length ``spacing_ms`` (the
      file's median spacing), e.g. hourly bars followed by 4h bars;
    * a bar opening less than half a bar length after the previous one, e.g. hourly rows inserted
      into a daily file. Half, not all of it: daily bars stamped at local midnight are 23 h apart
      across a daylight-saving change.
    Returns None, or {"kind": "run"|"overlap", "first": i, "last": j, "step_ms": s} with bar
    indexes i..j (sorted order) and the offending spacing.
    """
    step = np.diff(open_time)
    if not step.size:
        return None
    starts, lengths = _spacing_runs(step)
    long_runs = np.flatnonzero((lengths >= MIXED_RUN_BARS) & (step[starts] != spacing_ms))
    close = np.flatnonzero(2 * step < spacing_ms)
    run = int(starts[long_runs[0]]) if long_runs.size else None
    if run is not None and (not close.size or run <= close[0]):
        last = run + int(lengths[long_runs[0]])
        return {"kind": "run", "first": run, "last": last, "step_ms": int(step[run])}
    if close.size:
        i = int(close[0])
        return {"kind": "overlap", "first": i, "last": i + 1, "step_ms": int(step[i])}
    return None


# ----------------------------------------------------------------------------- processed files
# Writers take the path to write (a temporary file from tbjax.atomic), so prepare can stage every
# table and the manifest and rename them only when all are written.


def write_table(columns: dict[str, np.ndarray], path: Path) -> None:
    """Write a column dict to ``path`` as Feather v2 (zstd)."""
    table = pa.table({name: pa.array(values) for name, values in columns.items()})
    pa_feather.write_feather(table, path, compression="zstd")


def manifest_text(document: dict) -> str:
    """manifest.json's exact text: sorted keys, indent 2, trailing newline (byte-stable)."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_manifest(document: dict, path: Path) -> None:
    """Write ``manifest_text(document)`` to ``path`` as UTF-8 with '\\n' line ends."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(manifest_text(document))


def read_manifest(folder: Path, fix: str) -> dict | None:
    """``folder/manifest.json`` parsed and checked, or None when the folder has none.

    The manifest is the list of what one prepare run wrote; a file that cannot be read or
    parsed, or lacks its ``symbols`` table, must stop a run (``fix`` says how to rebuild it)
    rather than let stray files stand in for the data set.
    """
    path = Path(folder) / "manifest.json"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, ValueError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise InputError(f"manifest {path} is unreadable or corrupt ({detail}); re-run prepare: "
                         f"{fix}") from None
    symbols = document.get("symbols") if isinstance(document, dict) else None
    if not isinstance(symbols, dict) or not symbols or not all(
            isinstance(entry, dict) for entry in symbols.values()):
        raise InputError(f"manifest {path} has no 'symbols' table listing the processed files; "
                         f"re-run prepare: {fix}")
    return document


def manifest_files(document: dict, folder: Path, fix: str) -> dict[str, Path]:
    """Symbol → table path for every symbol the manifest lists; each file must exist.

    A listed file that is missing means the folder was edited after prepare ran; training on the
    rest would silently drop a symbol.
    """
    folder = Path(folder)
    files = {}
    for symbol, entry in document["symbols"].items():
        name = entry.get("output_file") or entry.get("file") or f"{symbol}.feather"
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            raise InputError(f"manifest {folder / 'manifest.json'} names {name!r} for {symbol}, "
                             f"not a file in that folder; re-run prepare: {fix}")
        path = folder / name
        if not path.is_file():
            raise InputError(f"manifest {folder / 'manifest.json'} lists {name} for {symbol} but "
                             f"the file is missing; re-run prepare: {fix}")
        files[str(symbol).upper()] = path
    return files


def _written_by_prepare(path: Path) -> bool:
    """True for a Feather file with prepare's signature columns (open_time and tradable)."""
    try:
        with pa.memory_map(str(path)) as source:
            names = pa.ipc.open_file(source).schema.names
    except (pa.ArrowException, OSError, ValueError):
        return False
    return "open_time" in names and "tradable" in names


def stale_tables(folder: Path, keep: set[str], previous: dict | None) -> list[Path]:
    """Tables of an earlier prepare run in ``folder`` that the new run did not write.

    Ours means listed by the previous manifest, or a ``*.feather`` with prepare's columns (for a
    folder whose manifest was lost); anything else a user keeps there is left alone.
    """
    listed = set()
    if previous is not None:
        listed = {entry.get("output_file") or entry.get("file")
                  for entry in previous["symbols"].values()}
    stale = []
    for path in sorted(Path(folder).glob("*.feather")):
        if path.name in keep or path.name.startswith(".") or not path.is_file():
            continue
        if path.name in listed or _written_by_prepare(path):
            stale.append(path)
    return stale


def read_processed(path: Path) -> dict[str, np.ndarray]:
    """Read a processed ``<SYMBOL>.feather`` back into a dict of NumPy columns."""
    try:
        table = pa_feather.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read processed table {path}: {str(exc).splitlines()[0]}; "
                         f"re-run python -m tbjax.prepare") from None
    return {name: table[name].to_numpy() for name in table.column_names}
