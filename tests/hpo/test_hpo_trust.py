"""HPO numbers are the numbers of every other path, and an HPO study never fails silently.

* A trial's ``val_metrics`` equal what ``python -m tbjax.evaluate`` writes for its checkpoint, and
  its value equals the objective ``python -m tbjax.train`` reaches with the same config and seed.
  The data has two symbols whose bars start at different times, so pooling bars by index (the old
  HPO backtest) and by time (every other path) give different numbers.
* A trial left RUNNING by a killed worker (an old heartbeat) is reported, failed with a reason and
  retried with the same parameters; the study still ends with n_trials counted trials.
* A study where every trial fails, and a journal storage path that cannot hold a file, exit 2 with
  one message.

Everything runs in this process, so the tiny trainer compiles once: the study, training and
evaluation through the library functions the commands call (:func:`tbjax.hpo.job.hpo_run`,
:func:`tbjax.run.job.train_run`, :func:`tbjax.run.reevaluate.evaluate_run`); the exit-2 messages
through the command itself (``main(argv)``).
"""

import json
import sqlite3
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tbjax.config import PPOConfig
from tbjax.evaluation.backtest import CORE_BASELINE_KEYS
from tbjax.cli.hpo import main as hpo_main
from tbjax.hpo.job import hpo_run
from tbjax.hpo.storage import make_storage
from tbjax.config import load_config
from tbjax.data.prepare import prepare
from tbjax.data.synthetic_dump import write_synthetic_dump
from tbjax.hpo.runner import TrialRunner
from tbjax.hpo.liveness import HEARTBEAT_ATTR, Liveness, LivenessSettings, counted_trials, recover_stale
from tbjax.run.chunks import ChunkSchedule
from tbjax.run.deployed import save_evaluation
from tbjax.run.job import train_run
from tbjax.run.reevaluate import evaluate_run

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = PPOConfig().learning_rate  # the default: a trial with it IS the base config


def _config(processed: Path, space: dict, **sections) -> dict:
    body = {
        "data": {"processed_dir": str(processed), "train_start": "2020-01-01", "train_end": "2020-02-09",
                 "val_start": "2020-02-10", "val_end": "2020-02-22", "test_start": "2020-02-23",
                 "test_end": "2020-03-03"},
        "env": {"episode_len": 32},
        "ppo": {"n_envs": 8, "n_steps": 16, "n_minibatches": 2, "n_epochs": 1, "hidden_sizes": [16],
                "num_quantiles": 8, "cvar_alpha": 0.25, "cvar_weight": 0.3},
        # population 1: the training run these tests compare with a trial is one learner, as a trial is
        "train": {"total_env_steps": 512, "updates_per_chunk": 2, "eval_every": 2, "seed": 5,  # 4 updates
                  "population": 1},
        "eval": {"regime_bars": 200, "edge_confidence": 0},  # the trials' agents (abstention: tests/run/test_do_no_harm.py)
        "hpo": {"n_trials": 1, "pruner": "none", "space": space},
        "output": {"tensorboard": False},
    }
    for name, values in sections.items():
        body[name].update(values)
    return body


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two synthetic symbols; SYN1's first 100 bars are dropped, so bar i of each is a different time."""
    root = tmp_path_factory.mktemp("hpo_trust")
    write_synthetic_dump(root / "raw", symbols=2, bars=1500, seed=3)
    late = root / "raw" / "SYN1.csv"
    late.write_text("".join(late.read_text().splitlines(keepends=True)[100:]))
    prepare(root / "raw", root / "processed")

    def write(name: str, body: dict) -> Path:
        path = root / name
        path.write_text(yaml.safe_dump(body))
        return path

    with pytest.MonkeyPatch.context() as mp:  # keep tbjax.hpo off this process's JAX cache setting
        mp.setenv("JAX_COMPILATION_CACHE_DIR", str(root / "jax_cache"))
        yield {"root": root, "processed": root / "processed", "write": write}


