"""Do no harm out of sample, end to end on a NO-SIGNAL market (long-short, so the baseline is flat):

* every walk-forward fold abstains; the stitched out-of-sample series is then flat (zero return,
  zero position, zero turnover) and each fold's decision counted only its VAL bars;
* a training run deploys the baseline: eval JSON, deployment.json, report.md and load_policy say so,
  and test is scored for flat;
* train.patience stops training exactly where the rule, recomputed here from metrics.jsonl, says.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.feather as feather
import pytest

from tbjax import load_policy
from tbjax.config import load_config
from tbjax.run.job import train_run
from tbjax.walkforward import driver as wfm
from tiny_run_config import tiny_market

TINY = ["ppo.n_envs=8", "ppo.n_steps=16", "ppo.n_epochs=1", "ppo.n_minibatches=2", "ppo.hidden_sizes=[16]",
        "ppo.num_quantiles=8", "env.episode_len=64", "env.position_levels=[-1.0, 0.0, 1.0]",
        "train.updates_per_chunk=2", "train.eval_every=2", "train.population=1", "output.tensorboard=false",
        "eval.regime_bars=300"]
DATES = ["data.train_start=2020-01-01", "data.train_end=2020-02-09", "data.val_start=2020-02-10",
         "data.val_end=2020-02-22", "data.test_start=2020-02-23", "data.test_end=2020-03-03"]


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return tiny_market(tmp_path_factory.mktemp("noharm"))


def train(run, processed, *extra: str) -> None:
    """A training run (:func:`tbjax.run.job.train_run`, what ``python -m tbjax.train`` does) on the
    tiny no-signal market with TINY, DATES and ``extra``."""
    assert train_run("configs/base.yaml", [f"data.processed_dir={processed}", *TINY, *DATES, *extra], run).finished


def test_every_fold_abstains_on_a_no_signal_market_and_the_stitched_series_is_flat(processed):
    cfg = load_config("configs/base.yaml", TINY + [f"data.processed_dir={processed}", "train.total_env_steps=512",
                                                   "walkforward.folds=2"])
    wf = wfm.build_folds(cfg)
    wfm.train_vmapped(wf)
    rows, stitched = wfm.fold_results(wf)
    assert [r["deployed"] for r in rows] == ["baseline", "baseline"] == stitched["deployed"]
    for r in rows:
        d = r["deployment"]
        assert d["baseline"] == "flat" and d["val_edge"]["psr"] < 0.95 or not np.isfinite(d["val_edge"]["psr"])
        assert d["val_edge"]["n_bars"] == r["agent"]["val"]["n_bars"]  # the decision's bars are the val bars
        assert r["test"]["turnover"] == 0.0 and r["test"]["total_return"] == 0.0
    assert np.all(stitched["returns"] == 0.0) and np.all(stitched["position"] == 0.0)
    assert stitched["metrics"]["turnover"] == 0.0


def test_a_run_without_val_edge_deploys_flat_and_says_so(processed, tmp_path):
    run = tmp_path / "run"
    train(run, processed, "train.total_env_steps=512", "train.patience=0")
    decision = json.loads((run / "deployment.json").read_text())
    assert decision["policy"] == "baseline" and decision["baseline"] == "flat"
    for split in ("val", "test"):
        ev = json.loads((run / "eval" / f"{split}.json").read_text())
        assert ev["deployed"]["policy"] == "baseline"
        assert ev["pooled"]["turnover"] == 0.0 and ev["pooled"]["total_return"] == 0.0  # flat, scored as flat
        assert "pooled" in ev["agent"] and ev["agent"]["pooled"]["n_bars"] == ev["pooled"]["n_bars"]
    assert "Deployed: the baseline (flat).** No edge found on val" in (run / "report.md").read_text()
    policy = load_policy(run)
    assert policy.abstains
    bars = {c: np.asarray(v) for c, v in feather.read_table(next(processed.glob("*.feather"))).to_pydict().items()}
    window = load_config(run / "config.yaml").env.window_size
    assert np.all(policy.target_positions(bars)[window - 1:] == 0.0)


def test_patience_stops_where_the_rule_says(processed, tmp_path):
    run = tmp_path / "patient"
    train(run, processed, "train.total_env_steps=4096", "train.patience=1")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    total = 4096 // (8 * 16)
    # the rule, independently: stop at the first evaluation that does not beat the best so far
    best, expected = -np.inf, total
    for r in rows:
        if r["val/objective"] <= best:
            expected = r["update"]
            break
        best = r["val/objective"]
    assert rows[-1]["update"] == expected
    assert rows[-1]["patience/stopped"] == (1 if expected < total else 0)
    assert (run / "eval" / "test.json").is_file()  # an early stop is a finished run
