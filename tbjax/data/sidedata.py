"""Side data merged as-of BACKWARD onto bars: nothing published after a bar's decision time.

Decision time. The agent decides on bar t at its close and fills at bar t+1's open (docs/DESIGN.md
invariant 1), so a value may be used on bar t only if it was published at or before
``open_time_t + timeframe`` (the bar's close). That is the one time every side feature is taken
at.

* Fear & Greed (CSV ``timestamp, value`` with value 0..100, e.g. alternative.me's crypto index):
  ``fear_greed`` = value / 100 of the latest row with timestamp <= decision time; NaN before the
  first published value (the feature pipeline maps NaN to 0 after scaling).
* Scheduled economic events (CSV ``timestamp, importance`` with low/medium/high or 1..3): only
  high-importance events count. ``bars_since_event`` = floor((decision - latest event at or
  before it) / timeframe); ``bars_until_event`` = ceil((next event after the decision time -
  decision) / timeframe). Scheduled release times are public well in advance, so looking at the
  next one is not lookahead (its outcome is never used). Both are measured in wall-clock
  timeframes (a weekend counts for daily stock bars) and capped at ``EVENT_CAP_BARS`` = 500, also
  when there is no event on that side: "long ago / far away" is one value, not a growing number.

Rows with equal timestamps keep their file order and the last one wins (a later correction).
All merges are ``numpy.searchsorted`` over sorted event times, no Python loop over rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from tbjax.data.hashing import file_sha256
from tbjax.data.klines import TIME_COLUMNS, normal_name, read_raw_table
from tbjax.data.textformat import float_column, number_format
from tbjax.data.timeparse import TimeBounds, parse_time_column
from tbjax.errors import InputError

EVENT_CAP_BARS = 500
FEAR_GREED_VALUE_COLUMNS = ("value", "fear_greed", "fng_value", "fear_and_greed")
IMPORTANCE_COLUMNS = ("importance", "impact")
_IMPORTANCE_WORDS = {"low": 1, "medium": 2, "high": 3, "1": 1, "2": 2, "3": 3}
HIGH_IMPORTANCE = 3
SIDE_TIME_COLUMNS = ("timestamp",) + tuple(c for c in TIME_COLUMNS if c != "timestamp")


@dataclass(frozen=True)
class TimedSeries:
    """Sorted event times (int64 ms UTC) with one value each, plus the source file's hash."""

    path: Path
    sha256: str
    times: np.ndarray
    values: np.ndarray


def _find(table: pa.Table, choices: tuple, path: Path, role: str) -> str:
    by_name = {}
    for name in table.column_names:
        by_name.setdefault(normal_name(name), name)
    hit = next((c for c in choices if c in by_name), None)
    if hit is None:
        raise InputError(f"{role} file {path} has no {choices[0]!r} column (accepted: "
                         f"{', '.join(choices)}; found {', '.join(table.column_names)}); "
                         f"rename the column")
    return by_name[hit]