@pytest.fixture(scope="module")
def same_config_runs(data):
    """One HPO trial whose space holds only the base config's values, and a training run of it."""
    root = data["root"]
    config = data["write"]("fixed.yaml", _config(data["processed"], {
        "ppo.learning_rate": {"type": "categorical", "choices": [LR]}}))
    assert hpo_run(config, run_dir=root / "study").summary["best_trial"] == 0
    assert train_run(config, run_dir=root / "train").finished
    save_evaluation(root / "study" / "best", *evaluate_run(root / "study" / "best", "best", ("val",)))
    study = optuna.load_study(study_name="tbjax", storage=f"sqlite:///{root / 'study' / 'study.db'}")
    return study, root


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_best_trial_val_metrics_equal_tbjax_evaluate(same_config_runs):
    study, root = same_config_runs
    best = study.best_trial
    stored = best.user_attrs["val_metrics"]
    evaluated = _load(root / "study" / "best" / "eval" / "val.json")["pooled"]
    assert set(stored) == set(CORE_BASELINE_KEYS)
    for key in CORE_BASELINE_KEYS:
        assert stored[key] == pytest.approx(evaluated[key], rel=1e-6, abs=1e-9), key
    summary = _load(root / "study" / "hpo_summary.json")
    assert summary["best_val_metrics"] == stored
    # the stored per-bar val returns are the same pooled series tbjax.evaluate scored
    returns = np.asarray(best.user_attrs["val_returns"])
    val = _load(root / "study" / "best" / "eval" / "val.json")
    assert len(returns) == val["pooled"]["n_bars"]
    sharpe = returns.mean() / returns.std() * np.sqrt(val["bars_per_year"])
    assert sharpe == pytest.approx(evaluated["sharpe"], rel=1e-5)
    # the best run's own report says how it was selected (DSR over the study's trials)
    bias = summary["selection_bias"]
    report = (root / "study" / "best" / "report.md").read_text()
    assert "## Chosen among trials" in report and f"best of {bias['n_trials']} hyperparameter trials" in report
    assert bias["reading"] in report


def test_hpo_objective_equals_the_training_objective(same_config_runs):
    study, root = same_config_runs
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE and trial.params == {"ppo.learning_rate": LR}
    trained = _load(root / "train" / "eval" / "val.json")
    assert trained["checkpoint"]["which"] == "best"
    # the same checkpoint is best on both paths, with the same objective and val numbers
    assert trained["checkpoint"]["update"] == trial.user_attrs["best_update"]
    assert trial.value == pytest.approx(trained["objective"], rel=1e-6, abs=1e-9)
    assert trial.value == pytest.approx(trained["checkpoint"]["objective"], rel=1e-6, abs=1e-9)
    for key in CORE_BASELINE_KEYS:
        assert trial.user_attrs["val_metrics"][key] == pytest.approx(trained["pooled"][key], rel=1e-6, abs=1e-9)
    # every objective on the way, not only the best, is the training run's
    logged = [json.loads(ln) for ln in (root / "train" / "metrics.jsonl").read_text().splitlines()]
    by_update = {row["update"]: row["val/objective"] for row in logged if "val/objective" in row}
    assert dict((u, v) for u, v in trial.user_attrs["objective_series"]) == pytest.approx(by_update, rel=1e-6)


