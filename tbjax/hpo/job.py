"""One ``python -m tbjax.hpo`` invocation as library calls: plan, study, trials, results.

:func:`plan_hpo` resolves what the command line asks (the config, ``--set`` overrides, the
``hpo.*`` flags, the run directory) and builds the search space, reading only: every config and
space error comes before any file exists. :func:`hpo_job` then runs the study in the run
directory: Optuna's study (:mod:`tbjax.hpo.study`), the trials (:mod:`tbjax.hpo.runner`) and the
results (:mod:`tbjax.hpo.results`). A study in which no trial completed is no exception inside the
job: the job returns it as :attr:`HpoResult.error`, because the command first says where the study
lives (its trials' reasons are there) and then fails with that error.

:func:`hpo_run` is the whole command as one call (plan + job, raising that error), for notebooks
and tests that need a finished study without going through argv. Re-running on the same storage
and study name resumes the study, as the command does (``n_trials`` is the study's total).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tbjax.config import Config
from tbjax.errors import InputError
from tbjax.hpo.liveness_settings import LivenessSettings
from tbjax.hpo.space import SearchSpace

DEFAULT_CONFIG = "configs/hpo.yaml"
HPO_FLAG_KEYS = ("storage", "study_name", "n_trials", "timeout", "batch")  # hpo.* keys the command has flags for


@dataclass(frozen=True)
class HpoPlan:
    """What a study will run: the resolved config, its run directory and its search space."""

    cfg: Config
    run_dir: Path
    space: SearchSpace


@dataclass
class HpoResult:
    """How the study stands after this invocation (other workers may still add trials).

    ``summary`` is hpo_summary.json's body; ``storage`` the storage as ``optuna-dashboard`` opens it;
    ``error`` the InputError of a study in which no trial completed (else None)."""

    cfg: Config
    run_dir: Path
    study: Any  # optuna.Study
    summary: dict
    storage: str
    error: InputError | None


def plan_hpo(config: str | Path | None = None, overrides: Sequence[str] = (), run_dir: str | Path | None = None,
             **hpo) -> HpoPlan:
    """``config`` (default :data:`DEFAULT_CONFIG`) with ``overrides`` (``a.b=c``) and the ``hpo.*``
    keys the command's flags set (``hpo``: any of :data:`HPO_FLAG_KEYS`; None keeps the config's),
    validated; ``run_dir`` defaults to ``<runs_dir>/<run_name or hpo-<study_name>>``. Nothing written."""
    from tbjax.config import load_config, validate
    from tbjax.hpo.space import build_search_space, user_set_keys

    config = DEFAULT_CONFIG if config is None else str(config)
    overrides = [str(o) for o in overrides]
    cfg = load_config(config, overrides)
    given = {k: v for k, v in hpo.items() if v is not None}
    unknown = sorted(set(given) - set(HPO_FLAG_KEYS))
    if unknown:
        raise TypeError(f"plan_hpo: unknown hpo keys {unknown}; pass other keys as overrides")
    cfg = dataclasses.replace(cfg, hpo=dataclasses.replace(cfg.hpo, **given))
    validate(cfg)  # the keys above are config keys too: hpo.timeout, hpo.batch, ...
    run_dir = Path(run_dir or os.path.join(cfg.output.runs_dir, cfg.output.run_name or f"hpo-{cfg.hpo.study_name}"))
    space = build_search_space(cfg, user_set_keys(config, overrides))  # every space error before any file
    return HpoPlan(cfg, run_dir, space)


def _progress(study, runner, n_trials: int, quiet: bool):
    """(on_trial_done, close) of the progress bar: trials finished of ``n_trials`` and the best
    values so far. Not quiet: a bar on a terminal only, so logs and CI output keep one line per notice."""
    import optuna
    from tqdm import tqdm

    from tbjax.hpo.liveness import counted_trials

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)

    def n_done() -> int:
        return min(n_trials, sum(t.state in finished for t in counted_trials(study)))

    bar = tqdm(total=n_trials, unit="trial", dynamic_ncols=True, initial=n_done(), disable=True if quiet else None)

    def on_trial_done():
        bar.update(max(0, n_done() - bar.n))
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if complete:
            bar.set_postfix(runner.goals.postfix(study, complete))

    return on_trial_done, bar.close


def hpo_job(plan: HpoPlan, *, liveness: LivenessSettings = LivenessSettings(), quiet: bool = True,
            note: Callable[[str], None] = lambda text: None) -> HpoResult:
    """Run ``plan``'s study in its run directory until it counts ``hpo.n_trials`` or ``hpo.timeout``
    passes, then write its results. ``liveness``: the heartbeat settings (:mod:`tbjax.hpo.liveness`);
    ``note`` receives the space's notes and the multi-objective study's no-pruning notice;
    ``quiet``: no progress bar. Compiled programs are cached in ``<run-dir>/jax_cache`` (unless
    JAX_COMPILATION_CACHE_DIR is set), so further workers and resumed runs skip XLA compilation."""
    cfg, run_dir, space = plan.cfg, plan.run_dir, plan.space
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"HPO run directory '{run_dir}' cannot be created ({exc.strerror}): choose another --run-dir") from None
    from tbjax.run.compile_cache import use_compilation_cache

    use_compilation_cache(run_dir / "jax_cache")
    import optuna

    from tbjax.hpo.objectives import PRUNING_OFF, Goals
    from tbjax.hpo.results import no_result_error, write_results
    from tbjax.hpo.runner import TrialRunner
    from tbjax.hpo.storage import storage_shown
    from tbjax.hpo.study import open_study
    from tbjax.run.experiment import build_experiment

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for text in space.notes:
        note(text)
    goals = Goals.of(cfg)
    if goals.multi:
        note(f"objectives {goals.label()}; pruning {PRUNING_OFF}")
    study = open_study(cfg, run_dir, liveness)
    runner = TrialRunner(cfg, build_experiment(cfg), space, run_dir)
    on_trial_done, close = _progress(study, runner, cfg.hpo.n_trials, quiet)
    try:
        runner.optimize(study, cfg.hpo.n_trials, cfg.hpo.batch, cfg.hpo.timeout, on_trial_done=on_trial_done)
    finally:
        close()
    summary = write_results(study, run_dir, space.fixed, space.notes)
    return HpoResult(cfg, run_dir, study, summary, storage_shown(cfg.hpo.storage, run_dir),
                     no_result_error(study, run_dir))


def hpo_run(config: str | Path | None = None, overrides: Sequence[str] = (), run_dir: str | Path | None = None, *,
            liveness: LivenessSettings = LivenessSettings(), quiet: bool = True,
            note: Callable[[str], None] = lambda text: None, **hpo) -> HpoResult:
    """``python -m tbjax.hpo --config C --set K=V ... --run-dir R [--n-trials N ...]`` as one call,
    without parsing or printing (notebooks, tests): :func:`plan_hpo` (``hpo``: the flags' keys, e.g.
    ``n_trials=4``, ``storage=...``), then :func:`hpo_job`. Raises InputError, also when no trial of
    the study completed; quiet unless told otherwise."""
    result = hpo_job(plan_hpo(config, overrides, run_dir, **hpo), liveness=liveness, quiet=quiet, note=note)
    if result.error is not None:
        raise result.error
    return result
