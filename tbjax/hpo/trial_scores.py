"""What a trial is scored on and when its regime objective prunes it.

Why its own module: one definition with training. Every backtest and objective comes from
:mod:`tbjax.evaluation.scoring` (``evaluate_split``, ``regime_sortinos``, ``objective_of``) on a
per-trial view of the Experiment whose config is the trial's (:class:`tbjax.hpo.trial_member.Member`),
so a trial's reports, value, ``val_metrics`` and ``test_metrics`` are what ``tbjax.train`` /
``tbjax.evaluate`` compute for that config and checkpoint. Nothing here holds state.

The regime objective prunes through a second rule on the completed trials' user attrs (Optuna's
pruners see one stream only): when at least ``OBJECTIVE_PRUNE_STARTUP`` completed trials recorded an
objective at the same update and this trial's value is below their median, it is pruned
(:func:`objective_prunes`: the MedianPruner rule of Optuna applied to the objective stream).
"""

from __future__ import annotations

import numpy as np
from optuna.trial import TrialState

from tbjax.evaluation.scoring import evaluate_split, objective_of, regime_sortinos
from tbjax.hpo.trial_member import Member
from tbjax.learner.trainer import Trainer

OBJECTIVE_PRUNE_STARTUP = 3


def backtest(m: Member, trainer: Trainer, carry, role: int) -> tuple[dict, dict]:
    """The shared backtest of ``role`` (tbjax.evaluation.scoring.evaluate_split) for the trial's config."""
    return evaluate_split(m.exp, trainer.policy_apply, carry.params, carry.obs_stats, m.env_params, role)


def regime_objective(m: Member, trainer: Trainer, carry, val_eval: dict) -> float:
    """The regime objective from the val backtest plus the synthetic regime markets.

    Composed of the same pieces as ``tbjax.evaluation.scoring.evaluate_with_objective`` (training's
    best checkpoint); split here because the val backtest runs at every evaluation (pruner
    report) and the regime markets only every ``hpo.objective_every`` evaluations.
    """
    regimes = regime_sortinos(m.cfg, m.exp.regimes, m.exp.bars_per_year, trainer.policy_apply, carry.params,
                              carry.obs_stats, m.env_params)
    return objective_of(m.cfg, val_eval["pooled"]["sortino"], regimes)


def objective_prunes(study, update: int, value: float) -> str | None:
    """Why the regime objective ``value`` at ``update`` prunes its trial (module docstring), or None."""
    others = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        for u, v in t.user_attrs.get("objective_series", []):
            if u == update and v is not None:
                others.append(v)
    if len(others) >= OBJECTIVE_PRUNE_STARTUP and value < float(np.median(others)):
        return (f"regime objective {value:.4g} at update {update} is below the median "
                f"{float(np.median(others)):.4g} of {len(others)} completed trials")
    return None