def test_train_and_hpo_evaluate_at_the_same_updates_with_the_same_values(data):
    """One chunk loop for both: with eval_every = 3 (rounded up to two chunks of 2) and 6 updates,
    training logs val/* exactly at the updates where the HPO trial reports (4, and 6 as the last
    chunk; not 2), with the same values, and both apply the same learning rate in every chunk."""
    root = data["root"]
    config = data["write"]("sparse_eval.yaml", _config(data["processed"], {
        "ppo.learning_rate": {"type": "categorical", "choices": [LR]}},
        train={"eval_every": 3, "total_env_steps": 768}))  # 128 steps per update: 6 updates
    assert ChunkSchedule.of(load_config(config)).eval_updates() == [4, 6]
    hpo_run(config, run_dir=root / "sparse_study")  # raises where the command exits 2
    assert train_run(config, run_dir=root / "sparse_train").finished
    study = optuna.load_study(study_name="tbjax", storage=f"sqlite:///{root / 'sparse_study' / 'study.db'}")
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE
    rows = [json.loads(ln) for ln in (root / "sparse_train" / "metrics.jsonl").read_text().splitlines()]
    evaluated = {row["update"]: row for row in rows if "val/objective" in row}
    assert sorted(trial.intermediate_values) == sorted(evaluated) == [4, 6]
    assert [u for u, _ in trial.user_attrs["objective_series"]] == [4, 6]
    for (update, value), row in zip(trial.user_attrs["objective_series"], evaluated.values()):
        assert value == pytest.approx(row["val/objective"], rel=1e-6, abs=1e-9)
        sortino = row["val/sortino"] if row["val/sortino"] is not None else 0.0  # an undefined Sortino reports 0
        assert trial.intermediate_values[update] == pytest.approx(sortino, rel=1e-6, abs=1e-9)
    assert [u for u, _ in trial.user_attrs["lr_applied"]] == [row["update"] for row in rows] == [2, 4, 6]
    assert [v for _, v in trial.user_attrs["lr_applied"]] == pytest.approx([row["lr"] for row in rows], rel=1e-6)


