"""report.md and plots from a fake two-symbol run: files, valid PNGs, formatted numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from tbjax.errors import InputError
from tbjax.evaluation.metrics import json_safe
from tbjax.evaluation.report import format_metric, write_report

HOUR_MS = 3_600_000
START_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def _fake_series(seed: int, n: int, offset_bars: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    market = rng.normal(0.0, 0.01, n)
    position = np.sign(rng.normal(size=n))
    returns = position * market
    return {
        "time_ms": START_MS + HOUR_MS * (offset_bars + np.arange(n, dtype=np.int64)),
        "equity": np.cumprod(1 + returns),
        "buy_and_hold_equity": np.cumprod(1 + market),
        "position": position,
        "returns": returns,
    }


def _fake_eval(sharpe: float, objective: float) -> dict:
    pooled = {"n_bars": 300.0, "total_return": 0.1234, "sharpe": sharpe, "sortino": 2.5,
              "max_drawdown": 0.0567, "win_rate": float("nan"), "sortino_fallback": 0.0}
    per_symbol = {"AAA": {"total_return": 0.05, "sharpe": 0.9, "n_trades": 17.0},
                  "BBB": {"total_return": -0.02, "sharpe": -0.3, "n_trades": 4.0}}
    return json_safe({
        "pooled": pooled, "per_symbol": per_symbol, "objective": objective,
        "baselines": {"buy_and_hold": {"pooled": {"total_return": 0.08, "sharpe": 0.6543},
                                       "per_symbol": {"AAA": {"total_return": 0.031}}},
                      "flat": {"total_return": 0.0, "sharpe": float("nan")}},
        "bars_per_year": 8760.0,
    })


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    series = {split: {"AAA": _fake_series(1 + i, 200, 0), "BBB": _fake_series(7 + i, 150, 100)}
              for i, split in enumerate(("val", "test"))}
    evals = {"val": _fake_eval(1.8765, 0.4321), "test": _fake_eval(-0.4449, 0.1)}
    history = [{"env_steps": 1000 * (i + 1), "loss/policy": 0.1 / (i + 1), "ev/raw": 0.1 * i,
                "val/objective": None if i % 2 else 0.2 * i} for i in range(6)]
    history[3].pop("loss/policy")  # a row missing a key
    report = write_report(run_dir, evals, series, history)
    return run_dir, report


def test_all_files_exist_and_pngs_are_valid(fake_run):
    run_dir, report = fake_run
    assert report == run_dir / "report.md" and report.is_file()
    names = [f"{s}_{kind}.png" for s in ("val", "test")
             for kind in ("equity", "drawdown", "position", "returns_hist")]
    for name in names + ["learning_curves.png"]:
        path = run_dir / "plots" / name
        assert path.stat().st_size > 5_000, name
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
            # A drawn figure has many distinct colours; a blank canvas has one.
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10
    leftovers = [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_report_tables_and_numbers(fake_run):
    run_dir, report = fake_run
    text = report.read_text()
    assert "| metric | strategy | buy & hold | flat |" in text
    assert "| symbol | bars | total return | Sharpe |" in text
    # Pooled Sharpe 1.8765 -> 1.88 beside buy & hold 0.6543 -> 0.65; flat NaN (null) -> n/a.
    assert "| Sharpe | 1.88 | 0.65 | n/a |" in text
    assert "| Sharpe | -0.44 | 0.65 | n/a |" in text
    assert "| total return | 12.34% | 8.00% | 0.00% |" in text
    assert "| win rate | n/a | n/a | n/a |" in text
    # Per-symbol rows carry the buy-and-hold total return when the baseline has it.
    assert "| AAA | n/a | 5.00% | 0.90 |" in text and text.count("| 3.10% |") == 2
    assert "**Objective:** 0.4321" in text
    assert "](plots/val_equity.png)" in text and "](plots/learning_curves.png)" in text
    assert "0.5·Sortino(validation)" in text
    assert "6 chunk(s), 6,000 env steps" in text


def test_missing_history_keys_are_skipped(tmp_path):
    series = {"val": {"AAA": _fake_series(3, 50, 0)}}
    report = write_report(tmp_path, {"val": _fake_eval(1.0, 0.0)}, series, [])
    assert not (tmp_path / "plots" / "learning_curves.png").exists()
    assert "No history to plot." in report.read_text()
    # No env_steps and only unknown or non-finite keys except one: still a figure, by chunk.
    history = [{"loss/value": float("nan"), "other": 1.0}, {"loss/value": 0.5}, {"loss/value": 0.4}]
    write_report(tmp_path, {"val": _fake_eval(1.0, 0.0)}, series, history)
    assert (tmp_path / "plots" / "learning_curves.png").stat().st_size > 2_000


def test_bad_series_raises_input_error(tmp_path):
    bad = _fake_series(0, 20, 0)
    bad["position"] = bad["position"][:-1]
    with pytest.raises(InputError, match="differ in length"):
        write_report(tmp_path, {}, {"val": {"AAA": bad}}, [])
    del bad["returns"]
    with pytest.raises(InputError, match="lacks"):
        write_report(tmp_path, {}, {"val": {"AAA": bad}}, [])


def test_format_metric():
    assert format_metric("sharpe", 1.234) == "1.23"
    assert format_metric("max_drawdown", 0.25) == "25.00%"
    assert format_metric("n_trades", 12.0) == "12"
    assert format_metric("sortino_fallback", 1.0) == "yes"
    assert format_metric("calmar", None) == "n/a"
    assert format_metric("sortino", math.inf) == "n/a"


def test_objective_note_shows_the_runs_own_weights():
    from tbjax.evaluation.report import objective_note

    assert "0.5·Sortino(validation) + 0.3·Sortino(CHOPPY_FLAT) + 0.2·Sortino(STRONG_TREND)" in objective_note()
    note = objective_note({"w_val": 1.0, "w_choppy": 0.0, "w_trend": 0.25})
    assert "1·Sortino(validation) + 0·Sortino(CHOPPY_FLAT) + 0.25·Sortino(STRONG_TREND)" in note
    assert "/work" not in note and "docs/ALGORITHMS.md" in note
