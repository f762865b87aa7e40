"""``python -m tbjax.hpo --config configs/hpo.yaml``: Optuna search over the compiled trainer.

    python -m tbjax.hpo --config configs/hpo.yaml [--storage URL] [--study-name S] [--n-trials N]
                        [--timeout SEC] [--batch B] [--run-dir DIR] [--set a.b=c]

The study lives in a storage that several processes (or machines) can share and that
``optuna-dashboard`` opens: by default ``<run-dir>/study.db`` (SQLite); any SQLAlchemy URL; or an
Optuna journal file (a path ending in ``.log``). The study is always loaded if it exists, so
re-running the same command resumes it (``n_trials`` is the study's total). Sampler: TPE seeded
with ``hpo.sampler_seed`` (+ the number of trials already stored, so a resumed or second worker
does not replay the first one's random start); pruner: ``hpo.pruner``. Trial execution, batching
and pruning rules: :mod:`tbjax.hpo_runner`; the search space: :mod:`tbjax.search_space`.

Outputs in the run dir: ``trials/<n>/`` (config.yaml, feature_pipeline.json, checkpoints/best:
``python -m tbjax.evaluate --run-dir <run-dir>/trials/<n>`` works), ``best/`` (a copy of the best
trial's folder), ``hpo_summary.json`` and ``plots/*.png``. Compiled programs are cached on disk in
``<run-dir>/jax_cache`` (unless JAX_COMPILATION_CACHE_DIR is set) so further workers and resumed
runs skip XLA compilation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from tbjax.errors import InputError

PRUNER_NAMES = ("successive_halving", "median", "hyperband", "patient", "none")


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
    return ap.parse_args(argv)


def make_storage(spec: str | None, run_dir: Path):
    """None → SQLite in the run dir; ``*.log`` → journal file; otherwise an SQLAlchemy URL."""
    import optuna

    if spec is None:
        spec = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if spec.endswith(".log") and "://" not in spec:
        from optuna.storages.journal import JournalFileBackend

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(spec))
    if "://" not in spec:
        raise InputError(f"hpo.storage '{spec}' is neither an SQLAlchemy URL (e.g. sqlite:///study.db, "
                         "postgresql://user@host/db) nor a journal file ending in .log")
    engine = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else None
    try:
        return optuna.storages.RDBStorage(spec, engine_kwargs=engine)
    except Exception as exc:  # sqlalchemy raises many types for bad URLs / unreachable servers
        raise InputError(f"cannot open hpo.storage '{spec}' ({type(exc).__name__}: {exc}): "
                         "check the URL and that the database is reachable") from None


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


def open_study(cfg, run_dir: Path):
    import optuna

    storage = make_storage(cfg.hpo.storage, run_dir)
    try:
        n_existing = len(optuna.load_study(study_name=cfg.hpo.study_name, storage=storage).get_trials(deepcopy=False))
    except KeyError:  # a new study
        n_existing = 0
    sampler = optuna.samplers.TPESampler(seed=cfg.hpo.sampler_seed + n_existing, constant_liar=True)
    return optuna.create_study(storage=storage, study_name=cfg.hpo.study_name, direction="maximize",
                               sampler=sampler, pruner=make_pruner(cfg.hpo.pruner, cfg.n_updates),
                               load_if_exists=True)


def write_results(study, run_dir: Path, fixed: tuple = ()) -> dict:
    """best/ (copy of the best trial's folder), hpo_summary.json and plots/*.png."""
    import optuna
    from optuna.trial import TrialState

    from tbjax.metrics import json_safe

    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary = {"study_name": study.study_name, "n_trials": len(trials), "trial_counts": counts,
               "fixed_by_config": list(fixed), "best_trial": None, "best_value": None, "best_params": None,
               "param_importances": None, "importance_error": None}
    if complete:
        best = study.best_trial
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                       best_val_metrics=best.user_attrs.get("val_metrics"),
                       best_test_metrics=best.user_attrs.get("test_metrics"))
        src = run_dir / "trials" / str(best.number)
        if src.is_dir():  # copy aside, then swap in: a reader never sees a half-copied best/
            tmp, old = run_dir / f".best.tmp.{os.getpid()}", run_dir / f".best.old.{os.getpid()}"
            shutil.copytree(src, tmp)
            try:
                if (run_dir / "best").exists():
                    os.replace(run_dir / "best", old)
                os.replace(tmp, run_dir / "best")
            except OSError:  # another worker swapped its own copy in at the same moment
                pass
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)
    if len(complete) >= 2:
        try:
            summary["param_importances"] = optuna.importance.get_param_importances(study)
        except Exception as exc:  # too few distinct values, a single parameter, ...
            summary["importance_error"] = f"{type(exc).__name__}: {exc}"
    _write_plots(study, run_dir / "plots", summary)
    tmp = run_dir / f".hpo_summary.json.{os.getpid()}"
    tmp.write_text(json.dumps(json_safe(summary), indent=2, sort_keys=True))
    os.replace(tmp, run_dir / "hpo_summary.json")
    return summary


