"""Time splits: which rows of a symbol are train, validation, test, embargo or outside.

Splits are time ranges shared by all symbols (inclusive bounds, epoch milliseconds UTC). Rows are
labelled by their open time; then the first ``embargo_bars`` rows of validation and of test become
embargo rows that no role reads. With an embargo of at least the feature warm-up
(:func:`tbjax.data.features.warmup_bars`), no validation or test observation window or indicator
lookback overlaps the previous split's rows used for learning, which is docs/DESIGN.md invariant 2
("purging and embargo", Lopez de Prado, 2018, Advances in Financial Machine Learning, ch. 7).

Without a configured test range the test split is every row after ``val_end`` (``inferred_test``),
so a run always reports an out-of-sample test.
"""

from __future__ import annotations

import datetime as dt
import numbers
from dataclasses import dataclass

import numpy as np

from tbjax.data.market import ROLE_NAMES as MARKET_ROLE_NAMES, ROLE_TEST, ROLE_TRAIN, ROLE_VAL  # noqa: F401
from tbjax.errors import InputError

# The three roles an env reads are defined with MarketData; splits add the rows no role reads.
ROLE_EMBARGO, ROLE_OUTSIDE = 3, -1
ROLE_NAMES = {**dict(enumerate(MARKET_ROLE_NAMES)), ROLE_EMBARGO: "embargo", ROLE_OUTSIDE: "outside"}

_MS_PER_DAY = 86_400_000


