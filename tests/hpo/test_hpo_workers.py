"""Several HPO workers on one study, on each storage (SQLite, a journal file, PostgreSQL), with a
worker killed by SIGKILL in the middle of a trial.

One flow per storage, every step through ``python -m tbjax.hpo`` as a user runs it:

1. a worker starts alone and is killed (``kill -9``) once its trial has reported an intermediate
   value: that trial is left RUNNING;
2. after the grace period, the same command is run by 3 workers at once (the resume): Optuna's
   stale-trial check fails the killed trial, its retry (same params, origin recorded by
   ``RetryHeartbeatStaleTrialCallback``) runs, and the study ends with exactly ``N`` counted
   trials, no number lost or duplicated, nothing RUNNING or WAITING;
3. the storage the run prints loads with ``optuna.load_study`` (what ``optuna-dashboard`` opens).

PostgreSQL: ``TBJAX_TEST_POSTGRES_URL`` (``.ci/run`` starts a server; ``scripts/local_postgres.sh``
for a local one); without it that case is skipped with the reason.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tiny_run_config import tiny_body, tiny_market
from tbjax.hpo.liveness import counted_trials

REPO = Path(__file__).resolve().parents[2]
N_TRIALS = 4
GRACE = 5  # seconds; heartbeat every second (flags of python -m tbjax.hpo)
POSTGRES_URL = os.environ.get("TBJAX_TEST_POSTGRES_URL")
STORAGES = ["sqlite", "journal", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.skipif(
    not POSTGRES_URL, reason="TBJAX_TEST_POSTGRES_URL is not set: no PostgreSQL server (.ci/run starts one; "
    "scripts/local_postgres.sh prints the URL)")])]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpo_workers")
    body = tiny_body(tiny_market(root), total_env_steps=1024)  # 8 updates, 4 reports
    body["hpo"] = {"n_trials": N_TRIALS, "pruner": "none", "space": {
        "ppo.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}}
    (root / "hpo.yaml").write_text(yaml.safe_dump(body))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONPATH": str(REPO)}
    return root, env


def _worker(root, env, run_dir, storage, study_name, seed, *sets):
    cmd = [sys.executable, "-m", "tbjax.hpo", "--config", str(root / "hpo.yaml"), "--run-dir", str(run_dir),
           "--study-name", study_name, "--heartbeat-interval", "1", "--grace-period", str(GRACE),
           "--set", f"hpo.sampler_seed={seed}", *[a for s in sets for a in ("--set", s)]]
    cmd += ["--storage", storage] if storage else []
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, text=True)


def _load(storage_shown: str, study_name: str):
    if "://" not in storage_shown:  # a journal file: optuna-dashboard takes the path, load_study a storage
        backend = optuna.storages.journal.JournalFileBackend(storage_shown)
        return optuna.load_study(study_name=study_name, storage=optuna.storages.JournalStorage(backend))
    return optuna.load_study(study_name=study_name, storage=storage_shown)


def _kill_mid_trial(proc, storage_shown, study_name):
    """SIGKILL ``proc`` once one of its trials is RUNNING and has reported; that trial."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            running = _load(storage_shown, study_name).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # the study is not created yet
            running = []
        if running and running[0].intermediate_values:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return running[0]
        time.sleep(0.05)
    pytest.fail(f"the worker never reached a reported trial: {proc.communicate()[1][-2000:]}")


