"""How a trial ends: what it leaves in its user attrs and its folder, then Optuna told its state.

Why its own module: every way a trial ends goes through here, so each leaves the same record.
A finished trial (COMPLETE, stopped early by ``train.patience``, or PRUNED) gets ``lr_applied``,
``objective_series`` and, when it kept a best checkpoint, that checkpoint's ``val_metrics`` /
``test_metrics`` (the shared backtest, :func:`tbjax.hpo.trial_scores.backtest`), its pooled val
returns and a run folder ``run_dir/trials/<number>/`` written atomically; it is told what
:class:`tbjax.hpo.objectives.Goals` makes of that backtest. A failed trial gets ``fail_reason``
(and ``fail_traceback``). Either way its heartbeat stops (:class:`tbjax.hpo.liveness.Liveness`,
set by the runner while it optimizes) before Optuna is told.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from optuna.trial import TrialState

from tbjax.atomic import atomic_folder, write_atomic
from tbjax.config import dump_config
from tbjax.data.market import ROLE_TEST, ROLE_VAL
from tbjax.evaluation.backtest import CORE_BASELINE_KEYS
from tbjax.evaluation.metrics import json_safe, pooled_returns
from tbjax.hpo.liveness import Liveness
from tbjax.hpo.objectives import Goals
from tbjax.hpo.trial_member import Member
from tbjax.hpo.trial_scores import backtest
from tbjax.learner.trainer import Trainer
from tbjax.run.checkpoint import RunCheckpoints
from tbjax.run.experiment import Experiment


class TrialTeller:
    """Ends trials of one Experiment: ``run_dir/trials/<number>/`` holds each finished trial's files."""

    def __init__(self, run_dir: Path, exp: Experiment, goals: Goals):
        self.run_dir, self.exp, self.goals = run_dir, exp, goals
        self.liveness: Liveness | None = None

    def fail(self, trial, reason: str, tb: str | None = None) -> None:
        """FAIL ``trial`` with its reason (and traceback) in user attrs; its heartbeat stops."""
        trial.set_user_attr("fail_reason", reason[:500])
        if tb:
            trial.set_user_attr("fail_traceback", tb[-4000:])
        if self.liveness is not None:
            self.liveness.discard(trial)
        trial.study.tell(trial, state=TrialState.FAIL)

    def save(self, member: Member, trainer: Trainer):
        """Metrics of the best checkpoint (the shared backtest) and the trial's folder; returns what Optuna is told.

        The folder is a run directory: ``python -m tbjax.evaluate --run-dir trials/<n>`` re-scores
        the checkpoint and writes the same ``val_metrics`` / ``test_metrics`` into eval/.
        """
        trial, cfg, (objective, update, carry, _) = member.trial, member.cfg, member.book.best(0)
        val, val_series = backtest(member, trainer, carry, ROLE_VAL)
        # pooled per-bar val returns for hpo/selection.py; 9 digits, as a near-zero Sharpe amplifies
        # rounding in the mean about 1 / Sharpe times (7 digits moved one by 1e-5 relative).
        trial.set_user_attr("val_returns", [float(f"{x:.9g}") for x in pooled_returns(val_series)])
        test = backtest(member, trainer, carry, ROLE_TEST)[0]
        trial.set_user_attr("val_metrics", json_safe({k: val["pooled"][k] for k in CORE_BASELINE_KEYS}))
        trial.set_user_attr("test_metrics", json_safe({k: test["pooled"][k] for k in CORE_BASELINE_KEYS}))
        trial.set_user_attr("best_update", update)
        told = self.goals.told(trial, objective, val["pooled"])
        trial_dir = self.run_dir / "trials" / str(trial.number)
        with atomic_folder(trial_dir) as staging:  # a worker killed while saving leaves no half folder
            write_atomic(staging / "config.yaml", dump_config(cfg))
            self.exp.pipeline.save(staging / "feature_pipeline.json")
            ckpt = RunCheckpoints(staging)
            try:
                ckpt.save_best(update, carry, {"update": update, "env_steps": update * cfg.batch_size,
                                               "objective": objective, "trial": trial.number})
            finally:
                ckpt.close()
        trial.set_user_attr("run_dir", str(trial_dir))
        return told

    def finish(self, member: Member, trainer: Trainer, state: TrialState, reason: str | None = None) -> None:
        """Write the trial's directory and attrs, then tell Optuna (PRUNED or COMPLETE)."""
        trial = member.trial
        member.alive = False  # masked out of the batch from now on, even if saving fails below
        trial.set_user_attr("lr_applied", member.lr_applied)
        trial.set_user_attr("objective_series", json_safe(member.objective_series))
        if reason:
            trial.set_user_attr("pruned_reason", reason)
        told = self.save(member, trainer) if member.book.best(0) is not None else None
        if self.liveness is not None:
            self.liveness.discard(trial)
        if state == TrialState.COMPLETE:
            trial.study.tell(trial, told)
        else:
            trial.study.tell(trial, state=TrialState.PRUNED)
        member.told = True

    def fail_group(self, group: list[Member], exc: BaseException) -> None:
        """FAIL every member of ``group`` not yet told, with the exception as the reason."""
        reason = f"{type(exc).__name__}: {exc}"
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        for m in group:
            if not m.told and not m.pad:
                m.alive = False
                try:
                    self.fail(m.trial, reason, tb)
                except Exception:  # the storage itself failed: the heartbeat stops, the trial goes stale
                    pass
                m.told = True
