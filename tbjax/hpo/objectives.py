"""What a trial is scored on: ``hpo.objectives``, one to three metrics of its val backtest.

The default, ``[objective]``, is the single-objective search of the regime objective that every HPO
run has done: the study is created, reported to and pruned exactly as before. Each entry is a
metric name (``tbjax.config_rules.HPO_OBJECTIVES``, with its natural direction) or
``name:maximize`` / ``name:minimize``. ``cvar`` and ``var`` are the per-bar CVaR / VaR 5 % of the
val returns read as LOSSES (:func:`tbjax.evaluation.pareto.tail_loss`: minus ``cvar_5`` /
``var_5``), so ``[sortino, cvar]`` asks for a high Sortino and a small tail loss.

Why one checkpoint rule for every objective: each trial keeps the checkpoint of its best regime
objective, as ``tbjax.train`` does (``train.patience`` stops it the same way), and its objective
values are read from THAT checkpoint's val backtest. So ``python -m tbjax.evaluate`` on a trial's
folder reproduces the values, and each trial's evaluations (``val_candidates``) are the candidates
the selection statistics count (:mod:`tbjax.hpo.selection`), whatever the objectives.

Two or three objectives make an Optuna multi-objective study (``directions``; the TPE sampler is
then Optuna's multi-objective TPE, which needs no generation-sized population as NSGA-II does).
Optuna has no pruning for such studies (``Trial.report`` / ``should_prune`` refuse them), so
nothing is reported and nothing pruned: ``hpo.pruner`` is not used (said once on stderr and in
``hpo_summary.json``). ``train.patience`` still ends a trial early (training's rule, not a pruner).
A single objective other than the regime objective reports that metric of every val backtest to
the pruner (the study's direction applied by Optuna); the regime objective's median rule
(:func:`tbjax.hpo.trial_scores.objective_prunes`) prunes the regime objective only.

An undefined metric (a Sortino without a losing bar, a flat policy's Sharpe) counts as 0, as in
the regime objective (:func:`tbjax.evaluation.objective.finite_or_zero`); Optuna would fail a trial
told NaN. The study remembers its objectives (user attr ``objectives``): resuming it with other
``hpo.objectives`` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from tbjax.config_rules import hpo_objectives
from tbjax.errors import InputError
from tbjax.evaluation.objective import finite_or_zero
from tbjax.evaluation.pareto import LOSS_SIGN, tail_loss

REGIME = "objective"
POOLED_KEY = {"cvar": "cvar_5", "var": "var_5"}  # hpo.objectives name -> pooled metric key
STUDY_ATTR = "objectives"  # study user attr: ["name:direction", ...] (absent: the regime objective alone)
PRUNING_OFF = ("off: Optuna does not support pruning multi-objective studies, so hpo.pruner is not used; "
               "train.patience still ends a trial early")


def metric_value(name: str, objective: float, pooled: dict) -> float:
    """Objective ``name`` of a val backtest (``pooled`` metrics) whose regime objective is ``objective``."""
    if name == REGIME:
        return float(objective)
    key = POOLED_KEY.get(name, name)
    return finite_or_zero(tail_loss(pooled, key) if key in LOSS_SIGN else pooled.get(key))


@dataclass(frozen=True)
class Goals:
    """The objectives of a study: names and Optuna directions, in the order written."""

    names: tuple[str, ...] = (REGIME,)
    directions: tuple[str, ...] = ("maximize",)

    @classmethod
    def of(cls, cfg) -> Goals:
        """From ``hpo.objectives`` (no config: the default)."""
        if cfg is None:
            return cls()
        pairs = hpo_objectives(cfg.hpo.objectives)
        return cls(tuple(n for n, _ in pairs), tuple(d for _, d in pairs))

    @classmethod
    def of_study(cls, study) -> Goals:
        """What ``study`` was created with (a study without the attr: the regime objective alone)."""
        written = study.user_attrs.get(STUDY_ATTR)
        directions = tuple(d.name.lower() for d in study.directions)
        if written:
            return cls(*map(tuple, zip(*(w.split(":") for w in written))))
        return cls() if directions == ("maximize",) else cls(tuple(f"value_{i}" for i in range(len(directions))),
                                                              directions)

    classic = property(lambda self: self == Goals())  # today's search, unchanged
    multi = property(lambda self: len(self.names) > 1)
    prunable = property(lambda self: not self.multi)  # Optuna prunes single-objective studies only
    median_rule = property(lambda self: self.classic)  # the regime objective's own prune rule
    reported_name = property(lambda self: "val Sortino" if self.names[0] == REGIME else f"val {self.names[0]}")

    def report(self, trial, pooled: dict, update: int) -> None:
        """``trial.report`` of an evaluation (single objective only): the val Sortino for the regime
        objective (its val part; the whole objective comes every ``hpo.objective_every`` evaluations),
        else the metric itself."""
        if self.prunable:
            first = self.names[0]
            trial.report(finite_or_zero(pooled["sortino"]) if first == REGIME else metric_value(first, 0.0, pooled),
                         step=update)

    def should_prune(self, trial) -> bool:
        return self.prunable and trial.should_prune()

    def told(self, trial, objective: float, pooled: dict):
        """What Optuna is told for a checkpoint: its regime objective (default), else the objectives'
        values, also kept as the trial's user attr ``objective_values`` (name -> value)."""
        if self.classic:
            return objective
        values = [metric_value(n, objective, pooled) for n in self.names]
        trial.set_user_attr("objective_values", dict(zip(self.names, values)))
        return values

    def as_json(self) -> list[dict]:
        return [{"name": n, "direction": d} for n, d in zip(self.names, self.directions)]

    def label(self) -> str:
        return ", ".join(f"{n} ({d})" for n, d in zip(self.names, self.directions))

    def adopt(self, study, shown: str) -> None:
        """Record these objectives on a new ``study`` (no attr, no trial yet); refuse a study created
        with other ones (``shown``: its storage, for the message)."""
        have = Goals.of_study(study)
        if have == self:
            return
        if STUDY_ATTR in study.user_attrs or have.directions != self.directions or study.get_trials(deepcopy=False):
            raise InputError(f"hpo.objectives = [{self.label()}] differs from study '{study.study_name}' in {shown}, "
                             f"created with [{have.label()}]: use the same hpo.objectives to resume it, or a new "
                             "--study-name")
        study.set_user_attr(STUDY_ATTR, [f"{n}:{d}" for n, d in zip(self.names, self.directions)])  # a new study

    def postfix(self, study, complete: list) -> dict:
        """The progress bar's note: the best value, or the size of the Pareto front."""
        if self.multi:
            return {"front": len(study.best_trials)}
        return {"best": f"{study.best_value if not self.classic else max(t.value for t in complete):.3f}"}
