"""The Pareto front of a multi-objective HPO study (``hpo.objectives`` with two or three metrics):
what ``hpo_summary.json`` (``pareto_front``), ``pareto/`` and the plots show of it.

Optuna's ``study.best_trials`` IS the front: the COMPLETE trials that no other COMPLETE trial
dominates (at least as good in every objective, in its direction, and better in one); trials with
equal values are all on it. Each member carries its trial number, parameters, objective values
(:mod:`tbjax.hpo.objectives`), val / test core metrics and the selection-bias statistics that apply
to it: its Deflated Sharpe Ratio against the N of the whole study and the study's PBO
(:func:`tbjax.hpo.selection.front_selection_bias`). ``pareto/<trial>/`` is a copy of the member's
trial folder, so ``python -m tbjax.evaluate --run-dir pareto/<trial>`` re-scores it; the copies are
written by :func:`tbjax.hpo.results.write_results`, which calls this module. A multi-objective study
has no single best trial: no ``best/`` is written and ``best_trial`` is null.
"""

from __future__ import annotations

from collections.abc import Callable

from tbjax.hpo.objectives import Goals
from tbjax.hpo.selection import front_selection_bias

MEMBER_BIAS_KEYS = ("dsr", "dsr_n", "pbo", "reading")  # the rest is the study's, in selection_bias


def front_summary(study, goals: Goals, trials) -> tuple[list[dict], dict, dict[int, dict]]:
    """(the ``pareto_front`` entries, the study's selection bias, each member's own selection-bias
    record as its report reads it), members by trial number."""
    front = sorted(study.best_trials, key=lambda t: t.number)
    study_bias, each = front_selection_bias(trials, [t.number for t in front], f"a Pareto-front member ({goals.label()})")
    members = [{"trial": t.number, "params": t.params, "values": dict(zip(goals.names, t.values)),
                "val_metrics": t.user_attrs.get("val_metrics"), "test_metrics": t.user_attrs.get("test_metrics"),
                "run_dir": None, "selection_bias": {k: each[t.number].get(k) for k in MEMBER_BIAS_KEYS}}
               for t in front]
    return members, study_bias, each


def front_plots(goals: Goals, vm) -> dict[str, Callable]:
    """Optuna's own Pareto-front plot (2 or 3 objectives) and one optimization history per objective
    (``vm``: optuna.visualization.matplotlib)."""
    plots = {"pareto_front": lambda study: vm.plot_pareto_front(study, target_names=list(goals.names))}
    for i, name in enumerate(goals.names):
        plots[f"optimization_history_{name}"] = lambda study, i=i, name=name: vm.plot_optimization_history(
            study, target=lambda t: t.values[i], target_name=name)
    return plots
