"""End to end: `python -m tbjax.train` and `python -m tbjax.evaluate` on the shipped sample, tiny budget.

One module-scoped run is shared by most checks (compiles are the slow part). Checks: every artifact
exists and parses; a second run with the same seed writes an identical metrics.jsonl; an interrupted
run resumed with --resume ends with the same metrics (a GRU run also with the same carry, hidden
state included); evaluation leaves the frozen statistics bit-identical; bad inputs exit 2 with one
message and no traceback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from tbjax.cli import evaluate as evaluate_cli
from tbjax.cli import train as train_cli

TINY = [
    "ppo.n_envs=8", "ppo.n_steps=16", "ppo.n_epochs=2", "ppo.n_minibatches=2", "ppo.hidden_sizes=[16, 16]",
    "ppo.num_quantiles=8", "env.episode_len=64", "train.total_env_steps=512", "train.updates_per_chunk=2",
    "train.eval_every=2", "eval.regime_bars=300", "output.tensorboard=true",
    # the agent's machinery is what these tests check: deploy it whatever val says, train the whole budget
    # (abstention and early stopping: tests/run/test_do_no_harm.py)
    "eval.edge_confidence=0", "train.patience=0",
]


def run_train(run_dir: Path, *extra: str) -> int:
    argv = ["--config", "configs/base.yaml", "--run-dir", str(run_dir), "--quiet"]
    for s in TINY:
        argv += ["--set", s]
    return train_cli.main(argv + list(extra))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    assert run_train(run_dir) == 0
    return run_dir


def test_every_artifact_exists_and_parses(finished_run):
    r = finished_run
    cfg = yaml.safe_load((r / "config.yaml").read_text())
    assert cfg["ppo"]["n_envs"] == 8 and cfg["env"]["episode_len"] == 64
    pipe = json.loads((r / "feature_pipeline.json").read_text())
    assert pipe["columns"] and "logret_1" in pipe["columns"]
    manifest = json.loads((r / "dataset" / "manifest.json").read_text())
    assert len(manifest["split_version"]) == 64
    assert sorted(p.name for p in (r / "dataset").glob("*.feather")) == ["AAPL.feather", "GOOG.feather", "IBM.feather", "MSFT.feather"]
    rows = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows] == [2, 4]
    assert all("val/objective" in row and "loss/value" in row and "ev/weighted" in row for row in rows)
    assert (r / "checkpoints" / "latest").is_dir() and (r / "checkpoints" / "best").is_dir()
    assert list((r / "tb").glob("events.out.tfevents.*"))
    for split in ("val", "test"):
        ev = json.loads((r / "eval" / f"{split}.json").read_text())
        assert set(ev) >= {"pooled", "per_symbol", "baselines", "objective"}
        assert set(ev["per_symbol"]) == {"AAPL", "GOOG", "IBM", "MSFT"}
        assert set(ev["baselines"]) == {"buy_and_hold", "flat"}
        for key in ("total_return", "cagr", "volatility", "sharpe", "sortino", "calmar", "max_drawdown",
                    "max_drawdown_duration", "cvar_5", "var_5", "turnover", "exposure", "n_trades", "win_rate",
                    "profit_factor"):
            assert key in ev["pooled"]
        assert ev["baselines"]["flat"]["total_return"] == 0.0
    report = (r / "report.md").read_text()
    assert "Sharpe" in report and "buy & hold" in report
    assert (r / "plots" / "val_equity.png").stat().st_size > 5_000


def test_val_objective_is_the_weighted_regime_sum(finished_run):
    ev = json.loads((finished_run / "eval" / "val.json").read_text())
    # undefined Sortino (a flat policy loses nothing) is written as null and counts as 0
    s, choppy, trend = (v or 0.0 for v in (ev["pooled"]["sortino"], ev["regime_sortino"]["choppy"],
                                           ev["regime_sortino"]["trend"]))
    expected = 0.5 * s + 0.3 * choppy + 0.2 * trend
    assert ev["objective"] == pytest.approx(expected, rel=1e-9)


def test_same_seed_gives_identical_metrics(finished_run, tmp_path):
    assert run_train(tmp_path / "again") == 0
    assert (tmp_path / "again" / "metrics.jsonl").read_bytes() == (finished_run / "metrics.jsonl").read_bytes()


def test_library_train_run_is_the_command(finished_run, tmp_path):
    """tbjax.run.job.train_run, the command as one call (what the other tests' fixtures use): the same
    metrics and evaluation as ``python -m tbjax.train`` with the same settings, and run_info.json records
    a command that parses back to those settings."""
    from tbjax.run.job import train_run

    run_dir = tmp_path / "library"
    result = train_run("configs/base.yaml", TINY, run_dir)
    assert result.finished and result.update == 4 and result.run_dir == run_dir
    assert (run_dir / "metrics.jsonl").read_bytes() == (finished_run / "metrics.jsonl").read_bytes()
    for split in ("val", "test"):
        a = json.loads((run_dir / "eval" / f"{split}.json").read_text())
        b = json.loads((finished_run / "eval" / f"{split}.json").read_text())
        assert a["pooled"] == b["pooled"] and a["objective"] == b["objective"]
    command = json.loads((run_dir / "run_info.json").read_text())["command"]
    assert command[:3] == ["python", "-m", "tbjax.train"]
    args = train_cli.parse_args(command[3:])
    assert (args.config, args.run_dir, args.set, args.quiet, args.resume, args.max_chunks) == (
        "configs/base.yaml", str(run_dir), TINY, True, False, None)


def test_interrupted_then_resumed_run_matches(finished_run, tmp_path):
    run_dir = tmp_path / "resumed"
    assert run_train(run_dir, "--max-chunks", "1") == 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (run_dir / "eval").exists()
    assert run_train(run_dir, "--resume") == 0
    assert (run_dir / "metrics.jsonl").read_bytes() == (finished_run / "metrics.jsonl").read_bytes()
    a = json.loads((run_dir / "eval" / "test.json").read_text())
    b = json.loads((finished_run / "eval" / "test.json").read_text())
    assert a["pooled"] == b["pooled"]


def test_interrupted_then_resumed_gru_run_matches(tmp_path):
    """A recurrent run (ppo.policy=gru) stopped after its first chunk and resumed from that
    checkpoint ends as the uninterrupted run: the same metrics.jsonl bytes, test evaluation and
    final carry, bit for bit, the hidden state of every env included (it lives in the carry, so a
    resume that dropped or zeroed it would act differently from the first step on)."""
    from tbjax.run.reevaluate import open_run

    # episodes of 48 steps: both the interruption (32 steps per env) and the end (64) fall mid-episode
    gru = ("--set", "ppo.policy=gru", "--set", "ppo.rnn_size=8", "--set", "env.episode_len=48")
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run_train(whole, *gru) == 0
    assert run_train(split, *gru, "--max-chunks", "1") == 0
    assert run_train(split, *gru, "--resume") == 0
    assert (split / "metrics.jsonl").read_bytes() == (whole / "metrics.jsonl").read_bytes()
    tests = [json.loads((run / "eval" / "test.json").read_text())["pooled"] for run in (whole, split)]
    assert tests[0] == tests[1]
    carries = []
    for run in (whole, split):
        session = open_run(run)
        carries.append(session.ckpt.restore("latest", session.template())[0])
    members = session.cfg.train.population  # the default: a population, each member with its own hidden states
    assert carries[0].hidden.shape == (members, 8, 2 * 8) and float(np.abs(np.asarray(carries[0].hidden)).max()) > 0
    assert jax.tree_util.tree_structure(carries[0]) == jax.tree_util.tree_structure(carries[1])
    for a, b in zip(*(jax.tree_util.tree_leaves(c) for c in carries)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluate_cli_reproduces_training_evaluation(finished_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    before = json.loads((copy / "eval" / "val.json").read_text())
    assert evaluate_cli.main(["--run-dir", str(copy), "--split", "val"]) == 0
    after = json.loads((copy / "eval" / "val.json").read_text())
    assert after["pooled"] == before["pooled"] and after["objective"] == before["objective"]
    assert "val: sharpe" in capsys.readouterr().out


def test_evaluation_leaves_frozen_statistics_bit_identical(finished_run):
    from tbjax.config import load_config
    from tbjax.data.market import ROLE_VAL
    from tbjax.data.pipeline import FeaturePipeline
    from tbjax.run.population import evaluate_population
    from tbjax.run.session import TrainingSession

    cfg = load_config(finished_run / "config.yaml")
    session = TrainingSession(cfg, finished_run, write=False,
                              pipeline=FeaturePipeline.load(finished_run / "feature_pipeline.json"))
    carry, meta = session.ckpt.restore("best", session.template())
    stats_before = jax.tree_util.tree_map(np.array, carry.obs_stats)
    if cfg.train.population == 1:
        first, _ = session.evaluate(carry, ROLE_VAL)
        second, _ = session.evaluate(carry, ROLE_VAL)
    else:  # the ensemble and every member are walked, each with its own frozen statistics
        first, second = (evaluate_population(session, carry, meta, "best", ("val",))[0]["val"] for _ in range(2))
        assert first["population"] == second["population"]
    assert first["pooled"] == second["pooled"] or json.dumps(first["pooled"]) == json.dumps(second["pooled"])
    for a, b in zip(jax.tree_util.tree_leaves(stats_before), jax.tree_util.tree_leaves(carry.obs_stats)):
        assert np.array_equal(a, np.asarray(b))
    assert np.all(np.asarray(carry.obs_stats.count) > 0)  # training did update them (every member's)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and "\n" not in err
    return err


@pytest.mark.parametrize("override, fragment", [
    ("data.processed_dir=/nonexistent/processed", "python -m tbjax.prepare"),
    ("ppo.learnig_rate=0.1", "did you mean ppo.learning_rate?"),
    ("ppo.n_minibatches=3", "not divisible by ppo.n_minibatches = 3"),
])
def test_bad_input_exits_2_with_one_message(tmp_path, capsys, override, fragment):
    assert run_train(tmp_path / "bad", "--set", override) == 2
    assert fragment in _one_line_error(capsys)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_unwritable_run_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert run_train(blocker / "run") == 2
    assert "choose another --run-dir" in _one_line_error(capsys)


def test_resume_without_checkpoint_and_with_corrupt_checkpoint(finished_run, tmp_path, capsys):
    assert run_train(tmp_path / "empty", "--resume") == 2
    assert "start without --resume" in _one_line_error(capsys)
    broken = tmp_path / "broken"
    shutil.copytree(finished_run, broken)
    for f in (broken / "checkpoints" / "latest").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    assert run_train(broken, "--resume") == 2
    assert str(broken / "checkpoints") in _one_line_error(capsys)


def test_sigint_finishes_the_chunk_saves_and_resumes(tmp_path):
    """SIGINT mid-run: the running chunk finishes, the latest checkpoint is saved, exit 0, resumable."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "interrupted"
    argv = [sys.executable, "-m", "tbjax.train", "--config", "configs/base.yaml", "--run-dir", str(run_dir), "--quiet"]
    for s in TINY + ["train.total_env_steps=100000", "train.eval_every=1000"]:
        argv += ["--set", s]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.is_file() and metrics.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    done = [json.loads(line)["update"] for line in metrics.read_text().splitlines()]
    assert done and done[-1] < 100000 // 128  # stopped early, on a chunk boundary
    assert done[-1] % 2 == 0
    assert (run_dir / "checkpoints" / "latest").is_dir()
