"""``python -m tbjax.hpo --config configs/hpo.yaml``: Optuna search over the compiled trainer.

    python -m tbjax.hpo --config configs/hpo.yaml [--storage URL] [--study-name S] [--n-trials N]
                        [--timeout SEC] [--batch B] [--run-dir DIR] [--set a.b=c]
                        [--heartbeat-interval S] [--grace-period S] [--max-retries K]

The study lives in a storage that several processes (or machines) can share and that
``optuna-dashboard`` opens: by default ``<run-dir>/study.db`` (SQLite); any SQLAlchemy URL; or an
Optuna journal file (a path ending in ``.log``). The study is always loaded if it exists, so
re-running the same command resumes it (``n_trials`` is the study's total). Every storage carries
Optuna's trial heartbeat and ``RetryHeartbeatStaleTrialCallback``: a trial whose worker was killed
is reported, failed after ``--grace-period`` seconds of silence and retried with the same
parameters up to ``--max-retries`` times (:mod:`tbjax.hpo.liveness`). Sampler: TPE seeded
with ``hpo.sampler_seed`` (+ the number of trials already stored, so a resumed or second worker
does not replay the first one's random start); pruner: ``hpo.pruner``. Trial execution, batching
and pruning rules: :mod:`tbjax.hpo.runner`; the search space: :mod:`tbjax.hpo.space`.

Outputs in the run dir: ``trials/<n>/`` (config.yaml, feature_pipeline.json, checkpoints/best:
``python -m tbjax.evaluate --run-dir <run-dir>/trials/<n>`` works), ``best/`` (a copy of the best
trial's folder), ``hpo_summary.json`` and ``plots/*.png``. Compiled programs are cached on disk in
``<run-dir>/jax_cache`` (unless JAX_COMPILATION_CACHE_DIR is set) so further workers and resumed
runs skip XLA compilation. A study in which no trial completed (every trial failed or was pruned,
and none is still running) exits 2 with one message quoting the first reasons.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from tbjax.errors import InputError, print_error
from tbjax.hpo.liveness import failure_reasons, retries_of
from tbjax.hpo.liveness_settings import LivenessSettings
from tbjax.hpo.storage import (  # noqa: F401
    STORAGE_FLAG,
    journal_storage,
    make_storage,
    storage_shown,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise InputError(f"{message} (see python -m tbjax.hpo --help)")


def parse_args(argv):
    ap = _Parser(prog="python -m tbjax.hpo", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/hpo.yaml", help="YAML config with an hpo: section")
    ap.add_argument("--storage", help="SQLAlchemy URL or journal file (*.log); default <run-dir>/study.db")
    ap.add_argument("--study-name", help="study name (default hpo.study_name)")
    ap.add_argument("--n-trials", type=int, help="total trials of the study (default hpo.n_trials)")
    ap.add_argument("--timeout", type=float, help="stop asking new trials after this many seconds")
    ap.add_argument("--batch", type=int, help="trials trained together by one vmapped program")
    ap.add_argument("--run-dir", help="HPO run directory (default <runs_dir>/<run_name or hpo-<study>>)")
    ap.add_argument("--set", action="append", default=[], metavar="A.B=C", help="override a config key")
    d = LivenessSettings()
    ap.add_argument("--heartbeat-interval", type=int, default=d.interval, metavar="S",
                    help=f"seconds between a trial's heartbeats (Optuna's heartbeat_interval; default {d.interval})")
    ap.add_argument("--grace-period", type=int, default=d.grace, metavar="S",
                    help=f"a RUNNING trial silent this long is failed and retried (default {d.grace})")
    ap.add_argument("--max-retries", type=int, default=d.max_retry, metavar="K",
                    help=f"retries of a trial whose worker died (RetryHeartbeatStaleTrialCallback; default {d.max_retry})")
    args = ap.parse_args(argv)
    for flag, value, low in (("--heartbeat-interval", args.heartbeat_interval, 1),
                             ("--grace-period", args.grace_period, 1), ("--max-retries", args.max_retries, 0)):
        if value < low:
            raise InputError(f"{flag} must be an integer >= {low}, got {value}")
    if args.grace_period <= args.heartbeat_interval:
        raise InputError(f"--grace-period ({args.grace_period} s) must exceed --heartbeat-interval "
                         f"({args.heartbeat_interval} s), or live trials would be failed as stale")
    return args


def liveness_of(args) -> LivenessSettings:
    return LivenessSettings(args.heartbeat_interval, args.grace_period, args.max_retries)


def make_pruner(name: str, n_updates: int):
    """SuccessiveHalving (default; rung decisions need no finished trial, so batched trials work),
    Median, Hyperband, Patient (Median with patience 2) or none; steps are updates done."""
    import optuna.pruners as P

    if name == "successive_halving":
        return P.SuccessiveHalvingPruner()
    if name == "median":
        return P.MedianPruner(n_startup_trials=3)
    if name == "hyperband":
        return P.HyperbandPruner(min_resource=1, max_resource=max(2, n_updates))
    if name == "patient":
        return P.PatientPruner(P.MedianPruner(n_startup_trials=3), patience=2)
    return P.NopPruner()


def open_study(cfg, run_dir: Path, live: LivenessSettings | None = None):
    import optuna

    storage = make_storage(cfg.hpo.storage, run_dir, live)
    try:
        n_existing = len(optuna.load_study(study_name=cfg.hpo.study_name, storage=storage).get_trials(deepcopy=False))
    except KeyError:  # a new study
        n_existing = 0
    sampler = optuna.samplers.TPESampler(seed=cfg.hpo.sampler_seed + n_existing, constant_liar=True)
    return optuna.create_study(storage=storage, study_name=cfg.hpo.study_name, direction="maximize",
                               sampler=sampler, pruner=make_pruner(cfg.hpo.pruner, cfg.n_updates),
                               load_if_exists=True)


def _finished(study) -> tuple:
    """What the results depend on: every trial's number, state and value."""
    return tuple((t.number, t.state, t.value) for t in study.get_trials(deepcopy=False))


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

    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary = {"study_name": study.study_name, "n_trials": len(trials), "trial_counts": counts,
               "fixed_by_config": list(fixed), "space_notes": list(notes), "best_trial": None, "best_value": None,
               "best_params": None, "param_importances": None, "importance_error": None,
               "failed": failure_reasons(trials), "retries": retries_of(trials)}
    if complete:
        best = study.best_trial
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                       best_val_metrics=best.user_attrs.get("val_metrics"),
                       best_test_metrics=best.user_attrs.get("test_metrics"))
    from tbjax.evaluation.report import SELECTION_FILE
    from tbjax.hpo.selection import study_selection_bias

    summary["selection_bias"] = study_selection_bias(trials, summary["best_trial"])
    if complete and (src := run_dir / "trials" / str(summary["best_trial"])).is_dir():
        # best/ carries how it was chosen (its report shows it), written into the copy before the swap:
        # another worker may swap its own best/ in at any moment, so nothing is written into best/ itself.
        with disk_errors(run_dir / "best"):
            _swap_in_copy(src, run_dir / "best",
                          {SELECTION_FILE: json.dumps(json_safe(summary["selection_bias"]), indent=2)})
    if len(complete) >= 2:
        try:
            summary["param_importances"] = optuna.importance.get_param_importances(study)
        except Exception as exc:  # too few distinct values, a single parameter, ...
            summary["importance_error"] = f"{type(exc).__name__}: {exc}"
    _write_plots(study, run_dir / "plots", summary)
    write_atomic(run_dir / "hpo_summary.json", json.dumps(json_safe(summary), indent=2, sort_keys=True))
    return summary


