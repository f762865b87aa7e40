"""python -m tbjax.check: the preflight passes on the shipped sample and names each problem."""

from __future__ import annotations

import datetime as dt
import json
from collections import namedtuple
from pathlib import Path

import numpy as np
import pyarrow.feather as feather
import pytest

from tbjax.cli import check
from tbjax.data.prepare import prepare
from tbjax.data.synthetic_dump import write_synthetic_dump
from tbjax.run import preflight
from tbjax.run.warmup import warmup_rule

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "processed"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(processed dir, overrides): the shipped sample with configs/base.yaml's splits, or, where the
    sample is not prepared, a synthetic hourly dataset with splits inside its dates."""
    if (SAMPLE / "manifest.json").is_file():
        return SAMPLE, []
    root = tmp_path_factory.mktemp("check")
    write_synthetic_dump(root / "raw", symbols=2, bars=1500, timeframe="1h")
    prepare(root / "raw", root / "processed", window_size=32, log=lambda *_: None)
    return root / "processed", ["data.train_start=2020-01-01", "data.train_end=2020-01-31",
                                "data.val_start=2020-02-01", "data.val_end=2020-02-20",
                                "data.test_start=2020-02-21", "data.test_end=2020-03-31"]


def run_check(capsys, dataset, tmp_path, *overrides):
    processed, base = dataset
    argv = ["--config", str(REPO / "configs" / "base.yaml"), "--set", f"data.processed_dir={processed}",
            "--set", f"output.runs_dir={tmp_path / 'runs'}"]
    for o in list(base) + list(overrides):
        argv += ["--set", o]
    code = check.main(argv)
    out, err = capsys.readouterr()
    lines = {line.split()[1]: line for line in out.splitlines()[:-1]}
    return code, lines, out, err


def _ms(text: str, end: bool = False) -> int:
    day = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
    return int(day.timestamp() * 1000) + (86_400_000 - 1 if end else 0)


def test_passes_on_the_sample_and_counts_rows_per_split(capsys, dataset, tmp_path):
    code, lines, out, _ = run_check(capsys, dataset, tmp_path)
    assert code == 0, out
    assert all(line.startswith("✓") for line in out.splitlines()[:-1])
    assert "checks passed" in out.splitlines()[-1] and "✗" not in out
    # Independent count for one symbol: rows by open time, the first 52 (warm-up of window 32) of
    # val and of test are embargo.
    from tbjax.config import load_config

    processed, base = dataset
    cfg = load_config(REPO / "configs" / "base.yaml", base)
    symbol = sorted(p.stem for p in Path(processed).glob("*.feather"))[0]
    t = feather.read_table(Path(processed) / f"{symbol}.feather").column("open_time").to_numpy()
    d = cfg.data

    def rows(a, b):
        return int(np.sum((t >= _ms(str(a))) & (t <= _ms(str(b), end=True))))

    train, val, test = rows(d.train_start, d.train_end), rows(d.val_start, d.val_end), rows(d.test_start, d.test_end)
    expected = f"train {train}, val {val - 52}, test {test - 52}, embargo 104 (of {len(t)})"
    assert f"rows {symbol}" in out and expected in out


def test_missing_data_dir_fails_with_2(capsys, dataset, tmp_path):
    code, lines, out, _ = run_check(capsys, dataset, tmp_path, f"data.processed_dir={tmp_path / 'nope'}")
    assert code == 2
    assert lines["processed"].startswith("✗") and "nope' does not exist" in lines["processed"]
    assert "python -m tbjax.prepare" in lines["processed"]
    assert lines["devices"].startswith("✓")  # independent checks still run


def test_empty_split_fails_with_2(capsys, dataset, tmp_path):
    code, lines, _, _ = run_check(capsys, dataset, tmp_path, "data.test_start=2031-01-01", "data.test_end=2031-12-31")
    assert code == 2
    assert lines["splits"].startswith("✗") and "test split is empty" in lines["splits"]


def test_embargo_shorter_than_warmup_fails(capsys, dataset, tmp_path):
    code, lines, _, _ = run_check(capsys, dataset, tmp_path, "data.embargo_bars=10")
    assert code == 2
    assert lines["splits"].startswith("✗") and "data.embargo_bars >= 52" in lines["splits"]


def hand_estimate(dataset) -> tuple[int, int]:
    """Hand computation of the documented estimate: (bytes per env: 4 rollout-sized float32 buffers
    of n_steps 64 × (window 32 × F + 4) floats, the S × T × (F + 6) float32 market arrays)."""
    processed = Path(dataset[0])
    tables = [feather.read_table(p) for p in sorted(processed.glob("*.feather"))]
    n_features = len(json.loads((processed / "manifest.json").read_text())["feature_names"])
    return 4 * 64 * (32 * n_features + 4) * 4, len(tables) * max(t.num_rows for t in tables) * (n_features + 6) * 4


def test_absurd_n_envs_warns_with_a_power_of_two_that_fits(capsys, dataset, tmp_path, monkeypatch):
    available = 1_000_000_000
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: (available, "test"))
    code, lines, _, _ = run_check(capsys, dataset, tmp_path, "ppo.n_envs=1048576")
    assert code == 2
    line = lines["memory"]
    assert line.startswith("✗") and "does not fit" in line
    per_env, market = hand_estimate(dataset)
    fit = 1
    while (2 * fit) * per_env + market <= available:
        fit *= 2
    assert f"try --set ppo.n_envs={fit}" in line
    assert fit * per_env + market <= available < 2 * fit * per_env + market
    code, lines, _, _ = run_check(capsys, dataset, tmp_path, f"ppo.n_envs={fit}")
    assert code == 0 and lines["memory"].startswith("✓")


def test_low_disk_fails(capsys, dataset, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5 * 10**8, 5 * 10**8))
    code, lines, _, _ = run_check(capsys, dataset, tmp_path)
    assert code == 2
    assert lines["disk"].startswith("✗") and "0.50 GB free" in lines["disk"]


def test_invalid_config_is_one_error_line(capsys):
    assert check.main(["--set", "ppo.learnig_rate=1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "error: unknown config key 'ppo.learnig_rate': did you mean ppo.learning_rate?"
    assert check.main(["--config", "/nonexistent.yaml"]) == 2
    assert "config file '/nonexistent.yaml' not found" in capsys.readouterr().err


def test_window_longer_than_the_prepared_warmup_passes(capsys, dataset, tmp_path):
    """The env fills a longer window from processed rows (tbjax.run.warmup.warmup_rule, which train applies too)."""
    code, lines, out, _ = run_check(capsys, dataset, tmp_path, "env.window_size=64")
    assert lines["warm-up"].startswith("✓") and "env.window_size 64" in lines["warm-up"]
    assert warmup_rule(64, 52) == (True, lines["warm-up"].split("warm-up", 1)[1].strip())


def test_population_members_stepped_together_multiply_the_rollout_memory(capsys, dataset, tmp_path, monkeypatch):
    """On an accelerator the population's members are one vmap: P rollout buffers at once (on a CPU
    they run one after another, so one). With 4 members stepped together, the n_envs that fits is
    the largest power of two with 4 × per_env × n_envs + market <= available (hand computation)."""
    from tbjax.learner import population

    monkeypatch.setattr(population, "default_member_batch", lambda n_members: n_members)
    available = 1_000_000_000
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: (available, "test"))
    code, lines, _, _ = run_check(capsys, dataset, tmp_path, "ppo.n_envs=1048576", "train.population=4")
    line = lines["memory"]
    assert code == 2 and "4 population members stepped together" in line
    per_env, market = hand_estimate(dataset)
    fit = 1
    while 4 * (2 * fit) * per_env + market <= available:
        fit *= 2
    assert f"try --set ppo.n_envs={fit}" in line