@pytest.mark.parametrize("kind", STORAGES)
def test_three_workers_finish_exactly_n_trials_after_a_kill(setup, tmp_path, kind):
    root, env = setup
    run_dir, study_name = tmp_path / "run", f"w-{uuid.uuid4().hex[:8]}"
    storage = {"sqlite": None, "journal": str(tmp_path / "study.log"), "postgres": POSTGRES_URL}[kind]
    shown = {"sqlite": f"sqlite:///{run_dir.resolve() / 'study.db'}", "journal": str(tmp_path.resolve() / "study.log"),
             "postgres": POSTGRES_URL}[kind]

    # the first worker's trial is 16x longer, so the kill lands in training, not while it saves
    first = _worker(root, env, run_dir, storage, study_name, 0, "train.total_env_steps=16384")
    killed = _kill_mid_trial(first, shown, study_name)
    time.sleep(GRACE + 2)  # the killed worker's heartbeat is now older than the grace period
    procs = [_worker(root, env, run_dir, storage, study_name, k) for k in (1, 2, 3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    stale_lines = [ln for _, err in outs for ln in err.splitlines() if "stale trial" in ln]
    assert len(stale_lines) == 1 and f"stale trial {killed.number} marked FAIL" in stale_lines[0]

    printed = {m for out, _ in outs for m in re.findall(r"^storage: (\S+) ", out, re.M)}
    assert printed == {shown}  # what optuna-dashboard is told to open
    study = _load(shown, study_name)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))  # none lost, none duplicated
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len(counted_trials(study)) == N_TRIALS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental
        retries = [t for t in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
                   is not None]
    assert [t.system_attrs["retry_history"] for t in retries] == [[killed.number]]  # its origin, retried once
    assert retries[0].params == killed.params and retries[0].state == TrialState.COMPLETE
    assert study.get_trials()[killed.number].state == TrialState.FAIL
    ran = [t for t in trials if not t.user_attrs.get("surplus") and t.number != killed.number]
    assert len(ran) == N_TRIALS and all(t.state == TrialState.COMPLETE for t in ran)
    folders = [p for p in (run_dir / "trials").iterdir() if not p.name.startswith(".")]  # hidden: staging
    assert sorted(int(p.name) for p in folders) == sorted(t.number for t in ran)
    assert all((p / "config.yaml").is_file() and (p / "feature_pipeline.json").is_file() for p in folders)
    surplus = len(trials) - N_TRIALS - 1
    print(f"FIGURES {kind}: workers 1+3, kills 1, trials finished {len(ran)}, retried {len(retries)}, "
          f"surplus {surplus}, lost 0, duplicated 0")


def test_a_live_trial_is_never_retried_behind_a_slow_writer(setup, tmp_path):
    """Issue 27, item 8. With SQLite every transaction takes the write lock; a writer that holds it
    longer than the grace period silences every heartbeat. The worker whose check runs first after
    the lock is released (here: this process, as a second worker does before it asks) used to fail
    the live trial as stale and queue a retry of it while it still ran. Its worker is alive on this
    machine, so it is not stale: it completes, once."""
    import sqlite3

    from tbjax.hpo.liveness import LivenessSettings, recover_stale
    from tbjax.hpo.storage import make_storage

    root, env = setup
    run_dir, study_name = tmp_path / "run", f"slow-{uuid.uuid4().hex[:8]}"
    worker = _worker(root, env, run_dir, None, study_name, 0, "hpo.n_trials=1")
    lines = []
    deadline = time.time() + 300
    while time.time() < deadline and worker.poll() is None:
        try:
            with sqlite3.connect(run_dir / "study.db", timeout=1) as db:
                beating = db.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone()[0]
        except sqlite3.Error:  # the database or its tables do not exist yet
            beating = 0
        if beating:
            break
        time.sleep(0.05)
    assert worker.poll() is None, worker.communicate()[1][-2000:]
    other = optuna.load_study(study_name=study_name, storage=make_storage(
        None, run_dir, LivenessSettings(interval=1, grace=GRACE, max_retry=2), log=lines.append))
    writer = sqlite3.connect(run_dir / "study.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a long write: every other transaction waits behind it
    t0 = time.time()
    time.sleep(GRACE + 3)
    (running,) = writer.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()
    writer.execute("COMMIT")
    failed = recover_stale(other)  # the first transaction after the lock: the silent trial's last beat is old
    held = time.time() - t0
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name=study_name, storage=f"sqlite:///{run_dir / 'study.db'}").get_trials()
    assert running == 1 and held > GRACE + 2
    assert failed == [] and lines == [] and "stale trial" not in err
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE)]  # completed, never retried
    assert "failed_trial" not in trials[0].system_attrs
    print(f"FIGURES slow writer: lock held {held:.1f} s > grace {GRACE} s, stale verdicts 0, retries 0, "
          f"trial 0 {trials[0].state.name}")


