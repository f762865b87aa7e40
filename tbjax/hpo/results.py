"""What an HPO run leaves in its folder: ``best/`` (a copy of the best trial's folder with how it was
chosen), ``hpo_summary.json`` and ``plots/*.png``, written from the study as it stands; and the
error of a study in which no trial completed. The job that writes them is :mod:`tbjax.hpo.job`.

A multi-objective study (``hpo.objectives``) has no best trial: ``pareto/<trial>/`` holds a copy of
each Pareto-front member instead, and the summary its ``pareto_front`` (:mod:`tbjax.hpo.pareto_front`).
Any study but the default regime objective's says its ``objectives`` (names and directions)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tbjax.errors import InputError
from tbjax.hpo.liveness import failure_reasons, retries_of


def _finished(study) -> tuple:
    """What the results depend on: every trial's number, state and values."""
    return tuple((t.number, t.state, t.values) for t in study.get_trials(deepcopy=False))


def write_results(study, run_dir: Path, fixed: tuple = (), notes: tuple = ()) -> dict:
    """best/ (copy of the best trial's folder), hpo_summary.json and plots/*.png, from the study as
    it is when the files are written.

    Several workers write these at their end. Writing takes seconds (plots, the best/ copy), so a
    worker that read the study before another's last trial finished could otherwise overwrite that
    worker's newer results with older ones; the results are therefore written again until the
    study did not change while they were being written.
    """
    for _ in range(10):
        before = _finished(study)
        summary = _write_results_once(study, run_dir, fixed, notes)
        if _finished(study) == before:
            break
    return summary


def _write_results_once(study, run_dir: Path, fixed: tuple, notes: tuple) -> dict:
    import optuna
    from optuna.trial import TrialState

    from tbjax.atomic import disk_errors, write_atomic
    from tbjax.evaluation.metrics import json_safe
    from tbjax.hpo.objectives import Goals

    goals = Goals.of_study(study)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary = {"study_name": study.study_name, "n_trials": len(trials), "trial_counts": counts,
               "fixed_by_config": list(fixed), "space_notes": list(notes), "best_trial": None, "best_value": None,
               "best_params": None, "param_importances": None, "importance_error": None,
               "failed": failure_reasons(trials), "retries": retries_of(trials)}
    if not goals.classic:
        summary["objectives"] = goals.as_json()
    if complete and not goals.multi:
        best = study.best_trial
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                       best_val_metrics=best.user_attrs.get("val_metrics"),
                       best_test_metrics=best.user_attrs.get("test_metrics"))
    from tbjax.evaluation.report import SELECTION_FILE
    from tbjax.hpo.selection import study_selection_bias

    if goals.multi:
        _write_front(study, goals, trials, run_dir, summary)
    else:
        summary["selection_bias"] = study_selection_bias(trials, summary["best_trial"])
    if complete and (src := run_dir / "trials" / str(summary["best_trial"])).is_dir():
        # best/ carries how it was chosen (its report shows it), written into the copy before the swap:
        # another worker may swap its own best/ in at any moment, so nothing is written into best/ itself.
        with disk_errors(run_dir / "best"):
            _swap_in_copy(src, run_dir / "best",
                          {SELECTION_FILE: json.dumps(json_safe(summary["selection_bias"]), indent=2)})
    if len(complete) >= 2:  # several objectives: Optuna's PED-ANOVA ranks the params that reach its front
        try:
            summary["param_importances"] = optuna.importance.get_param_importances(study)
        except Exception as exc:  # too few distinct values, a single parameter, ...
            summary["importance_error"] = f"{type(exc).__name__}: {exc}"
    _write_plots(study, run_dir / "plots", summary, goals)
    write_atomic(run_dir / "hpo_summary.json", json.dumps(json_safe(summary), indent=2, sort_keys=True))
    return summary


