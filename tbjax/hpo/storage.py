"""Where a study lives: SQLite (default), any SQLAlchemy URL (PostgreSQL for several machines) or
an Optuna journal file, each with Optuna's heartbeat and stale-trial retry (:mod:`tbjax.hpo.liveness`).

``optuna-dashboard <the URL or journal path>`` opens each of them (docs/SCALE_OUT.md).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from tbjax.errors import InputError
from tbjax.hpo.liveness import (
    HeartbeatJournalStorage,
    HeartbeatRDBStorage,
    StaleTrialRetry,
)
from tbjax.hpo.liveness_settings import LivenessSettings

STORAGE_FLAG = "--storage / hpo.storage"
SCHEMA_ATTEMPTS = 3  # opening a new database races with the other workers creating its tables
SQLITE_LOCK_WAIT = 60  # seconds a SQLite call waits for the write lock (at least; the grace period if longer)


def storage_shown(spec: str | None, run_dir: Path) -> str:
    """The storage as ``optuna-dashboard`` and ``optuna.load_study`` take it (a password is masked)."""
    if spec is None:
        return f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if "://" not in spec:
        return str(Path(spec).resolve())  # a journal file
    from sqlalchemy.engine import make_url

    return make_url(spec).render_as_string(hide_password=True)


def make_storage(spec: str | None, run_dir: Path, live: LivenessSettings | None = None, log=None):
    """None → SQLite in the run dir; ``*.log`` → journal file; otherwise an SQLAlchemy URL.

    Every storage gets Optuna's heartbeat (``heartbeat_interval``, ``grace_period``) and its
    ``RetryHeartbeatStaleTrialCallback(max_retry)``: how a trial whose worker was killed is
    recognised and queued again (:mod:`tbjax.hpo.liveness`), with beats that survive a storage
    error and no stale verdict on a trial whose worker is alive (``LiveOwnerHeartbeat``). ``log``
    prints the one line per stale trial or failed beat (stderr by default).

    SQLite serialises every transaction (``BEGIN IMMEDIATE``, below), so a call waits up to
    ``SQLITE_LOCK_WAIT`` seconds, or the grace period if longer, for the write lock: a worker
    waits out another's long write instead of failing its trial.
    """
    import warnings

    import optuna

    live = live or LivenessSettings()
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    retry = StaleTrialRetry(live.max_retry, live.grace, log)
    if spec is None:
        spec = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if spec.endswith(".log") and "://" not in spec:
        storage = journal_storage(spec, live, retry)
        storage.beat_log = log
        return storage
    if "://" not in spec:
        raise InputError(f"{STORAGE_FLAG} '{spec}' is neither an SQLAlchemy URL (e.g. sqlite:///study.db, "
                         "postgresql://user@host/db) nor a journal file ending in .log")
    # SQLite: wait for the write lock; PostgreSQL: drop connections the server closed (Optuna's advice)
    engine = ({"connect_args": {"timeout": max(SQLITE_LOCK_WAIT, live.grace)}} if spec.startswith("sqlite")
              else {"pool_pre_ping": True})
    from sqlalchemy.exc import IntegrityError, OperationalError

    try:
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                with warnings.catch_warnings():  # heartbeat_interval is marked experimental
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = HeartbeatRDBStorage(spec, engine_kwargs=engine, heartbeat_interval=live.interval,
                                                  grace_period=live.grace, heartbeat_stale_trial_callback=retry)
                storage.beat_log = log
                return _serialize_sqlite(storage) if spec.startswith("sqlite") else storage
            except (IntegrityError, OperationalError):  # workers started together on a new database: the tables
                # another one was creating ("already exists", a unique version row); an unreachable server too
                if attempt == SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(1.0)
    except Exception as exc:  # sqlalchemy raises many types for bad URLs / unreachable servers
        raise InputError(f"cannot open {STORAGE_FLAG} '{spec}' ({type(exc).__name__}: {exc}): "
                         "check the URL and that the database is reachable and writable") from None


def _serialize_sqlite(storage):
    """Every SQLite transaction of ``storage`` starts with ``BEGIN IMMEDIATE`` (SQLAlchemy's pysqlite
    recipe). SQLite ignores ``SELECT ... FOR UPDATE``, so without it two workers can both move the
    same WAITING trial (a retry, an enqueued trial) to RUNNING in Optuna's read-then-write
    ``_pop_waiting_trial_id`` and train it twice; PostgreSQL's row lock already prevents that."""
    from sqlalchemy import event

    def no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # pysqlite must not open transactions itself

    event.listen(storage.engine, "connect", no_implicit_begin)
    event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    storage.engine.dispose()  # connections opened before the listeners are replaced
    return storage


def _journal_problem(path: Path) -> str | None:
    """Why a journal file cannot live at ``path`` (None when it can): checked before Optuna opens it."""
    if path.is_dir():
        return "is a directory, not a file"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"cannot be created: '{parent}' is a file, not a folder"
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):  # the journal itself (appended to, never truncated)
            pass
        # Optuna also writes its lock file beside it; one probe name per process (workers start together)
        probe = path.with_name(f".{path.name}.probe.{os.getpid()}.{threading.get_ident()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"is not writable ({exc.strerror or type(exc).__name__})"
    return None


def journal_storage(spec: str, live: LivenessSettings | None = None, retry=None):
    """An Optuna journal file storage with the heartbeat interface, one clear InputError when the
    path cannot hold it."""
    from optuna.storages.journal import JournalFileBackend

    live = live or LivenessSettings()

    path = Path(spec)
    problem = _journal_problem(path)
    if problem:
        raise InputError(f"{STORAGE_FLAG} journal file '{spec}' {problem}: pass a writable file path ending "
                         "in .log whose folder exists or can be created (e.g. runs/hpo/study.log)")
    return HeartbeatJournalStorage(JournalFileBackend(spec), live.interval, live.grace, retry)
