"""The Optuna study of an HPO run: opened (or loaded) from its storage with a seeded sampler and the
configured pruner. Storages are :mod:`tbjax.hpo.storage`; trials are run by :mod:`tbjax.hpo.runner`;
the command is :mod:`tbjax.cli.hpo`."""

from __future__ import annotations

from pathlib import Path

from tbjax.hpo.liveness_settings import LivenessSettings
from tbjax.hpo.storage import make_storage


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