def test_journal_workers_racing_for_stale_trials_retry_each_once(tmp_path):
    """Three workers run Optuna's stale-trial check on one journal file, each having read all 12
    trials as stale before any writes its FAIL (held at a common instant between the two). The
    journal replays operations in file order and a FAIL landing after another worker's FAIL raises
    for its writer (Optuna's UpdateFinishedTrialError), so only the first worker retries a trial."""
    from tbjax.hpo.liveness import HEARTBEAT_ATTR, LivenessSettings
    from tbjax.hpo.storage import make_storage

    path, live = tmp_path / "study.log", LivenessSettings(interval=1, grace=3, max_retry=2)
    storage = make_storage(str(path), tmp_path, live, log=lambda _: None)
    study = optuna.create_study(study_name="race", storage=storage)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for _ in range(12):  # trials of a killed worker: RUNNING, last beat an hour ago
        storage.set_trial_system_attr(study.ask(dist)._trial_id, HEARTBEAT_ATTR, time.time() - 3600)
    code = ("import sys, time, warnings, optuna; from pathlib import Path; warnings.simplefilter('ignore'); "
            "from tbjax.hpo.storage import make_storage; from tbjax.hpo.liveness import LivenessSettings, recover_stale; "
            "s = optuna.load_study(study_name='race', storage=make_storage(sys.argv[1], Path(sys.argv[1]).parent, "
            "LivenessSettings(1, 3, 2), log=lambda _: None)); start = float(sys.argv[2]); st = s._storage\n"
            "def held(study_id, read=st._get_stale_trial_ids):\n"
            "    ids = read(study_id)\n"
            "    while time.time() < start: pass\n"
            "    return ids\n"
            "st._get_stale_trial_ids = held\n"
            "print(' '.join(map(str, recover_stale(s))), len(held(s._study_id)), file=sys.stdout)")
    start = time.time() + 6  # all three have loaded the study by then
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(start)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    assert [out.split()[-1] for out, _ in outs] == ["0"] * 3  # afterwards none is stale
    failed = sorted(int(n) for out, _ in outs for n in out.split()[:-1])
    assert failed == list(range(12))  # each stale trial failed by exactly one worker
    trials = optuna.load_study(study_name="race", storage=make_storage(str(path), tmp_path, live)).get_trials()
    retries = [t.system_attrs["failed_trial"] for t in trials if t.state == TrialState.WAITING]
    assert sorted(retries) == list(range(12))  # and retried once
    print(f"FIGURES journal race: 3 workers, 12 stale trials, retries {len(retries)}, "
          f"failed per worker {[len(out.split()) - 1 for out, _ in outs]}")


