"""Liveness of HPO trials across workers, with Optuna's own heartbeat and retry machinery.

A worker that dies (``kill -9``, a lost machine, the OOM killer) leaves its trials RUNNING.
Optuna's answer, used here as its documentation recommends for distributed runs:

* every trial this worker runs beats from Optuna's per-trial heartbeat thread (the one
  ``Study.optimize`` starts; a batch of B vmapped trials has B of them), so compiles and long
  chunks never silence a trial;
* before each ask, ``optuna.storages.fail_stale_trials`` fails the RUNNING trials silent for the
  grace period and calls the storage's ``heartbeat_stale_trial_callback``: a
  ``RetryHeartbeatStaleTrialCallback(max_retry)`` (``RetryFailedTrialCallback`` before Optuna
  4.9) that queues a WAITING copy with the same params; the copy records its origin in the system
  attrs ``failed_trial`` / ``retry_history`` (``RetryHeartbeatStaleTrialCallback.retried_trial_number``).

SQL storages are Optuna's ``RDBStorage(heartbeat_interval, grace_period, ...)``. Optuna's journal
storage has no heartbeat, so :class:`HeartbeatJournalStorage` gives it Optuna's heartbeat interface
(``BaseHeartbeat``: the beat is a system attr, stale = RUNNING and silent for the grace period),
and the same Optuna functions serve all three storages. Both carry :class:`LiveOwnerHeartbeat`: a
failed beat never ends the beat thread, and a trial whose worker is alive on the checking
worker's machine is never stale (a long SQLite write lock silences every beat).

Counting (``n_trials`` is the study's total, :func:`counted_trials`): every started trial except
a stale trial that was retried (its retry stands in for it) and a surplus trial. Trial numbers are
dense and assigned by the storage, so a fresh trial numbered n is surplus when ``n_trials`` fresh
trials have smaller numbers (concurrent workers asked together at the end): it is failed at once
with ``surplus`` and a reason, and never trains. So N workers finish exactly ``n_trials``.
"""

from __future__ import annotations

import copy
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import (
    BaseHeartbeat,
    get_heartbeat_thread,
    is_heartbeat_enabled,
)
from optuna.trial import TrialState

from tbjax.hpo.liveness_settings import LivenessSettings  # noqa: F401  (re-exported)

HEARTBEAT_ATTR = "tbjax:heartbeat"  # journal storages only: Optuna's RDB keeps its own heartbeat table
OWNER_ATTR = "tbjax:worker"  # the process that runs the trial: never failed as stale while it beats it
SURPLUS_ATTR = "surplus"


def numbers(trials) -> str:
    return ", ".join(str(t.number) for t in trials)


def grace_of(storage) -> int | None:
    """The storage's grace period (seconds; Optuna's default is twice the interval), None without a heartbeat."""
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        return None
    backend = getattr(storage, "_backend", storage)  # RDBStorage inside Optuna's cache
    return getattr(backend, "grace_period", None) or 2 * interval


class StaleTrialRetry(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a heartbeat-stale trial, plus one stderr line naming it.

    The copy starts without the stale trial's user attrs (its partial ``objective_series`` and
    ``lr_applied`` belong to the killed attempt), without its journal heartbeat (an old beat
    would make the copy look stale before its own thread beats) and without its owner. Numbers this process failed are
    kept in ``failed`` (for :func:`recover_stale`).
    """

    def __init__(self, max_retry: int, grace: int, log: Callable[[str], None]):
        with warnings.catch_warnings():  # marked experimental since Optuna 2.8
            warnings.simplefilter("ignore")
            super().__init__(max_retry=max_retry)
        self.grace, self.log, self.failed = grace, log, []

    def __call__(self, study, trial) -> None:
        retry = copy.deepcopy(trial)
        retry.user_attrs = {}
        retry.system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in (HEARTBEAT_ATTR, OWNER_ATTR)}
        before = len(study.get_trials(deepcopy=False))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            super().__call__(study, retry)
        self.failed.append(trial.number)
        origin = retry.system_attrs.get("failed_trial", trial.number)
        again = (f"queued again as trial {before} with the same parameters" if len(study.get_trials(deepcopy=False))
                 > before else f"not retried: trial {origin} was retried {self._max_retry} times already")
        self.log(f"hpo: stale trial {trial.number} marked FAIL (no heartbeat for over {self.grace} s: its worker "
                 f"stopped); {again}")


# --------------------------------------------------------------------------- who runs a trial


def _machine() -> str:
    """This machine and PID namespace: host name, kernel boot id, PID namespace (where readable)."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:
            pass
    return "/".join(parts)


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc) or None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has stopped running


