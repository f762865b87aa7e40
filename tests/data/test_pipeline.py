"""FeaturePipeline (train-only statistics) and the reproducible dataset export."""

import json
import math

import numpy as np
import pyarrow.feather as feather
import pytest

from tbjax.data.export import export_dataset
from tbjax.data.hashing import file_sha256
from tbjax.data.pipeline import FeaturePipeline
from tbjax.data.splits import ROLE_TEST, ROLE_TRAIN, ROLE_VAL, split_bounds
from tbjax.errors import InputError


def two_symbols():
    a = {"x": np.array([1.0, 2.0, 3.0, np.nan, 100.0, 200.0]),
         "y": np.array([5.0, 5.0, 5.0, 5.0, 9.0, 9.0]),
         "w": np.full(6, np.nan)}
    b = {"x": np.array([4.0, 5.0, -50.0, 70.0]), "y": np.array([5.0, 5.0, 1.0, 2.0]),
         "w": np.array([np.nan, np.nan, 3.0, 4.0])}
    masks = [np.array([1, 1, 1, 1, 0, 0], bool), np.array([1, 1, 0, 0], bool)]
    return [a, b], masks


def test_fit_uses_train_rows_only_and_transform_by_hand():
    tables, masks = two_symbols()
    pipe = FeaturePipeline(["x", "y", "w"], clip=1.5).fit(tables, masks)
    # x train values pooled: 1, 2, 3, 4, 5 (the NaN skipped) -> mean 3, population std sqrt(2).
    assert pipe.mean[0] == pytest.approx(3.0) and pipe.std[0] == pytest.approx(math.sqrt(2.0))
    changed = [dict(t) for t in tables]
    changed[0]["x"] = np.array([1.0, 2.0, 3.0, np.nan, -1e6, 7e5])
    changed[1]["y"] = np.array([5.0, 5.0, 123.0, -4.0])
    again = FeaturePipeline(["x", "y", "w"], clip=1.5).fit(changed, masks)
    np.testing.assert_array_equal(again.mean, pipe.mean)
    np.testing.assert_array_equal(again.std, pipe.std)

    out = pipe.transform(tables[0])
    s2 = math.sqrt(2.0)
    # (x - 3) / sqrt(2), NaN -> 0, clipped to +-1.5
    np.testing.assert_allclose(out["x_z"], [-2 / s2, -1 / s2, 0.0, 0.0, 1.5, 1.5], rtol=1e-6)
    assert out["x_z"].dtype == np.float32 and out["x"] is tables[0]["x"]
    # y is constant (5) on train rows: std floored to 1e-8, so 9 clips to +1.5 and 5 maps to 0.
    np.testing.assert_array_equal(out["y_z"], [0, 0, 0, 0, 1.5, 1.5])
    np.testing.assert_array_equal(pipe.transform(tables[1])["w_z"], np.zeros(4))
    assert any("column y: constant" in line for line in pipe.report)
    assert any("column w: no finite value" in line for line in pipe.report)
    assert not any("column x" in line for line in pipe.report)


def test_json_round_trip_and_atomic_save(tmp_path):
    tables, masks = two_symbols()
    pipe = FeaturePipeline(["x", "y", "w"], std_floor=1e-6, clip=None).fit(tables, masks)
    path = tmp_path / "stats" / "features.json"
    pipe.save(str(path))
    assert [p.name for p in path.parent.iterdir()] == ["features.json"]
    loaded = FeaturePipeline.load(str(path))
    assert loaded.to_json() == pipe.to_json() == json.loads(path.read_text())
    for table in tables:
        a, b = pipe.transform(table), loaded.transform(table)
        for name in ("x_z", "y_z", "w_z"):
            np.testing.assert_array_equal(a[name], b[name])
    assert pipe.transform(tables[0])["x_z"][4] == pytest.approx(97 / math.sqrt(2.0), rel=1e-6)
    path.write_text("{not json")
    with pytest.raises(InputError, match="features.json: not valid JSON"):
        FeaturePipeline.load(str(path))
    with pytest.raises(InputError, match="lacks feature column"):
        pipe.transform({"x": np.zeros(3)})


def export_inputs(val_end="2020-01-20"):
    n = 30
    times = 1_577_836_800_000 + np.arange(n, dtype=np.int64) * 86_400_000
    tables = {"AAA": {"open_time": times, "close": np.linspace(1, 2, n),
                      "x_z": np.linspace(-1, 1, n).astype(np.float32)}}
    roles = {"AAA": np.r_[np.full(10, ROLE_TRAIN), np.full(10, ROLE_VAL),
                          np.full(10, ROLE_TEST)].astype(np.int8)}
    bounds = split_bounds("2020-01-01", "2020-01-10", "2020-01-11", val_end)
    return tables, roles, bounds


def test_export_is_reproducible_and_readable(tmp_path):
    tables, roles, bounds = export_inputs()
    cfg, hashes = {"window": 16, "features": ["x"]}, {"AAA": "ab" * 32}
    m1 = export_dataset(tmp_path / "a", tables, roles, bounds, cfg, hashes)
    m2 = export_dataset(tmp_path / "b", tables, roles, bounds, cfg, hashes)
    assert m1["split_version"] == m2["split_version"] and len(m1["split_version"]) == 64
    assert m1["role_counts"] == {"train": 10, "val": 10, "test": 10, "embargo": 0, "outside": 0}
    on_disk = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert on_disk["split_version"] == m1["split_version"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["AAA.feather", "manifest.json"]
    assert m1["symbols"]["AAA"]["sha256"] == file_sha256(tmp_path / "a" / "AAA.feather")
    frame = feather.read_table(tmp_path / "a" / "AAA.feather")
    np.testing.assert_array_equal(frame["role"].to_numpy(), roles["AAA"])
    np.testing.assert_array_equal(frame["x_z"].to_numpy(), tables["AAA"]["x_z"])

    _, _, moved = export_inputs(val_end="2020-01-21")
    m3 = export_dataset(tmp_path / "c", tables, roles, moved, cfg, hashes)
    m4 = export_dataset(tmp_path / "d", tables, roles, bounds, cfg, {"AAA": "cd" * 32})
    m5 = export_dataset(tmp_path / "e", tables, roles, bounds, dict(cfg, window=32), hashes)
    versions = {m["split_version"] for m in (m1, m3, m4, m5)}
    assert len(versions) == 4
