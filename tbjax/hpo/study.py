"""The Optuna study of an HPO run: opened (or loaded) from its storage with a seeded sampler and the
configured pruner. Storages are :mod:`tbjax.hpo.storage`; trials are run by :mod:`tbjax.hpo.runner`;
the job that opens it is :mod:`tbjax.hpo.job` (the command: :mod:`tbjax.cli.hpo`)."""

from __future__ import annotations

from pathlib import Path

from tbjax.hpo.liveness_settings import LivenessSettings
from tbjax.hpo.objectives import Goals
from tbjax.hpo.storage import make_storage, storage_shown


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
    """The study with one direction per ``hpo.objectives`` entry (:mod:`tbjax.hpo.objectives`): TPE
    (multi-objective TPE for several), and no pruner for several (Optuna prunes single-objective only)."""
    import optuna

    goals = Goals.of(cfg)
    storage = make_storage(cfg.hpo.storage, run_dir, live)
    try:
        n_existing = len(optuna.load_study(study_name=cfg.hpo.study_name, storage=storage).get_trials(deepcopy=False))
    except KeyError:  # a new study
        n_existing = 0
    sampler = optuna.samplers.TPESampler(seed=cfg.hpo.sampler_seed + n_existing, constant_liar=True)
    pruner = make_pruner(cfg.hpo.pruner if goals.prunable else "none", cfg.n_updates)
    study = optuna.create_study(storage=storage, study_name=cfg.hpo.study_name, directions=list(goals.directions),
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    goals.adopt(study, storage_shown(cfg.hpo.storage, run_dir))
    return study