def _swap_in_copy(src: Path, dst: Path, extra: dict[str, str]) -> None:
    """Copy ``src`` beside ``dst``, add the ``extra`` files (name → text), then swap it in: a reader
    never sees a half-copied folder.

    (tbjax.atomic covers files; a folder needs the copy-then-rename done here.)
    """
    import tempfile

    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.tmp."))
    old = dst.parent / f".{dst.name}.old.{os.getpid()}"
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        for name, text in extra.items():
            (tmp / name).write_text(text)
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


def _write_plots(study, folder: Path, summary: dict) -> None:
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


def _resolve(args):
    from tbjax.config import load_config, validate

    cfg = load_config(args.config, args.set)
    hpo = {k: v for k, v in (("storage", args.storage), ("study_name", args.study_name), ("n_trials", args.n_trials),
                              ("timeout", args.timeout), ("batch", args.batch)) if v is not None}
    cfg = dataclasses.replace(cfg, hpo=dataclasses.replace(cfg.hpo, **hpo))
    validate(cfg)  # the overrides above are config keys too: hpo.timeout, hpo.batch, ...
    return cfg, Path(args.run_dir or os.path.join(cfg.output.runs_dir, cfg.output.run_name or f"hpo-{cfg.hpo.study_name}"))


def run(argv=None) -> dict:
    args = parse_args(argv)
    cfg, run_dir = _resolve(args)
    from tbjax.hpo.space import build_search_space, user_set_keys

    space = build_search_space(cfg, user_set_keys(args.config, args.set))  # every space error before any file
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"HPO run directory '{run_dir}' cannot be created ({exc.strerror}): choose another --run-dir") from None
    from tbjax.run.compile_cache import use_compilation_cache

    use_compilation_cache(run_dir / "jax_cache")
    import optuna
    from tqdm import tqdm

    from tbjax.hpo.liveness import counted_trials
    from tbjax.hpo.runner import TrialRunner
    from tbjax.run.setup import build_experiment

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for note in space.notes:
        print(f"hpo: note: {note}", file=sys.stderr)
    study = open_study(cfg, run_dir, liveness_of(args))
    exp = build_experiment(cfg)
    runner = TrialRunner(cfg, exp, space, run_dir)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)

    def n_done() -> int:
        return min(cfg.hpo.n_trials, sum(t.state in finished for t in counted_trials(study)))

    # disable=None: a bar on a terminal only, so logs and CI output keep one line per notice
    bar = tqdm(total=cfg.hpo.n_trials, unit="trial", dynamic_ncols=True, initial=n_done(), disable=None)

    def progress():
        bar.update(max(0, n_done() - bar.n))
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if complete:
            bar.set_postfix({"best": f"{max(t.value for t in complete):.3f}"})

    try:
        runner.optimize(study, cfg.hpo.n_trials, cfg.hpo.batch, cfg.hpo.timeout, on_trial_done=progress)
    finally:
        bar.close()
    summary = write_results(study, run_dir, space.fixed, space.notes)
    shown = storage_shown(cfg.hpo.storage, run_dir)
    print(f"storage: {shown} (study '{cfg.hpo.study_name}'; browse it with: optuna-dashboard {shown})")
    error = no_result_error(study, run_dir)
    if error is not None:
        raise error
    if summary["best_trial"] is None:
        print(f"study '{cfg.hpo.study_name}': {summary['trial_counts']}; no trial has completed yet (others are "
              f"still running in other workers); run the command again later to collect the results in {run_dir}")
        return summary
    print(f"study '{cfg.hpo.study_name}': {summary['trial_counts']}; best value {summary['best_value']} "
          f"(trial {summary['best_trial']}); results in {run_dir}")
    return summary


def main(argv=None) -> int:
    try:
        run(argv)
    except InputError as exc:
        return print_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