def _read_timed(path: Path, role: str, value_columns: tuple, time_format: str | None,
                bounds: TimeBounds | None):
    """(path, times, value column, its name, decimal mark, field separator) of one side CSV.

    Times must all parse and lie within ``bounds`` (a side value dated 1970 or 2100 is a misread
    that would apply to every bar or to none).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{role} file {path} does not exist; pass an existing CSV")
    table = read_raw_table(path, time_format)
    if table.num_rows == 0:
        raise InputError(f"{role} file {path} has no rows; remove the option or add data")
    time_name = _find(table, SIDE_TIME_COLUMNS, path, role)
    value_name = _find(table, value_columns, path, role)
    times, valid = parse_time_column(table[time_name], time_format,
                                     f"{role} file {path}, column '{time_name}'", bounds)
    if not valid.all():
        row = int(np.flatnonzero(~valid)[0])
        raise InputError(f"{role} file {path}, column '{time_name}', row {row + 1}: time is "
                         f"missing or unparseable; fix or remove that row")
    decimal, delimiter = number_format(table)
    return path, times, table[value_name], value_name, decimal, delimiter


def read_fear_greed(path: Path, time_format: str | None = None,
                    bounds: TimeBounds | None = None) -> TimedSeries:
    """Read a Fear & Greed CSV; values must be finite and within 0..100."""
    path, times, column, name, decimal, delimiter = _read_timed(
        path, "fear & greed", FEAR_GREED_VALUE_COLUMNS, time_format, bounds)
    values = float_column(column, f"fear & greed file {path}, column '{name}'", decimal, delimiter)
    bad = ~(np.isfinite(values) & (values >= 0.0) & (values <= 100.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"fear & greed file {path}, column '{name}', row {row + 1}: value "
                         f"{column[row].as_py()!r} is not a number in 0..100; fix that row")
    order = np.argsort(times, kind="stable")
    return TimedSeries(path, file_sha256(path), times[order], values[order])


def read_events(path: Path, time_format: str | None = None,
                bounds: TimeBounds | None = None) -> TimedSeries:
    """Read a scheduled-events CSV; importance is low/medium/high (any case) or 1..3."""
    path, times, column, name, _, _ = _read_timed(path, "events", IMPORTANCE_COLUMNS, time_format,
                                                  bounds)
    words = (pd.Series(column.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
             .str.strip().str.lower().str.replace(r"\.0$", "", regex=True))
    levels = words.map(_IMPORTANCE_WORDS).to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(levels).any():
        row = int(np.flatnonzero(np.isnan(levels))[0])
        raise InputError(f"events file {path}, column '{name}', row {row + 1}: importance "
                         f"{column[row].as_py()!r} is not low/medium/high or 1..3; fix that row")
    order = np.argsort(times, kind="stable")
    return TimedSeries(path, file_sha256(path), times[order], levels[order].astype(np.int64))


def decision_times(open_time: np.ndarray, timeframe_ms: int) -> np.ndarray:
    """The time a decision on each bar is made: its close, open_time + timeframe."""
    return np.asarray(open_time, np.int64) + np.int64(timeframe_ms)


def fear_greed_asof(decision_ms: np.ndarray, series: TimedSeries) -> np.ndarray:
    """value / 100 of the latest publication at or before each decision time (NaN before any)."""
    latest = np.searchsorted(series.times, decision_ms, side="right") - 1
    scaled = series.values[np.maximum(latest, 0)] / 100.0
    return np.where(latest >= 0, scaled, np.nan).astype(np.float32)


def event_distances(decision_ms: np.ndarray, series: TimedSeries, timeframe_ms: int,
                    cap: int = EVENT_CAP_BARS) -> tuple[np.ndarray, np.ndarray]:
    """(bars_since_event, bars_until_event) for high-importance events, capped at ``cap``."""
    events = series.times[series.values >= HIGH_IMPORTANCE]
    since = np.full(len(decision_ms), float(cap))
    until = np.full(len(decision_ms), float(cap))
    if events.size:
        latest = np.searchsorted(events, decision_ms, side="right") - 1
        has_past = latest >= 0
        elapsed = decision_ms[has_past] - events[latest[has_past]]
        since[has_past] = np.minimum(elapsed // timeframe_ms, cap)
        following = latest + 1
        has_next = following < events.size
        ahead = events[following[has_next]] - decision_ms[has_next]
        until[has_next] = np.minimum(-(-ahead // timeframe_ms), cap)
    return since.astype(np.float32), until.astype(np.float32)


def side_features(open_time: np.ndarray, timeframe_ms: int, fear_greed: TimedSeries | None,
                  events: TimedSeries | None) -> dict[str, np.ndarray]:
    """The side feature columns requested, all taken at the bar's decision time."""
    decision = decision_times(open_time, timeframe_ms)
    out = {}
    if fear_greed is not None:
        out["fear_greed"] = fear_greed_asof(decision, fear_greed)
    if events is not None:
        out["bars_since_event"], out["bars_until_event"] = event_distances(
            decision, events, timeframe_ms)
    return out