def _write_plots(study, folder: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vm

    folder.mkdir(parents=True, exist_ok=True)
    plots = {"optimization_history": vm.plot_optimization_history,
             "intermediate_values": vm.plot_intermediate_values}
    if summary.get("param_importances"):
        plots["param_importances"] = vm.plot_param_importances
    summary["plots"], summary["plot_errors"] = [], {}
    import warnings

    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
                ax = fn(study)
            ax.figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
            summary["plots"].append(f"plots/{name}.png")
        except Exception as exc:
            summary["plot_errors"][name] = f"{type(exc).__name__}: {exc}"


def _resolve(args):
    from tbjax.config import load_config, validate

    cfg = load_config(args.config, args.set)
    hpo = {k: v for k, v in (("storage", args.storage), ("study_name", args.study_name), ("n_trials", args.n_trials),
                              ("timeout", args.timeout), ("batch", args.batch)) if v is not None}
    cfg = dataclasses.replace(cfg, hpo=dataclasses.replace(cfg.hpo, **hpo))
    validate(cfg)
    if cfg.hpo.timeout is not None and cfg.hpo.timeout <= 0:
        raise InputError(f"hpo.timeout must be > 0 seconds, got {cfg.hpo.timeout}")
    return cfg, Path(args.run_dir or os.path.join(cfg.output.runs_dir, cfg.output.run_name or f"hpo-{cfg.hpo.study_name}"))


def run(argv=None) -> dict:
    args = parse_args(argv)
    cfg, run_dir = _resolve(args)
    from tbjax.search_space import build_search_space, user_set_keys

    space = build_search_space(cfg, user_set_keys(args.config, args.set))  # every space error before any file
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"HPO run directory '{run_dir}' cannot be created ({exc.strerror}): choose another --run-dir") from None
    import jax

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str((run_dir / "jax_cache").resolve()))
    import optuna
    from tqdm import tqdm

    from tbjax.experiment import build_experiment
    from tbjax.hpo_runner import TrialRunner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, run_dir)
    exp = build_experiment(cfg)
    runner = TrialRunner(cfg, exp, space, run_dir)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    bar = tqdm(total=cfg.hpo.n_trials, unit="trial", dynamic_ncols=True,
               initial=min(cfg.hpo.n_trials, len(study.get_trials(deepcopy=False, states=finished))))

    def progress():
        done = len(study.get_trials(deepcopy=False, states=finished))
        bar.update(max(0, min(cfg.hpo.n_trials, done) - bar.n))
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if complete:
            bar.set_postfix({"best": f"{max(t.value for t in complete):.3f}"})

    try:
        runner.optimize(study, cfg.hpo.n_trials, cfg.hpo.batch, cfg.hpo.timeout, on_trial_done=progress)
    finally:
        bar.close()
    summary = write_results(study, run_dir, space.fixed)
    print(f"study '{cfg.hpo.study_name}': {summary['trial_counts']}; best value {summary['best_value']} "
          f"(trial {summary['best_trial']}); results in {run_dir}")
    return summary


def main(argv=None) -> int:
    try:
        run(argv)
    except InputError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