def _write_front(study, goals, trials, run_dir: Path, summary: dict) -> None:
    """``pareto_front``, the study's ``selection_bias`` and ``pareto/``: a copy of each member's trial
    folder with its own selection record (its report says how it was chosen), swapped in whole so a
    member that left the front leaves the folder too."""
    from tbjax.atomic import disk_errors
    from tbjax.evaluation.metrics import json_safe
    from tbjax.evaluation.report import SELECTION_FILE
    from tbjax.hpo.objectives import PRUNING_OFF
    from tbjax.hpo.pareto_front import front_summary

    members, summary["selection_bias"], each = front_summary(study, goals, trials)
    summary.update(pruning=PRUNING_OFF, pareto_front=members)
    present = [m for m in members if (run_dir / "trials" / str(m["trial"])).is_dir()]  # a worker elsewhere: not here

    def fill(tmp: Path) -> None:
        for m in present:
            shutil.copytree(run_dir / "trials" / str(m["trial"]), tmp / str(m["trial"]))
            (tmp / str(m["trial"]) / SELECTION_FILE).write_text(json.dumps(json_safe(each[m["trial"]]), indent=2))
            m["run_dir"] = f"pareto/{m['trial']}"

    if present:
        with disk_errors(run_dir / "pareto"):
            _swap_in(run_dir / "pareto", fill)


def _swap_in_copy(src: Path, dst: Path, extra: dict[str, str]) -> None:
    """Copy ``src`` beside ``dst``, add the ``extra`` files (name → text), then swap it in: a reader
    never sees a half-copied folder."""

    def fill(tmp: Path) -> None:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        for name, text in extra.items():
            (tmp / name).write_text(text)

    _swap_in(dst, fill)


def _swap_in(dst: Path, fill) -> None:
    """``fill`` a fresh folder beside ``dst``, then swap it in for ``dst``.

    (tbjax.atomic covers files; a folder needs the copy-then-rename done here.)
    """
    import tempfile

    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.tmp."))
    old = dst.parent / f".{dst.name}.old.{os.getpid()}"
    try:
        fill(tmp)
        try:
            if dst.exists():
                os.replace(dst, old)
            os.replace(tmp, dst)
        except OSError:  # another worker swapped its own copy in at the same moment
            pass
    finally:
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def no_result_error(study, run_dir: Path) -> InputError | None:
    """The error for a study without a completed trial once nothing is left running (else None).

    Quotes the first distinct reasons (``fail_reason`` / ``pruned_reason``) with their trial
    numbers, so an all-failing study says why instead of leaving an empty best/.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) for t in trials) or not trials:
        return None
    by_reason: dict[str, list[int]] = {}
    for t in trials:
        verb = "failed" if t.state == TrialState.FAIL else "pruned"
        why = t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason") or "no reason recorded"
        by_reason.setdefault(f"{verb}: {why}", []).append(t.number)
    quoted = [f"trial {', '.join(map(str, nums[:5]))}{' ...' if len(nums) > 5 else ''} {why}"
              for why, nums in list(by_reason.items())[:3]]
    more = f" (+{len(by_reason) - 3} other reasons)" if len(by_reason) > 3 else ""
    n_failed = sum(t.state == TrialState.FAIL for t in trials)
    counts = f"{n_failed} failed, {len(trials) - n_failed} pruned"
    return InputError(f"no trial of study '{study.study_name}' completed ({counts}): {'; '.join(quoted)}{more}. "
                      "Fix the cause, then run again with a new "
                      f"--study-name or --run-dir (these trials count toward n_trials); every reason is in "
                      f"{run_dir / 'hpo_summary.json'}")


def _write_plots(study, folder: Path, summary: dict, goals) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vm

    from tbjax.atomic import disk_errors, write_with

    with disk_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
    plots = {"optimization_history": vm.plot_optimization_history,
             "intermediate_values": vm.plot_intermediate_values}
    if summary.get("param_importances"):
        plots["param_importances"] = vm.plot_param_importances
    if goals.multi:  # Optuna's Pareto plot and per-objective histories (no reports, no single importance)
        from tbjax.hpo.pareto_front import front_plots

        plots = front_plots(goals, vm)
    summary["plots"], summary["plot_errors"] = [], {}
    import warnings

    import optuna

    for name, fn in plots.items():
        verbosity = optuna.logging.get_verbosity()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
                optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no complete trials": said once, by run()
                try:
                    ax = fn(study)
                finally:
                    optuna.logging.set_verbosity(verbosity)
            write_with(folder / f"{name}.png",
                       lambda tmp: ax.figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
            plt.close(ax.figure)
            summary["plots"].append(f"plots/{name}.png")
        except InputError:  # the disk (full, read-only): the user must act
            raise
        except Exception as exc:
            summary["plot_errors"][name] = f"{type(exc).__name__}: {exc}"