def _process_alive(pid: int, started: str | None) -> bool:
    """Process ``pid`` runs and is the one that started at ``started`` (not a later one with its pid)."""
    if Path("/proc/self/stat").exists():
        now = _started(pid)
        return now is not None and (started is None or now == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


MACHINE = _machine()
_BEATING: set[tuple[str, int]] = set()  # (Liveness token, trial id) this process beats now
_BEATING_LOCK = threading.Lock()


def owner_alive(owner, trial_id: int) -> bool:
    """True when the process that runs the trial (its ``OWNER_ATTR``) is on this machine and provably
    still runs it: this process and one of its Liveness still beats the trial, or another live
    process (same pid and start time). Elsewhere (another machine) only the heartbeat can tell."""
    if not isinstance(owner, dict) or owner.get("machine") != MACHINE:
        return False
    if owner.get("pid") == os.getpid():
        with _BEATING_LOCK:
            return (owner.get("token"), trial_id) in _BEATING
    return _process_alive(int(owner["pid"]), owner.get("started"))


class LiveOwnerHeartbeat:
    """What tbjax adds to Optuna's heartbeat storages (mixed in before the storage class).

    * A beat never stops the beating: Optuna's heartbeat thread ends at the first exception of
      ``record_heartbeat``, and then the live trial goes stale. A failed beat (a lock timeout behind
      another worker's long write, a dropped connection) is logged and the next beat follows after
      the interval; a beat on a trial another worker already failed is ignored.
    * A trial is stale only when no live process on this machine runs it (:func:`owner_alive`):
      a silence caused by the storage itself (a write lock held longer than the grace period) never
      fails and retries a trial whose worker is alive. Across machines the heartbeat alone decides.
    """

    beat_log: Callable[[str], None] = staticmethod(lambda line: print(line, file=sys.stderr, flush=True))

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker judged it stale: nothing to keep alive
            pass
        except Exception as exc:  # noqa: BLE001 (the beat thread must live on whatever the storage raised)
            cause = exc.__cause__ or exc
            why = " ".join(f"{type(cause).__name__}: {cause}".split())[:300]
            self.beat_log(f"hpo: a heartbeat of trial id {trial_id} failed ({why}); the next one follows in "
                          f"{self.get_heartbeat_interval()} s")

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return [i for i in super()._get_stale_trial_ids(study_id)
                if not owner_alive(self.get_trial(i).system_attrs.get(OWNER_ATTR), i)]


class HeartbeatRDBStorage(LiveOwnerHeartbeat, RDBStorage):
    """Optuna's RDBStorage (its heartbeat table and stale-trial check) with :class:`LiveOwnerHeartbeat`."""


class _JournalHeartbeat(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with Optuna's heartbeat interface (Optuna 5 has none for journals).

    ``record_heartbeat`` writes the time as the system attr ``HEARTBEAT_ATTR``; a RUNNING trial
    whose last beat is older than ``grace_period`` is stale (one without a beat never is, as in
    RDBStorage). Worker clocks must agree within the grace period (RDBStorage uses the server's).
    """

    def __init__(self, backend, heartbeat_interval: int, grace_period: int, heartbeat_stale_trial_callback=None):
        super().__init__(backend)
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if HEARTBEAT_ATTR in t.system_attrs and now - float(t.system_attrs[HEARTBEAT_ATTR]) > self.grace_period]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self.heartbeat_stale_trial_callback


class HeartbeatJournalStorage(LiveOwnerHeartbeat, _JournalHeartbeat):
    """The journal storage with the heartbeat interface and :class:`LiveOwnerHeartbeat`."""


class Liveness:
    """Optuna's heartbeat thread for each trial this worker runs, for one study.

    :meth:`add` starts the thread of a trial (it beats at once, then every interval),
    :meth:`discard` stops it before the trial is told; leaving the context stops the rest.
    """

    def __init__(self, study):
        self.study = study
        self._threads: dict[int, object] = {}
        self._lock = threading.Lock()
        self._token = uuid.uuid4().hex

    def add(self, trial) -> None:
        """Name this process as the trial's owner (:func:`owner_alive`), beat once now (a trial whose
        worker dies before its thread's first beat would never be stale: Optuna skips trials
        without a beat), then from Optuna's thread."""
        storage = self.study._storage
        with _BEATING_LOCK:
            _BEATING.add((self._token, trial._trial_id))
        if is_heartbeat_enabled(storage):
            storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, {
                "machine": MACHINE, "pid": os.getpid(), "started": _started(os.getpid()), "token": self._token})
            storage.record_heartbeat(trial._trial_id)
        beat = get_heartbeat_thread(trial._trial_id, storage)
        with self._lock:
            self._threads[trial._trial_id] = beat
        beat.start()

    def discard(self, trial) -> None:
        with self._lock:
            beat = self._threads.pop(trial._trial_id, None)
        with _BEATING_LOCK:
            _BEATING.discard((self._token, trial._trial_id))
        if beat is not None:
            beat.join()

    def mine(self, trial) -> bool:
        with self._lock:
            return trial._trial_id in self._threads

    def __enter__(self) -> "Liveness":
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            beats, self._threads = dict(self._threads), {}
        with _BEATING_LOCK:
            _BEATING.difference_update((self._token, trial_id) for trial_id in beats)
        for beat in beats.values():
            beat.join()


def retries_of(trials) -> dict[int, int]:
    """Retry number → the stale trial it re-runs (Optuna's ``retry_history``, last entry)."""
    return {t.number: t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")}


def failure_reasons(trials) -> dict[int, str | None]:
    """FAIL trial number → its reason; a trial failed by Optuna's stale-trial check has none
    recorded (Optuna fails it before any attr can be set), so its reason is said here."""
    retried_as = {origin: number for number, origin in retries_of(trials).items()}
    out = {}
    for t in trials:
        if t.state == TrialState.FAIL:
            stale = "no heartbeat for the grace period: its worker stopped; " + (
                f"retried as trial {retried_as[t.number]}" if t.number in retried_as else "not retried")
            out[t.number] = t.user_attrs.get("fail_reason") or stale
    return out


def retried_numbers(trials) -> set[int]:
    """Numbers of the stale trials that a retry stands in for (they leave the trial count)."""
    return set(retries_of(trials).values())


def is_retry(trial) -> bool:
    return trial.system_attrs.get("failed_trial") is not None


def counted_trials(study) -> list:
    """The trials ``n_trials`` counts: started ones, minus stale trials that were retried and surplus trials."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return [t for t in trials if t.state != TrialState.WAITING and t.number not in retried
            and not t.user_attrs.get(SURPLUS_ATTR)]


def waiting_retries(study) -> list:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if is_retry(t)]


def surplus_reason(study, trial, n_trials: int) -> str | None:
    """Why ``trial`` (just asked) must not run: ``n_trials`` fresh trials have smaller numbers."""
    trials = study.get_trials(deepcopy=False)
    me = next(t for t in trials if t._trial_id == trial._trial_id)
    if is_retry(me):
        return None  # a retry stands in for a trial that already holds its place
    before = [t for t in trials if t.number < me.number and not is_retry(t) and not t.user_attrs.get(SURPLUS_ATTR)]
    if len(before) < n_trials:
        return None
    return (f"surplus: trials {before[0].number}..{before[-1].number} already fill n_trials = {n_trials} "
            "(another worker asked at the same moment); not run")


def recover_stale(study) -> list[int]:
    """Optuna's ``fail_stale_trials``: FAIL trials whose worker stopped and queue their retries.

    Returns the numbers this call failed (the storage's :class:`StaleTrialRetry` logs each one).
    Two workers may see the same stale trial: only the one whose FAIL lands retries it.
    """
    callback = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    seen = len(callback.failed) if isinstance(callback, StaleTrialRetry) else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    return list(callback.failed[seen:]) if isinstance(callback, StaleTrialRetry) else []


def note_foreign_running(study, liveness: Liveness | None, grace: float, log: Callable[[str], None]) -> None:
    """Name the RUNNING trials of other (or stopped) workers once, so they are not counted silently."""
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if not (liveness and liveness.mine(t))]
    if running:
        log(f"hpo: trials {numbers(running)} are RUNNING in another worker (or one stopped less than "
            f"{grace:.0f} s ago): they count toward n_trials, and are failed and retried if their "
            "heartbeat stays silent that long")