def test_stale_trial_is_reported_failed_and_retried(data, capsys):
    """A RUNNING trial with a two-hour-old heartbeat (its worker was killed) is recovered."""
    run_dir = data["root"] / "stale"
    run_dir.mkdir()
    config = data["write"]("range.yaml", _config(data["processed"], {
        "ppo.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}, hpo={"n_trials": 2}))
    study = optuna.create_study(study_name="tbjax", storage=make_storage(None, run_dir), direction="maximize")
    study.enqueue_trial({"ppo.learning_rate": 5e-4})
    with warnings.catch_warnings():  # Optuna: a heartbeat storage is meant for Study.optimize
        warnings.simplefilter("ignore")
        killed = study.ask()
    killed.suggest_float("ppo.learning_rate", 1e-4, 1e-3, log=True)
    study._storage.record_heartbeat(killed._trial_id)
    with sqlite3.connect(run_dir / "study.db") as db:  # the worker died two hours ago
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-2 hours')")

    hpo_run(config, run_dir=run_dir)  # raises where the command exits 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "stale" in ln]
    assert len(lines) == 1 and "stale trial 0 marked FAIL" in lines[0] and "queued again as trial 1" in lines[0]

    study = optuna.load_study(study_name="tbjax", storage=make_storage(None, run_dir))
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]  # none lost, none duplicated
    stale, retry, fresh = trials
    assert stale.state == TrialState.FAIL  # by Optuna's fail_stale_trials: its reason is said in the summary
    assert retry.state == TrialState.COMPLETE and retry.params == {"ppo.learning_rate": 5e-4}
    assert retried_trial_number(retry) == 0 and retried_trial_number(fresh) is None  # Optuna's retry records
    assert fresh.state == TrialState.COMPLETE
    assert [t.number for t in counted_trials(study)] == [1, 2]  # n_trials = 2: the retry stands in for 0
    summary = _load(run_dir / "hpo_summary.json")
    assert summary["retries"] == {"1": 0} and "no heartbeat" in summary["failed"]["0"]
    # selection bias over the two finished trials and every evaluation each chose among: DSR of the
    # best, PBO with each trial's pick replayed (the stale trial 0 is its retry, counted once)
    from tbjax.evaluation.cscv import block_moments, candidate_sharpe, nested_pbo
    from tbjax.evaluation.significance import expected_max_sharpe, probabilistic_sharpe_ratio

    series = {t.number: np.asarray(t.user_attrs["val_returns"]) for t in (retry, fresh)}
    looks = {t.number: t.user_attrs["val_candidates"] for t in (retry, fresh)}
    for t in (retry, fresh):  # the record of the best evaluation is the saved checkpoint's own returns
        (at_best,) = [c for c in looks[t.number] if c["update"] == t.user_attrs["best_update"]]
        expected = block_moments(series[t.number], 16)
        assert at_best["n"] == expected["n"] and np.allclose(at_best["block_sum"], expected["block_sum"], atol=1e-8)
    pool = looks[1] + looks[2]
    sharpes = np.array([candidate_sharpe(c) for c in pool])
    bias = summary["selection_bias"]
    assert bias["n_trials"] == 2 and bias["excluded"] == [] and bias["dsr_n"] == len(pool) >= 2
    sr0 = expected_max_sharpe(len(pool), sharpes.var(ddof=1))
    assert bias["dsr"] == pytest.approx(probabilistic_sharpe_ratio(series[study.best_trial.number], sr0), abs=1e-9)
    pbo = nested_pbo(np.array([c["block_sum"] for c in pool]).T, np.array([c["block_sumsq"] for c in pool]).T,
                     pool[0]["block_size"], [1] * len(looks[1]) + [2] * len(looks[2]))
    assert bias["pbo"] == pytest.approx(pbo["pbo"])
    assert "DSR" in bias["reading"] and "PBO" in bias["reading"]


def retried_trial_number(trial):
    with warnings.catch_warnings():  # marked experimental
        warnings.simplefilter("ignore")
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def test_journal_trials_without_heartbeat_are_recovered_once(tmp_path):
    """Journal storages have no Optuna heartbeat: Optuna's heartbeat interface on a system attr does the job."""
    lines = []
    storage = make_storage(str(tmp_path / "study.log"), tmp_path, log=lines.append)
    study = optuna.create_study(study_name="j", storage=storage, direction="maximize")
    dist = optuna.distributions.FloatDistribution(1e-4, 1e-3, log=True)
    old, recent = study.ask({"ppo.learning_rate": dist}), study.ask({"ppo.learning_rate": dist})
    storage.set_trial_system_attr(old._trial_id, HEARTBEAT_ATTR, time.time() - 3600)
    storage.set_trial_system_attr(recent._trial_id, HEARTBEAT_ATTR, time.time())
    runner = TrialRunner(None, None, None, tmp_path)
    assert runner.recover_stale(study) == [0]
    assert runner.recover_stale(study) == []  # already failed: not failed or retried twice
    assert len(lines) == 1 and "stale trial 0 marked FAIL" in lines[0]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert trials[2].params == old.params and retried_trial_number(trials[2]) == 0
    assert HEARTBEAT_ATTR not in trials[2].system_attrs  # the copy does not inherit the stale beat


def test_every_trial_failing_exits_2_with_the_reason(data, tmp_path, capsys):
    # an episode longer than the train split: every trial fails before training
    body = _config(data["processed"], {"env.episode_len": {"type": "categorical", "choices": [5000]}},
                   hpo={"n_trials": 2})
    del body["env"]["episode_len"]  # written in the YAML it would be fixed, not searched
    config = data["write"]("failing.yaml", body)
    assert hpo_main(["--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    (line,) = [ln for ln in err if ln.startswith("error:")]
    assert "no trial of study 'tbjax' completed (2 failed, 0 pruned)" in line
    assert "trial 0, 1 failed: sampled values break a config rule" in line and "episode_len" in line
    assert "--study-name" in line
    assert not (tmp_path / "run" / "best").exists()


@pytest.mark.parametrize("where", ["directory", "file_as_parent"])
def test_unusable_journal_path_is_one_error(data, tmp_path, capsys, where):
    if where == "directory":
        storage = tmp_path / "study.log"
        storage.mkdir()
    else:
        (tmp_path / "plain").write_text("not a folder")
        storage = tmp_path / "plain" / "study.log"
    config = data["write"]("fixed.yaml", _config(data["processed"], {
        "ppo.learning_rate": {"type": "categorical", "choices": [LR]}}))
    assert hpo_main(["--config", str(config), "--run-dir", str(tmp_path / "run"), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --storage / hpo.storage journal file")
    assert ("is a directory" if where == "directory" else "is a file, not a folder") in err[0]
    assert "writable file path ending in .log" in err[0]


def test_heartbeat_thread_keeps_a_long_trial_alive(tmp_path):
    """The beat comes from Optuna's heartbeat thread, so a trial whose chunk (or compile) outlasts
    the grace period lives; once it stops beating, Optuna's fail_stale_trials fails it."""
    storage = make_storage(None, tmp_path, LivenessSettings(interval=1, grace=3, max_retry=0), log=lambda _: None)
    study = optuna.create_study(storage=storage)  # sqlite's clock has whole seconds
    with warnings.catch_warnings():  # ask() outside optimize() warns
        warnings.simplefilter("ignore")
        trial = study.ask()

    def age_heartbeats():
        with sqlite3.connect(tmp_path / "study.db") as db:
            db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hours')")

    with Liveness(study) as liveness:
        liveness.add(trial)
        age_heartbeats()
        time.sleep(2.5)  # the main thread is busy; the beat thread refreshes the heartbeat meanwhile
        assert recover_stale(study) == []  # seen from another worker: alive
        liveness.discard(trial)
    age_heartbeats()
    assert recover_stale(study) == [0]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]  # max_retry 0: not queued again


def test_a_failed_beat_does_not_stop_the_beating(tmp_path, monkeypatch):
    """Issue 27, item 8: Optuna's heartbeat thread ends at the first exception of record_heartbeat
    (a lock timeout behind another worker's long write), and the live trial then went stale. The
    failed beat is now logged and the thread beats again after the interval."""
    import sqlalchemy

    lines = []
    storage = make_storage(None, tmp_path, LivenessSettings(interval=1, grace=3, max_retry=0), log=lines.append)
    study = optuna.create_study(storage=storage)
    with warnings.catch_warnings():  # ask() outside optimize() warns
        warnings.simplefilter("ignore")
        trial = study.ask()
    real, calls = optuna.storages.RDBStorage.record_heartbeat, []

    def flaky(self, trial_id):  # Optuna's own wrapping of a lock timeout (optuna.storages._rdb.storage)
        calls.append(trial_id)
        if len(calls) == 2:
            locked = sqlalchemy.exc.OperationalError("UPDATE trial_heartbeats", {}, Exception("database is locked"))
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from locked
        real(self, trial_id)

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", flaky)
    with Liveness(study) as liveness:
        liveness.add(trial)  # beat 1 (here), beat 2 (the thread's first) fails
        time.sleep(0.5)
        with sqlite3.connect(tmp_path / "study.db") as db:
            db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hours')")
        time.sleep(2.0)  # beat 3 and 4 from the same thread
        with sqlite3.connect(tmp_path / "study.db") as db:
            (age,) = db.execute("SELECT (julianday('now') - julianday(heartbeat)) * 86400 FROM trial_heartbeats").fetchone()
        liveness.discard(trial)
    assert len(calls) >= 3 and age < 3  # beating again after the failure
    assert len(lines) == 1 and "a heartbeat of trial id" in lines[0] and "database is locked" in lines[0]
    assert "the next one follows in 1 s" in lines[0]


def test_every_member_of_a_batch_has_its_own_heartbeat(tmp_path):
    """B trials trained as one vmapped program: each beats from its own Optuna heartbeat thread."""
    storage = make_storage(None, tmp_path, LivenessSettings(interval=1, grace=3, max_retry=0), log=lambda _: None)
    study = optuna.create_study(storage=storage)
    with warnings.catch_warnings():  # ask() outside optimize() warns
        warnings.simplefilter("ignore")
        batch = [study.ask() for _ in range(3)]
    with Liveness(study) as liveness:
        for trial in batch:
            liveness.add(trial)
        with sqlite3.connect(tmp_path / "study.db") as db:
            beating = sorted(row[0] for row in db.execute("SELECT trial_id FROM trial_heartbeats"))
        assert beating == sorted(t._trial_id for t in batch)
        liveness.discard(batch[0])  # pruned early: its beat stops, the others go on
        assert [liveness.mine(t) for t in batch] == [False, True, True]
    assert not any(liveness.mine(t) for t in batch)
