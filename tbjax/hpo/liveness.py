"""Liveness of HPO trials: heartbeats of this worker's trials, stale trials of killed workers.

A worker that dies leaves its trials RUNNING. Every live trial has a heartbeat: Optuna's own
(``RDBStorage(heartbeat_interval, grace_period)``, sqlite/postgres URLs) or, for storages without
one (Optuna's journal files), the same rule on the system attr ``tbjax:heartbeat``. A background
thread beats every ``HEARTBEAT_INTERVAL_S`` for each trial this worker runs (compiles and long
chunks included, since the Python loop is blocked then). Before asking, a worker fails every trial
silent for ``GRACE_PERIOD_S`` with a ``fail_reason``, enqueues a retry with the same params (user
attr ``retry_of`` = the stale trial's number) up to ``MAX_RETRIES`` times, and prints one line
naming the trials (:func:`recover_stale`); RUNNING trials of other workers are named once when a
worker starts (:func:`note_foreign_running`).

Counting: ``n_trials`` is the study's total (:func:`counted_trials`): every started trial (any
state but WAITING) except a stale trial that was retried (its retry stands in for it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

HEARTBEAT_INTERVAL_S = 30  # Optuna wants whole seconds
GRACE_PERIOD_S = 600  # silent this long = its worker stopped (a chunk or compile never blocks the beat thread)
MAX_RETRIES = 2  # a trial that keeps killing its worker (e.g. the OOM killer) is retried this often
HEARTBEAT_ATTR = "tbjax:heartbeat"  # system attr, for storages without Optuna's heartbeat


def numbers(trials) -> str:
    return ", ".join(str(t.number) for t in trials)


def optuna_heartbeat_enabled(storage) -> bool:
    """Whether ``storage`` carries Optuna's heartbeat (an RDBStorage built with ``heartbeat_interval``)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


class Liveness:
    """Heartbeats of this worker's trials and the stale trials of others, for one study.

    Optuna's heartbeat where the storage has it (RDBStorage built with ``heartbeat_interval``:
    ``record_heartbeat`` and its stale-trial query, the pair ``optuna.storages.fail_stale_trials``
    uses; that function is not called because it fails a trial before a reason can be attached).
    Otherwise (journal files) the same rule on the system attr ``HEARTBEAT_ATTR``, falling back
    to the trial's start time (or the old ``heartbeat`` user attr) when it never beat.

    A daemon thread beats for every registered trial each ``interval`` seconds: Optuna's own
    heartbeat runs in a thread too, because ``study.optimize`` would otherwise miss beats while a
    program compiles or a long chunk runs. This runner uses ask/tell, so it keeps the thread.
    """

    def __init__(self, study, interval: float = HEARTBEAT_INTERVAL_S, grace: float = GRACE_PERIOD_S):
        self.study, self.storage = study, study._storage
        self.optuna_heartbeat = optuna_heartbeat_enabled(self.storage)
        if self.optuna_heartbeat:
            backend = getattr(self.storage, "_backend", self.storage)
            interval = backend.get_heartbeat_interval()
            grace = getattr(backend, "grace_period", None) or 2 * interval
        self.interval, self.grace = float(interval), float(grace)
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, trial) -> None:
        """Beat for ``trial`` now and from the thread until :meth:`discard`."""
        with self._lock:
            self._ids.add(trial._trial_id)
        self._beat(trial._trial_id)

    def discard(self, trial) -> None:
        with self._lock:
            self._ids.discard(trial._trial_id)

    def _beat(self, trial_id: int) -> None:
        try:
            if self.optuna_heartbeat:
                self.storage.record_heartbeat(trial_id)
            else:
                self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except Exception:  # the trial finished meanwhile, or a transient storage error: beat again later
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self._ids)
            for trial_id in ids:
                self._beat(trial_id)

    def __enter__(self) -> "Liveness":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tbjax-hpo-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mine(self, trial) -> bool:
        with self._lock:
            return trial._trial_id in self._ids

    def stale(self) -> list:
        """RUNNING trials of the study whose heartbeat is older than the grace period."""
        running = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if not self.mine(t)]
        if self.optuna_heartbeat:
            ids = set(self.storage._get_stale_trial_ids(self.study._study_id))
            return [t for t in running if t._trial_id in ids]
        now = time.time()
        out = []
        for t in running:
            beat = t.system_attrs.get(HEARTBEAT_ATTR, t.user_attrs.get("heartbeat"))
            if beat is None:
                beat = t.datetime_start.timestamp() if t.datetime_start else now
            if now - float(beat) > self.grace:
                out.append(t)
        return out


def retried_numbers(trials) -> set[int]:
    """Numbers of the stale trials that a retry stands in for (they leave the trial count)."""
    return {t.user_attrs["retry_of"] for t in trials if t.user_attrs.get("retry_of") is not None}


def counted_trials(study) -> list:
    """The trials ``n_trials`` counts: started ones (not WAITING), minus stale trials that were retried."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return [t for t in trials if t.state != TrialState.WAITING and t.number not in retried]


def recover_stale(study, liveness: Liveness, log: Callable[[str], None]) -> list:
    """FAIL trials whose worker stopped (no heartbeat for the grace period) and retry them.

    Each gets ``fail_reason``, and a retry with the same params is enqueued (user attrs
    ``retry_of`` = its number, ``retry_count``) unless it was retried ``MAX_RETRIES`` times
    already. Two workers may see the same stale trial: only the one whose FAIL lands enqueues.
    Returns the trials this worker failed; ``log``s one line naming them.
    """
    failed, retried = [], []
    for t in liveness.stale():
        silent = f"no heartbeat for over {liveness.grace:.0f} s: its worker stopped"
        try:
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", silent)
            won = study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue  # another worker failed it first
        if not won:
            continue
        failed.append(t)
        count = int(t.user_attrs.get("retry_count", 0))
        if count < MAX_RETRIES:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number, "retry_count": count + 1})
            retried.append(t)
    if failed:
        again = (f"queued again with the same parameters: {numbers(retried)}" if retried else "not retried")
        given_up = [t for t in failed if t not in retried]
        tail = f"; given up after {MAX_RETRIES} retries: {numbers(given_up)}" if given_up and retried else ""
        log(f"hpo: stale trials {numbers(failed)} marked FAIL (no heartbeat for over "
            f"{liveness.grace:.0f} s: their worker stopped); {again}{tail}")
    return failed


def note_foreign_running(study, liveness: Liveness | None, log: Callable[[str], None]) -> None:
    """Name the RUNNING trials of other (or stopped) workers once, so they are not counted silently."""
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if not (liveness and liveness.mine(t))]
    if running:
        grace = liveness.grace if liveness else GRACE_PERIOD_S
        log(f"hpo: trials {numbers(running)} are RUNNING in another worker (or one stopped less than "
            f"{grace:.0f} s ago): they count toward n_trials, and are failed and retried if their "
            "heartbeat stays silent that long")
