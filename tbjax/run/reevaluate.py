"""Evaluate a run again from its directory alone (what ``python -m tbjax.evaluate`` computes).

The resolved config.yaml, the train-fitted feature_pipeline.json and an orbax checkpoint (frozen
observation statistics inside it) are all it reads besides the processed data. A relative
``data.processed_dir`` is found where the run was trained (:func:`tbjax.run.rundir.resolve_run_paths`)
and data that differs from what the run was trained on is refused (``check_same_data``). A damaged
newest checkpoint falls back to the previous one with one warning. Nothing is written here: saving
is :func:`tbjax.run.deployed.save_evaluation`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tbjax.errors import InputError

RUN_FILES = ("config.yaml", "feature_pipeline.json")


def open_run(run_dir: Path):
    """A read-only TrainingSession of ``run_dir`` with the run's own pipeline (no refit)."""
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise InputError(f"'{run_dir / name}' not found: --run-dir must be a directory written by "
                             "python -m tbjax.train")
    from tbjax.config import load_config
    from tbjax.data.pipeline import FeaturePipeline
    from tbjax.run.session import TrainingSession
    from tbjax.run.rundir import check_same_data, resolve_run_paths

    cfg = resolve_run_paths(load_config(run_dir / "config.yaml"), run_dir)
    session = TrainingSession(cfg, run_dir, write=False,
                              pipeline=FeaturePipeline.load(str(run_dir / "feature_pipeline.json")))
    check_same_data(session.exp, run_dir)
    return session


def evaluate_run(run_dir: str | Path, checkpoint: str, splits: tuple[str, ...],
                 fix: str | Callable[[], str] | None = None) -> tuple[dict, dict]:
    """(eval dict per split, report series per split) of ``run_dir``'s ``checkpoint`` ("best" or
    "latest"); ``fix`` is what to do when the run has no usable one (see ``RunCheckpoints.restore``)."""
    from tbjax.run.deployed import evaluate_checkpoint

    session = open_run(Path(run_dir))
    carry, meta = session.ckpt.restore(checkpoint, session.template(), fix=fix)
    return evaluate_checkpoint(session, carry, meta, checkpoint, splits)
