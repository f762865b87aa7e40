"""A group of trials trained together, at the chunk loop's hooks: reports, scores and pruning.

Why its own module: the chunk loop is training's (:func:`tbjax.run.chunks.run_chunks`: schedule,
metrics fetch, NaN guard per member, update count); what differs for HPO is what a group of trials
does at its hooks, and that is this class. The alive mask is the members' state (a member pruned or
diverged stops learning at once); each chunk's last learning rate goes to ``lr_applied``; a
diverged member is PRUNED (``pruned_reason``); the last chunk completes the survivors.

Reports and pruning. Every ``train.eval_every`` updates (rounded up to whole chunks) each live
trial is backtested on the validation split with its frozen observation statistics and its pooled
Sortino is ``trial.report``-ed at step = updates done (what is reported, and whether anything is:
:class:`tbjax.hpo.objectives.Goals`); the study's pruner decides (``should_prune``). Every ``hpo.objective_every`` evaluations, and
always at the last chunk, the regime objective (0.5·val + 0.3·CHOPPY_FLAT + 0.2·STRONG_TREND
Sortino; docs/ALGORITHMS.md) is computed and appended to the user attr ``objective_series``, and
the evaluation's val returns to ``val_candidates`` (what the trial chose among:
:mod:`tbjax.hpo.selection`); below the completed trials' median it prunes
(:func:`tbjax.hpo.trial_scores.objective_prunes`). The trial's value is its best objective, kept
with its carry by the trial's member book (:class:`tbjax.run.member_book.MemberBook`); that
checkpoint is what it saves. With no new best for ``train.patience`` objectives a trial stops,
COMPLETE (user attr ``stopped_early``).
"""

from __future__ import annotations

import numpy as np
from optuna.trial import TrialState

from tbjax.data.market import ROLE_VAL
from tbjax.evaluation.metrics import json_safe
from tbjax.hpo.objectives import Goals
from tbjax.hpo.selection import val_candidate
from tbjax.hpo.trial_member import Member
from tbjax.hpo.trial_scores import backtest, objective_prunes, regime_objective
from tbjax.hpo.trial_teller import TrialTeller
from tbjax.learner.trainer import Trainer
from tbjax.run.chunks import Chunk, ChunkHooks


class TrialGroup(ChunkHooks):
    """The members of one compiled program (padding included) at the chunk loop's hooks."""

    def __init__(self, members: list[Member], trainer: Trainer, teller: TrialTeller, goals: Goals):
        self.members, self.trainer, self.teller, self.goals = members, trainer, teller, goals

    def alive(self) -> list[bool]:
        return [m.alive for m in self.members]

    def record(self, i: int, metrics: dict, chunk: Chunk) -> None:
        self.members[i].lr_applied.append([chunk.update, float(np.asarray(metrics["lr"]).reshape(-1)[-1])])

    def diverged(self, i: int, error, chunk: Chunk) -> None:
        self.teller.finish(self.members[i], self.trainer, TrialState.PRUNED, f"non-finite update: {error}")

    def evaluate(self, i: int, carry, chunk: Chunk) -> None:
        self._evaluate(self.members[i], self.trainer, carry, chunk.update, chunk.last)

    def chunk_done(self, carry, chunk: Chunk) -> None:
        if chunk.last:
            for m in self.members:
                if m.alive:
                    self.teller.finish(m, self.trainer, TrialState.COMPLETE)

    def _evaluate(self, m: Member, trainer, carry, update: int, is_last: bool) -> None:
        """Report the val backtest, score the regime objective when due, stop or prune (module docstring)."""
        val, val_series = backtest(m, trainer, carry, ROLE_VAL)
        self.goals.report(m.trial, val["pooled"], update)
        m.n_evals += 1
        reason = None
        if m.n_evals % m.cfg.hpo.objective_every == 0 or is_last:
            value = regime_objective(m, trainer, carry, val)
            m.objective_series.append([update, value])
            m.trial.set_user_attr("objective_series", json_safe(m.objective_series))
            m.val_candidates.append(val_candidate(update, val_series))
            m.trial.set_user_attr("val_candidates", m.val_candidates)
            if m.book.offer(0, value, update, carry).stopped and not is_last:  # keeps an owning host copy
                m.trial.set_user_attr("stopped_early", {"update": update, "patience": m.cfg.train.patience})
                return self.teller.finish(m, trainer, TrialState.COMPLETE)  # train.patience, as training stops
            if m.cfg.hpo.pruner != "none" and not is_last and self.goals.median_rule:
                reason = objective_prunes(m.trial.study, update, value)
        if not is_last and reason is None and self.goals.should_prune(m.trial):
            reason = f"pruner ({m.cfg.hpo.pruner}) at update {update}: {self.goals.reported_name} below its rung"
        if reason is not None:
            self.teller.finish(m, trainer, TrialState.PRUNED, reason)
