"""Time splits: parsing, roles by hand, embargo, inferred test, error messages."""

import datetime as dt

import numpy as np
import pytest

from tbjax.data.splits import (ROLE_EMBARGO, ROLE_OUTSIDE, ROLE_TEST, ROLE_TRAIN, ROLE_VAL,
                               assign_roles, parse_time, role_ranges, split_bounds)
from tbjax.errors import InputError

DAY = 86_400_000
JAN1 = 1_577_836_800_000  # 2020-01-01 00:00 UTC


def test_parse_time_forms():
    assert parse_time("2020-01-01", "k") == JAN1
    assert parse_time("2020-01-01", "k", end_of_day=True) == JAN1 + DAY - 1
    assert parse_time("2020-01-01T06:00:00", "k") == JAN1 + 6 * 3_600_000
    assert parse_time("2020-01-01T06:00:00Z", "k") == JAN1 + 6 * 3_600_000
    assert parse_time("2020-01-01T08:00:00+02:00", "k") == JAN1 + 6 * 3_600_000
    assert parse_time(1_577_836_800, "k") == JAN1
    assert parse_time(1_577_836_800.5, "k") == JAN1 + 500
    assert parse_time(dt.date(2020, 1, 1), "k") == JAN1
    assert parse_time(dt.datetime(2020, 1, 1, 1), "k") == JAN1 + 3_600_000
    for bad in ("01/02/2020", "soon", True, None, float("nan"), [2020]):
        with pytest.raises(InputError, match="train_end"):
            parse_time(bad, "train_end")


def day_times(n_days):
    """One bar per day starting 2020-01-01: row i opens on 2020-01-(i+1)."""
    return JAN1 + np.arange(n_days, dtype=np.int64) * DAY


def test_roles_by_hand_with_embargo():
    bounds = split_bounds("2020-01-02", "2020-01-04", "2020-01-06", "2020-01-09",
                          "2020-01-11", "2020-01-13")
    roles = assign_roles(day_times(15), bounds, embargo_bars=2, symbol="BTCUSDT")
    O, T, V, X, E = ROLE_OUTSIDE, ROLE_TRAIN, ROLE_VAL, ROLE_TEST, ROLE_EMBARGO
    #                  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15  (day of January)
    expected = np.array([O, T, T, T, O, E, E, V, V, O, E, E, X, O, O], np.int8)
    np.testing.assert_array_equal(roles, expected)
    assert roles.dtype == np.int8
    assert role_ranges(roles) == [(1, 4), (7, 9), (12, 13)]
    assert not bounds.inferred_test


def test_end_date_covers_whole_day_and_inferred_test():
    hours = JAN1 + np.arange(24 * 6, dtype=np.int64) * 3_600_000  # 6 days of hourly bars
    bounds = split_bounds("2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04")
    assert bounds.inferred_test and bounds.test_end is None
    assert bounds.test_start == bounds.val_end + 1
    roles = assign_roles(hours, bounds, embargo_bars=3, symbol="ETHUSDT")
    assert np.all(roles[:48] == ROLE_TRAIN)  # 2020-01-02 23:00 is still train
    assert np.all(roles[48:51] == ROLE_EMBARGO) and np.all(roles[51:96] == ROLE_VAL)
    assert np.all(roles[96:99] == ROLE_EMBARGO) and np.all(roles[99:] == ROLE_TEST)
    assert role_ranges(roles) == [(0, 48), (51, 96), (99, 144)]


def test_empty_split_message_names_symbol_split_and_ranges():
    bounds = split_bounds("2020-01-01", "2020-01-05", "2020-01-06", "2020-01-08",
                          "2021-01-01", "2021-02-01")
    with pytest.raises(InputError) as err:
        assign_roles(day_times(10), bounds, 1, "SOLUSDT")
    text = str(err.value)
    for part in ("SOLUSDT", "test split is empty", "2021-01-01", "2021-02-01 23:59",
                 "2020-01-01 00:00 .. 2020-01-10 00:00", "test_start/test_end"):
        assert part in text, (part, text)
    inferred = split_bounds("2020-01-01", "2020-01-05", "2020-01-06", "2020-01-10")
    with pytest.raises(InputError, match="every row after val_end.*move val_end earlier"):
        assign_roles(day_times(10), inferred, 1, "SOLUSDT")
    with pytest.raises(InputError, match="val split is empty.*embargo.*reduce the embargo"):
        assign_roles(day_times(20), split_bounds("2020-01-01", "2020-01-05", "2020-01-06",
                                                 "2020-01-08"), 3, "SOLUSDT")


def test_bad_ordering_messages():
    with pytest.raises(InputError, match="train_end .* must be before val_start"):
        split_bounds("2020-01-01", "2020-03-01", "2020-02-01", "2020-04-01")
    with pytest.raises(InputError, match="val_end .* must be before test_start"):
        split_bounds("2020-01-01", "2020-01-31", "2020-02-01", "2020-04-01", "2020-03-01")
    with pytest.raises(InputError, match="train_start .* is after train_end"):
        split_bounds("2020-02-01", "2020-01-01", "2020-03-01", "2020-04-01")
    with pytest.raises(InputError, match="test_end is set .* test_start is not"):
        split_bounds("2020-01-01", "2020-01-31", "2020-02-01", "2020-03-01", None, "2020-05-01")
    with pytest.raises(InputError, match="val_start"):
        split_bounds("2020-01-01", "2020-01-31", "next week", "2020-03-01")


def test_role_ranges_rejects_split_blocks():
    assert role_ranges(np.array([ROLE_TRAIN, ROLE_TRAIN, ROLE_OUTSIDE])) == [(0, 2), (0, 0),
                                                                              (0, 0)]
    with pytest.raises(ValueError):
        role_ranges(np.array([ROLE_TRAIN, ROLE_VAL, ROLE_TRAIN]))


def test_a_window_too_long_for_the_data_names_env_window_size_not_the_split():
    from tbjax.config import load_config
    from tbjax.data.processed import load_processed
    from tbjax.run.experiment import split_roles

    # default embargo = warm-up of the window: the advice names env.window_size
    cfg = load_config("configs/base.yaml", ["env.window_size=3000"])
    tables = load_processed(cfg)[0]
    with pytest.raises(InputError, match=r"val split is empty .*lower env.window_size \(the embargo defaults to its "
                                         r"warm-up, 3000 bars for env.window_size = 3000\) or set data.embargo_bars"):
        split_roles(cfg, tables)
    # no embargo, but the window alone is longer than the split
    cfg = load_config("configs/base.yaml", ["env.window_size=400", "data.embargo_bars=0"])
    with pytest.raises(InputError, match=r"env.window_size = 400 is longer than every symbol's val split \(at most "
                                         r"377 rows"):
        split_roles(cfg, tables)
    # an explicit embargo that swallows the split: the advice names data.embargo_bars
    cfg = load_config("configs/base.yaml", ["data.embargo_bars=1000"])
    with pytest.raises(InputError, match="lower data.embargo_bars"):
        split_roles(cfg, tables)