def _to_ms(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(round(moment.timestamp() * 1000))


def parse_time(value, key: str, end_of_day: bool = False) -> int:
    """A configured point in time → epoch milliseconds UTC.

    Accepts an ISO date ``"2021-06-30"`` or datetime ``"2021-06-30T12:00:00"`` (``Z`` or an offset
    allowed; without one it is UTC), a ``datetime.date`` / ``datetime.datetime`` (YAML turns
    unquoted dates into these), or epoch seconds as int/float. With ``end_of_day`` a date without a
    time means the last millisecond of that day, so an inclusive end date covers the whole day.
    Anything else raises :class:`InputError` naming ``key``.
    """
    if isinstance(value, bool) or value is None:
        raise InputError(f"{key}: {value!r} is not a time; give an ISO date like '2021-06-30' "
                         "or epoch seconds")
    if isinstance(value, numbers.Real):
        if not np.isfinite(value):
            raise InputError(f"{key}: {value!r} is not a finite epoch-seconds value")
        return int(round(float(value) * 1000))
    if isinstance(value, dt.datetime):
        return _to_ms(value)
    if isinstance(value, dt.date):
        start = _to_ms(dt.datetime(value.year, value.month, value.day))
        return start + _MS_PER_DAY - 1 if end_of_day else start
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return parse_time(dt.date.fromisoformat(text), key, end_of_day)
            return _to_ms(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            pass
    raise InputError(f"{key}: cannot read {value!r} as a time; use an ISO date '2021-06-30', "
                     "a datetime '2021-06-30T12:00:00Z' or epoch seconds")


def format_ms(ms: int | None) -> str:
    """Epoch ms → 'YYYY-MM-DD HH:MM' UTC for messages ('open' for a missing bound)."""
    if ms is None:
        return "open"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class SplitBounds:
    """Inclusive split bounds in epoch ms UTC; ``test_end`` None means up to the end of the data."""

    train_start: int
    train_end: int
    val_start: int
    val_end: int
    test_start: int | None
    test_end: int | None
    inferred_test: bool

    def ranges(self) -> dict[str, tuple[int | None, int | None]]:
        """{'train': (start, end), 'val': ..., 'test': ...} as configured."""
        return {"train": (self.train_start, self.train_end), "val": (self.val_start, self.val_end),
                "test": (self.test_start, self.test_end)}


def split_bounds(train_start, train_end, val_start, val_end, test_start=None,
                 test_end=None) -> SplitBounds:
    """Parse and check configured split bounds (values as :func:`parse_time` accepts).

    Date-only ends cover their whole day. Splits must be ordered train < val < test without
    overlap; without ``test_start``/``test_end`` the test split is inferred as every row after
    ``val_end``.
    """
    tr0, tr1 = parse_time(train_start, "train_start"), parse_time(train_end, "train_end", True)
    va0, va1 = parse_time(val_start, "val_start"), parse_time(val_end, "val_end", True)
    if test_start is None and test_end is not None:
        raise InputError(f"test_end is set ({test_end!r}) but test_start is not; set test_start "
                         "too, or leave both unset to test on every row after val_end")
    inferred = test_start is None
    te0 = va1 + 1 if inferred else parse_time(test_start, "test_start")
    te1 = None if test_end is None else parse_time(test_end, "test_end", True)

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise InputError(message)

    need(tr0 <= tr1, f"train_start ({format_ms(tr0)}) is after train_end ({format_ms(tr1)}); "
                     "swap them or move train_end later")
    need(va0 <= va1, f"val_start ({format_ms(va0)}) is after val_end ({format_ms(va1)}); "
                     "swap them or move val_end later")
    need(tr1 < va0, f"train_end ({format_ms(tr1)}) must be before val_start ({format_ms(va0)}); "
                    "move train_end earlier or val_start later so the splits do not overlap")
    need(va1 < te0, f"val_end ({format_ms(va1)}) must be before test_start ({format_ms(te0)}); "
                    "move val_end earlier or test_start later so the splits do not overlap")
    need(te1 is None or te0 <= te1, f"test_start ({format_ms(te0)}) is after test_end "
                                    f"({format_ms(te1)}); swap them or move test_end later")
    return SplitBounds(tr0, tr1, va0, va1, te0, te1, inferred)


def assign_roles(open_time_ms: np.ndarray, bounds: SplitBounds, embargo_bars: int,
                 symbol: str, embargo_fix: str = "reduce the embargo (data.embargo_bars)") -> np.ndarray:
    """Role of every row (int8): train / val / test by open time, the first ``embargo_bars`` rows of
    val and of test → embargo, rows in no range → outside.

    Raises :class:`InputError` naming the symbol, the split, its configured and the data's actual
    date range when a split has no usable rows. ``embargo_fix`` is the advice when the embargo
    swallowed a split: the caller knows whether the embargo was set (``data.embargo_bars``) or
    follows from ``env.window_size``.
    """
    t = np.asarray(open_time_ms, np.int64)
    roles = np.full(len(t), ROLE_OUTSIDE, np.int8)
    test_end = np.iinfo(np.int64).max if bounds.test_end is None else bounds.test_end
    roles[(t >= bounds.train_start) & (t <= bounds.train_end)] = ROLE_TRAIN
    roles[(t >= bounds.val_start) & (t <= bounds.val_end)] = ROLE_VAL
    roles[(t >= bounds.test_start) & (t <= test_end)] = ROLE_TEST
    data_range = (f"{format_ms(int(t[0]))} .. {format_ms(int(t[-1]))}" if len(t)
                  else "no rows at all")
    for role in (ROLE_VAL, ROLE_TEST):
        rows = np.flatnonzero(roles == role)
        roles[rows[:embargo_bars]] = ROLE_EMBARGO
    for role, (start, end) in zip((ROLE_TRAIN, ROLE_VAL, ROLE_TEST), bounds.ranges().values()):
        if np.any(roles == role):
            continue
        name = ROLE_NAMES[role]
        configured = f"{format_ms(start)} .. {format_ms(end)}"
        if role == ROLE_TEST and bounds.inferred_test:
            configured = f"every row after val_end ({format_ms(bounds.val_end)})"
        in_range = int(np.sum((t >= start) & (t <= (test_end if role == ROLE_TEST else end))))
        why = (f"all {in_range} of its rows fall in the {embargo_bars}-bar embargo"
               if in_range else "no rows fall in it")
        if in_range:
            fix = f"widen the {name} range or {embargo_fix}"
        elif role == ROLE_TEST and bounds.inferred_test:
            fix = "move val_end earlier or set test_start/test_end inside the data range"
        else:
            fix = f"move {name}_start/{name}_end inside the data range"
        raise InputError(f"symbol {symbol}: the {name} split is empty ({why}); configured "
                         f"{configured}, data covers {data_range}; {fix}")
    return roles


def role_ranges(roles: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous (start, end_exclusive) rows of train, val and test; (0, 0) for a missing role.

    Roles come from time ranges over sorted rows, so each is one block; anything else is a bug.
    """
    roles = np.asarray(roles)
    out = []
    for role in (ROLE_TRAIN, ROLE_VAL, ROLE_TEST):
        rows = np.flatnonzero(roles == role)
        if len(rows) == 0:
            out.append((0, 0))
            continue
        start, end = int(rows[0]), int(rows[-1]) + 1
        if end - start != len(rows):
            raise ValueError(f"role {ROLE_NAMES[role]} is not one contiguous block of rows")
        out.append((start, end))
    return out
