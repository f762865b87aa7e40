"""The walk-forward fold plan: which bars each fold trains, validates and tests on.

Planned by bar INDEX of the union of all symbols' bar times over the span every symbol covers
(``union_times``), then mapped to
time ranges, so symbols are split by time (a symbol missing some bars simply has fewer rows in a
range). With N union bars and K = ``walkforward.folds``:

* fold k's out-of-sample segment (the bars its test returns are marked on) is
  ``[N - test - (K-1-k)*step, ... + test)``; with ``step_bars`` null (= ``test_bars``) the K
  segments tile the last K*test bars contiguously up to the last bar;
* its test ROLE rows start ``env.window_size`` bars earlier (the first decision needs a full
  window; those rows are never learned from), so the test walk's first marked bar is the
  segment's first bar and the stitched series has no gaps;
* before the test rows: ``embargo_bars`` embargo rows (default the warm-up, DESIGN.md
  invariant 2), the val rows, another embargo, then the train rows: from bar 0 (``expanding``)
  or the last ``train_bars`` (``rolling``; default fold 0's expanding length).

Defaults with null spans: ``val_bars = test_bars = N // (folds + 4)``, so for K = 4 the test
segments cover the last half of the data and fold 0 trains on about the first third.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tbjax.config import Config
from tbjax.data import features as feats
from tbjax.data.tables import parse_timeframe
from tbjax.errors import InputError


@dataclass(frozen=True)
class Fold:
    """Union-bar index ranges [start, end) of one fold's roles and its out-of-sample segment."""

    index: int
    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]      # test ROLE rows (window rows + segment)
    segment: tuple[int, int]   # bars whose test returns belong to this fold


def union_times(tables: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    """Sorted unique bar open times (ms) of every symbol, within the span ALL symbols cover.

    Every fold trains on every symbol (the env samples them all), so the plan starts at the latest
    first bar and ends at the earliest last bar: a symbol listed later than the others (GOOG in
    the shipped sample) then has train rows in fold 0 too. Rows outside that span are unused.
    """
    times = [np.asarray(t["open_time"], np.int64) for t in tables.values()]
    union = np.unique(np.concatenate(times))
    first, last = max(t[0] for t in times), min(t[-1] for t in times)
    return union[(union >= first) & (union <= last)]


def embargo_for(cfg: Config, per_day: float | None = None) -> int:
    emb = span_bars(cfg, "embargo_bars", per_day)
    return feats.warmup_bars(cfg.env.window_size) if emb is None else emb


def span_bars(cfg: Config, name: str, per_day: float | None) -> int | None:
    """``walkforward.<name>`` in bars: an int as written, a duration ('90d', '12w', '720h') times the
    data's average bars per day (``per_day``, :func:`bars_per_day`: union bars over the span they cover, so '365d' is
    about 252 bars of exchange-daily data and 8760 of hourly crypto), None when null."""
    value = getattr(cfg.walkforward, name)
    if not isinstance(value, str):
        return value
    if per_day is None:
        raise InputError(f"walkforward.{name} = {value!r}: a duration needs the data's bar times; give a number "
                         "of bars instead")
    bars = int(round(parse_timeframe(value, f"walkforward.{name}") / 86_400_000 * per_day))
    if bars < (name != "embargo_bars"):
        raise InputError(f"walkforward.{name} = {value!r} is {bars} bars of this data; give a longer duration")
    return bars


def bars_per_day(union: np.ndarray) -> float | None:
    """Average union bars per day over the planned span (None for fewer than two bars)."""
    span = float(union[-1] - union[0]) if len(union) > 1 else 0.0
    return (len(union) - 1) / span * 86_400_000 if span > 0 else None


def plan_folds(cfg: Config, n_bars: int, per_day: float | None = None) -> list[Fold]:
    """The K folds over ``n_bars`` union bars (``per_day``: :func:`bars_per_day`, for spans given as
    durations); InputError naming ``walkforward.*`` for a bad plan."""
    w, window = cfg.walkforward, cfg.env.window_size
    k_folds, emb = w.folds, embargo_for(cfg, per_day)
    default = n_bars // (k_folds + 4)
    test = span_bars(cfg, "test_bars", per_day) or default
    val = span_bars(cfg, "val_bars", per_day) or default
    step = span_bars(cfg, "step_bars", per_day) or test
    if step < test:
        raise InputError(f"walkforward.step_bars = {step} is below walkforward.test_bars = {test}: the folds' "
                         "test segments would overlap; set step_bars >= test_bars (or null)")
    if val < window + 1 or test < 1:
        raise InputError(f"walkforward.val_bars = {val} is fewer than env.window_size + 1 = {window + 1} "
                         f"(with {n_bars} bars and walkforward.folds = {k_folds}); set walkforward.val_bars "
                         "or lower walkforward.folds / env.window_size")
    need_train = window + cfg.env.episode_len + 1
    first_seg = n_bars - test - (k_folds - 1) * step
    fold0_train = first_seg - window - emb - val - emb
    train_bars = span_bars(cfg, "train_bars", per_day)
    train_len = train_bars if w.train_mode == "rolling" and train_bars else fold0_train
    if fold0_train < need_train or train_len < need_train or train_len > fold0_train:
        raise InputError(
            f"walkforward plan does not fit {n_bars} bars: fold 0 has {fold0_train} train bars available "
            f"(train_bars {train_len}), but needs at least env.window_size + env.episode_len + 1 = {need_train} "
            f"and at most what is available; lower walkforward.folds, walkforward.test_bars, walkforward.val_bars, "
            f"walkforward.step_bars or walkforward.embargo_bars (now {emb}), or fix walkforward.train_bars")
    folds = []
    for k in range(k_folds):
        seg0 = first_seg + k * step
        test_rows = (seg0 - window, seg0 + test)
        val_rows = (test_rows[0] - emb - val, test_rows[0] - emb)
        train_end = val_rows[0] - emb
        train0 = 0 if w.train_mode == "expanding" else train_end - train_len
        folds.append(Fold(k, (train0, train_end), val_rows, test_rows, (seg0, seg0 + test)))
    return folds


def symbol_ranges(fold: Fold, union: np.ndarray, open_time: np.ndarray) -> list[tuple[int, int]]:
    """A symbol's [start, end) rows of train, val and test in ``fold`` (by time; (0, 0) if none)."""
    t = np.asarray(open_time, np.int64)
    out = []
    for a, b in (fold.train, fold.val, fold.test):
        lo, hi = np.searchsorted(t, union[a], "left"), np.searchsorted(t, union[b - 1], "right")
        out.append((int(lo), int(hi)) if hi > lo else (0, 0))
    return out


def check_ranges(fold: Fold, symbol: str, ranges: list[tuple[int, int]], window: int) -> None:
    """Every split of a fold must hold a decision for this symbol (window + 1 rows)."""
    for name, (a, b) in zip(("train", "val", "test"), ranges):
        if b - a < window + 1:
            raise InputError(f"walkforward fold {fold.index}: symbol {symbol} has {b - a} {name} rows, fewer than "
                             f"env.window_size + 1 = {window + 1}; change walkforward.{name}_bars or "
                             "walkforward.folds")