def test_journal_workers_opening_one_new_file_together_all_open_it(tmp_path):
    """Each worker checks that a journal path can hold Optuna's lock file with a probe file; with one
    probe name for all, a worker's probe was deleted by another's and the path said 'not writable'."""
    import threading

    from tbjax.hpo.storage import _journal_problem

    problems = []

    def open_many():
        problems.extend(p for p in (_journal_problem(tmp_path / "study.log") for _ in range(200)) if p)

    threads = [threading.Thread(target=open_many) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.log"]  # no probe left behind


@pytest.mark.parametrize("flags, message", [
    (["--grace-period", "0"], "--grace-period must be an integer >= 1, got 0"),
    (["--max-retries", "-1"], "--max-retries must be an integer >= 0, got -1"),
    (["--heartbeat-interval", "60", "--grace-period", "60"], "--grace-period (60 s) must exceed --heartbeat-interval"),
])
def test_bad_liveness_flags_are_one_message(flags, message, capsys):
    from tbjax.cli.hpo import main

    assert main(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_workers_started_together_on_a_new_database_all_open_it(tmp_path):
    """Four workers opening a new SQLite study at the same moment race to create Optuna's tables;
    the losers retry (tbjax.hpo.storage.SCHEMA_ATTEMPTS) instead of exiting."""
    code = ("import sys, optuna; from pathlib import Path; from tbjax.hpo.storage import make_storage; "
            "optuna.create_study(storage=make_storage(None, Path(sys.argv[1])), study_name='s', load_if_exists=True)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}").trials == []


def test_sqlite_never_hands_one_waiting_trial_to_two_workers(tmp_path):
    """Optuna pops a WAITING trial (a retry, an enqueued trial) by reading then writing its state;
    SQLite ignores FOR UPDATE, so without tbjax's BEGIN IMMEDIATE two workers could both run it
    (seen: 1-9 duplicates of 40 with 4 workers)."""
    from tbjax.hpo.storage import make_storage

    study = optuna.create_study(storage=make_storage(None, tmp_path), study_name="q")
    for i in range(40):
        study.enqueue_trial({"x": float(i)})
    code = ("import sys, warnings, optuna; from pathlib import Path; from tbjax.hpo.storage import make_storage; "
            "warnings.simplefilter('ignore'); "
            "s = optuna.load_study(study_name='q', storage=make_storage(None, Path(sys.argv[1]))); "
            "print(' '.join(str(s.ask().number) for _ in range(10)))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in outs]
    popped = [int(n) for out, _ in outs for n in out.split()]
    assert sorted(popped) == list(range(40))  # every enqueued trial once: none twice, none lost


def test_results_are_rewritten_when_a_trial_finishes_while_they_are_written(tmp_path, monkeypatch):
    """Two workers write hpo_summary.json at their ends; one that read the study before the other's
    last trial finished must not leave its older summary behind."""
    from tbjax.hpo import results as hpo_results

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(optuna.trial.create_trial(params={"x": 0.1}, distributions=dist, value=1.0))
    real, calls = hpo_results._write_results_once, []

    def slow_write(*args):
        out = real(*args)
        if not calls:  # another worker's better trial completes while this one writes
            study.add_trial(optuna.trial.create_trial(params={"x": 0.9}, distributions=dist, value=5.0))
        calls.append(out["best_trial"])
        return out

    monkeypatch.setattr(hpo_results, "_write_results_once", slow_write)
    summary = hpo_results.write_results(study, tmp_path)
    assert calls == [0, 1]
    assert summary["best_trial"] == 1
    assert json.loads((tmp_path / "hpo_summary.json").read_text())["best_trial"] == 1


def test_workers_swapping_best_at_once_never_fail_and_leave_a_whole_copy(tmp_path):
    """best/ is swapped in by every worker at its end; writing into best/ after the swap failed in CI
    when another worker's swap had just moved it aside. The extra files now travel inside the copy."""
    import threading

    from tbjax.hpo.results import _swap_in_copy

    trials = []
    for k in range(4):
        src = tmp_path / "trials" / str(k)
        src.mkdir(parents=True)
        (src / "config.yaml").write_text(f"trial: {k}\n")
        trials.append(src)
    errors = []

    def worker(k):
        try:
            for i in range(40):
                _swap_in_copy(trials[k], tmp_path / "best", {"selection_bias.json": json.dumps({"trial": k, "i": i})})
        except Exception as exc:  # collected: an exception in a thread would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    best = tmp_path / "best"
    chosen = json.loads((best / "selection_bias.json").read_text())["trial"]
    assert (best / "config.yaml").read_text() == f"trial: {chosen}\n"  # the file and the copy agree
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "trials"]  # no temp folder left
