"""Side data: as-of backward merge (never a future value), event distances, schema errors."""

import numpy as np
import pandas as pd
import pytest

from tbjax.data import sidedata
from tbjax.errors import InputError

HOUR = 3_600_000
DAY = 24 * HOUR
DAY0 = 1_704_067_200_000  # 2024-01-01T00:00Z


def write_fear_greed(path, times_ms, values):
    iso = pd.to_datetime(np.asarray(times_ms), unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ")
    pd.DataFrame({"timestamp": iso, "value": values}).to_csv(path, index=False)
    return path


def test_fear_greed_is_asof_backward_where_a_nearest_merge_would_peek(tmp_path):
    # Published daily at 00:00: 10 on day 0 and 90 on day 1 (file rows deliberately unsorted).
    series = sidedata.read_fear_greed(write_fear_greed(tmp_path / "fg.csv", [DAY0 + DAY, DAY0],
                                                       [90, 10]))
    # Hourly bars opening day0 -01:00 (before any value), 00:00, 21:00, 22:00, 23:00.
    open_time = DAY0 + np.array([-1, 0, 21, 22, 23]) * HOUR
    decision = sidedata.decision_times(open_time, HOUR)
    got = sidedata.fear_greed_asof(decision, series)
    # Decision = bar close. -01:00 bar closes at 00:00 day 0 → 10 is published exactly then.
    # 22:00 bar decides at 23:00: nearest publication is day 1 (1 h ahead) but it is the future.
    # 23:00 bar decides at 00:00 day 1, the moment 90 is published → usable.
    np.testing.assert_array_equal(got, np.float32([0.10, 0.10, 0.10, 0.10, 0.90]))
    nearest = pd.merge_asof(pd.DataFrame({"t": decision}),
                            pd.DataFrame({"t": series.times, "v": series.values / 100}),
                            on="t", direction="nearest")["v"].to_numpy()
    assert nearest[3] == 0.90 and got[3] == np.float32(0.10)  # the naive merge would leak
    backward = pd.merge_asof(pd.DataFrame({"t": decision}),
                             pd.DataFrame({"t": series.times, "v": series.values / 100}),
                             on="t", direction="backward")["v"].to_numpy()
    np.testing.assert_allclose(got, backward, rtol=1e-7)


def test_fear_greed_is_nan_before_the_first_publication(tmp_path):
    series = sidedata.read_fear_greed(write_fear_greed(tmp_path / "fg.csv", [DAY0], [55]))
    got = sidedata.fear_greed_asof(np.array([DAY0 - 1, DAY0, DAY0 + 1]), series)
    assert np.isnan(got[0]) and got[1] == got[2] == np.float32(0.55)


def test_event_distances_by_hand(tmp_path):
    frame = pd.DataFrame({
        "time": ["2024-01-01T10:30:00Z", "2024-01-01T12:00:00Z", "2024-01-01T15:00:00Z",
                 "2024-01-01T20:00:00Z"],
        "Importance": ["HIGH", "low", "3", "medium"],
    })
    frame.to_csv(tmp_path / "events.csv", index=False)
    series = sidedata.read_events(tmp_path / "events.csv")
    np.testing.assert_array_equal(series.values, [3, 1, 3, 2])
    # Hourly bars opening 09:00, 10:00, 11:00, 14:00, 15:00 → decisions 10:00, 11:00, 12:00, 15:00, 16:00.
    decision = sidedata.decision_times(DAY0 + np.array([9, 10, 11, 14, 15]) * HOUR, HOUR)
    since, until = sidedata.event_distances(decision, series, HOUR, cap=500)
    # High events at 10:30 and 15:00 only. since = floor((d - last) / 1h), until = ceil((next - d) / 1h).
    np.testing.assert_array_equal(since, np.float32([500, 0, 1, 0, 1]))
    np.testing.assert_array_equal(until, np.float32([1, 4, 3, 500, 500]))
    since_capped, until_capped = sidedata.event_distances(decision, series, HOUR, cap=2)
    np.testing.assert_array_equal(since_capped, np.float32([2, 0, 1, 0, 1]))
    np.testing.assert_array_equal(until_capped, np.float32([1, 2, 2, 2, 2]))


def test_event_distances_without_high_events_are_capped(tmp_path):
    pd.DataFrame({"timestamp": [DAY0], "importance": [1]}).to_csv(tmp_path / "e.csv", index=False)
    since, until = sidedata.event_distances(np.array([DAY0, DAY0 + DAY]),
                                            sidedata.read_events(tmp_path / "e.csv"), HOUR)
    np.testing.assert_array_equal(since, [500, 500])
    np.testing.assert_array_equal(until, [500, 500])


def test_side_features_only_include_what_was_given(tmp_path):
    series = sidedata.read_fear_greed(write_fear_greed(tmp_path / "fg.csv", [DAY0], [20]))
    got = sidedata.side_features(np.array([DAY0, DAY0 + HOUR]), HOUR, series, None)
    assert list(got) == ["fear_greed"]
    np.testing.assert_array_equal(got["fear_greed"], np.float32([0.2, 0.2]))


def test_side_data_schema_errors_name_file_column_and_row(tmp_path):
    pd.DataFrame({"timestamp": [DAY0], "score": [10]}).to_csv(tmp_path / "fg.csv", index=False)
    with pytest.raises(InputError, match=r"fg\.csv has no 'value' column .*found timestamp, score"):
        sidedata.read_fear_greed(tmp_path / "fg.csv")
    write_fear_greed(tmp_path / "fg2.csv", [DAY0, DAY0 + DAY], [10, 150])
    with pytest.raises(InputError, match=r"fg2\.csv, column 'value', row 2: value 150"):
        sidedata.read_fear_greed(tmp_path / "fg2.csv")
    pd.DataFrame({"timestamp": [DAY0], "importance": ["urgent"]}).to_csv(tmp_path / "ev.csv",
                                                                          index=False)
    with pytest.raises(InputError, match=r"ev\.csv, column 'importance', row 1: importance 'urgent'"):
        sidedata.read_events(tmp_path / "ev.csv")
    pd.DataFrame({"when": [DAY0], "importance": [3]}).to_csv(tmp_path / "ev2.csv", index=False)
    with pytest.raises(InputError, match=r"ev2\.csv has no 'timestamp' column"):
        sidedata.read_events(tmp_path / "ev2.csv")
    with pytest.raises(InputError, match=r"missing\.csv does not exist"):
        sidedata.read_events(tmp_path / "missing.csv")
