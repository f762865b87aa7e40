"""``python -m tbjax.walkforward`` as library calls: what the command's arguments mean, and the
whole command as one call.

:func:`plan_walkforward` resolves the config (``--config``, ``--set`` overrides, ``--folds`` as
``walkforward.folds``) and the run directory (default ``<runs_dir>/walkforward-<time>``), reading
only, so a bad config fails before anything is compiled or written. :func:`walkforward_run` is the
command without parsing or printing (notebooks, tests): plan, then
:func:`tbjax.walkforward.driver.run_walkforward`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tbjax.config import Config
from tbjax.run.resume import DEFAULT_CONFIG


@dataclass(frozen=True)
class WalkForwardResult:
    """Where the folds were written and walkforward.json's body."""

    run_dir: Path
    doc: dict


def plan_walkforward(config: str | Path | None = None, overrides: Sequence[str] = (),
                     run_dir: str | Path | None = None, *, folds: int | None = None) -> tuple[Config, Path]:
    """(validated config, run directory): ``config`` (default :data:`~tbjax.run.resume.DEFAULT_CONFIG`)
    with ``overrides`` and ``folds`` (``walkforward.folds``, None keeps the config's). Nothing written."""
    from tbjax.config import load_config, validate

    overrides = [str(o) for o in overrides] + ([f"walkforward.folds={folds}"] if folds is not None else [])
    cfg = load_config(DEFAULT_CONFIG if config is None else str(config), overrides)
    validate(cfg)
    return cfg, Path(run_dir or Path(cfg.output.runs_dir) / time.strftime("walkforward-%Y%m%d-%H%M%S"))


def walkforward_run(config: str | Path | None = None, overrides: Sequence[str] = (),
                    run_dir: str | Path | None = None, *, folds: int | None = None, sequential: bool = False,
                    log: Callable[[str], None] | None = None) -> WalkForwardResult:
    """``python -m tbjax.walkforward --config C --set K=V ... [--folds K] [--run-dir R] [--sequential]``
    as one call; ``log`` receives the per-evaluation lines (None: quiet). Raises InputError."""
    from tbjax.walkforward.driver import run_walkforward

    cfg, run_dir = plan_walkforward(config, overrides, run_dir, folds=folds)
    return WalkForwardResult(run_dir, run_walkforward(cfg, run_dir, sequential=sequential, log=log))
