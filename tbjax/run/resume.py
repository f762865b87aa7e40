"""What one ``python -m tbjax.train`` invocation will do, decided before anything is written.

* A fresh start (:func:`plan_fresh`) reads the given config (default :data:`DEFAULT_CONFIG`) and
  overrides. :func:`check_fresh_run_dir` refuses a run directory that already holds a usable
  checkpoint; leftovers of an attempt that never saved one are listed (the session clears them).
* A resume (:func:`plan_resume`) continues with the run's OWN config.yaml. A given config must
  agree with it (:func:`config_diff`); overrides may change only :data:`RESUMABLE_KEYS`.
* :func:`continue_command` is the command printed when a run stops resumably: the run's
  config.yaml holds everything else, so it needs nothing but the run directory.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tbjax.errors import InputError

DEFAULT_CONFIG = "configs/base.yaml"
# Config keys a --set may change on --resume, and why that is safe: none alters the carry's
# structure, the data, the features or what an update computes. config.yaml is rewritten with the
# new value and run_info.json's "resumes" records the change (config.yaml alone then describes the
# run's end, not its history).
RESUMABLE_KEYS = {
    "train.total_env_steps": "extend (or shorten) the run; with ppo.lr_schedule linear the remaining "
                             "updates follow the schedule of the new length",
    "train.eval_every": "validate more or less often",
    "output.tensorboard": "turn TensorBoard logging on or off",
}


@dataclass
class Plan:
    """What this invocation will do, decided before anything is written."""

    cfg: object  # tbjax.config.Config; data paths still as the user wrote them
    config_text: str  # config.yaml as it will be (re)written
    run_dir: Path
    fresh: bool
    changes: dict | None = None  # resume: {key: [stored, new]} of the RESUMABLE_KEYS a --set changed


def continue_command(run_dir: Path, quiet: bool) -> str:
    """The command that continues ``run_dir``: its config.yaml holds everything else."""
    return (f"python -m tbjax.train --run-dir {shlex.quote(str(run_dir))} --resume"
            + (" --quiet" if quiet else ""))


def evaluate_command(run_dir: Path) -> str:
    """The command that (re)writes ``run_dir``'s evaluation from its best checkpoint."""
    return f"python -m tbjax.evaluate --run-dir {shlex.quote(str(run_dir))}"


# ---------------------------------------------------------------------- config comparison


def _flat(cfg) -> dict:
    from tbjax.config import config_to_dict

    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict) and key != "space":
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(config_to_dict(cfg), "")
    return out


def config_diff(a, b) -> list[tuple[str, object, object]]:
    """(key, value in a, value in b) for every leaf key whose values differ."""
    fa, fb = _flat(a), _flat(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def _describe(diff, left: str, right: str) -> str:
    """Up to three differing keys, values as a user writes them in YAML (json: 8, false, "x")."""
    shown = "; ".join(f"{k} ({left} {json.dumps(a, default=str)}, {right} {json.dumps(b, default=str)})"
                      for k, a, b in diff[:3])
    return shown + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")


# ---------------------------------------------------------------------- the run directory


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_target(run_dir: Path) -> None:
    """The run directory can be created (or written) at all; decided without writing anything."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"run directory '{run_dir}' is a file, not a directory: choose another --run-dir")
    base = _nearest_existing(run_dir)
    if not base.is_dir():
        raise InputError(f"run directory '{run_dir}' cannot be created: '{base}' is a file: choose another --run-dir")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"run directory '{run_dir}' is not writable (no write permission on '{base}'): "
                         "choose another --run-dir")


def looks_like_run(run_dir: Path) -> bool:
    from tbjax.run.rundir import RUN_ARTIFACTS

    return any((run_dir / name).exists() for name in RUN_ARTIFACTS)


def check_fresh_run_dir(run_dir: Path, continue_with: str | None = None) -> list[str]:
    """A fresh start may use ``run_dir``: new, empty, or an earlier attempt without a usable checkpoint.
    ``continue_with``: the command that continues such a run (default :func:`continue_command`'s).

    Returns what of an earlier attempt will be cleared (for one note line); refuses a folder that
    holds a usable checkpoint (that is --resume's job) or that is not a run directory at all.
    """
    check_writable_target(run_dir)
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return []
    if not looks_like_run(run_dir):
        raise InputError(f"run directory '{run_dir}' is not empty and holds no tbjax run: choose a new or empty "
                         "--run-dir")
    problems = []
    if (run_dir / "checkpoints").is_dir():
        from tbjax.run.checkpoint import RunCheckpoints

        usable, problems = RunCheckpoints(run_dir).survey()
        if "latest" in usable:
            where = ", ".join(f"{kind} at update {update}" for kind, update in usable.items())
            raise InputError(f"run directory '{run_dir}' already holds checkpoints ({where}): continue it with "
                             f"{continue_with or continue_command(run_dir, quiet=False)}, or choose another --run-dir")
        if usable:
            raise InputError(f"run directory '{run_dir}' holds a usable best checkpoint (update {usable['best']}) "
                             f"but no usable latest one ({'; '.join(problems[:2]) or 'none saved'}): it cannot be "
                             f"continued, and a fresh start here would delete it: evaluate it with "
                             f"{evaluate_command(run_dir)}, and train in another --run-dir (or delete "
                             f"'{run_dir / 'checkpoints'}' to start over in this one)")
    return problems or ["no checkpoint"]


def resume_advice(run_dir: Path) -> str:
    """What to do when --resume finds no usable "latest" checkpoint, from what the folder holds."""
    from tbjax.run.checkpoint import RunCheckpoints

    usable, _ = RunCheckpoints(run_dir).survey()
    if "best" in usable:
        return (f"the run cannot be continued, but its best checkpoint (update {usable['best']}) still evaluates: "
                f"{evaluate_command(run_dir)}; to train again use another --run-dir (or delete "
                f"'{run_dir / 'checkpoints'}' to start over in this one)")
    return ("nothing in it can be continued: start without --resume (a fresh start clears the unusable "
            "checkpoints), or pass the --run-dir of another run")


# ---------------------------------------------------------------------- plans


def plan_fresh(config: str | None, overrides: list[str], run_dir: str | Path | None) -> Plan:
    """A new run: ``config`` (default :data:`DEFAULT_CONFIG`) with ``overrides``; ``run_dir`` defaults
    to ``output.runs_dir/<output.run_name or the UTC time>``."""
    from tbjax.config import dump_config, load_config

    cfg = load_config(config or DEFAULT_CONFIG, overrides)
    if run_dir is None:
        name = cfg.output.run_name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.output.runs_dir) / name
    return Plan(cfg, dump_config(cfg), Path(run_dir), fresh=True)


def resume_run_dir(config: str | None, overrides: list[str], run_dir: str | Path | None) -> Path:
    """The run directory to continue: ``run_dir``, else the config's ``output.runs_dir/run_name``."""
    from tbjax.config import load_config

    if run_dir is not None:
        return Path(run_dir)
    cfg = load_config(config or DEFAULT_CONFIG, overrides)
    if not cfg.output.run_name:
        raise InputError("--resume needs --run-dir R (the run directory to continue), or output.run_name in "
                         "the config")
    return Path(cfg.output.runs_dir) / cfg.output.run_name


def plan_resume(config: str | None, overrides: list[str], run_dir: str | Path | None) -> Plan:
    """The run's own config.yaml, changed only by overrides of RESUMABLE_KEYS; ``config`` must agree."""
    from tbjax.config import dump_config, load_config

    run_dir = resume_run_dir(config, overrides, run_dir)
    stored_path = run_dir / "config.yaml"
    if not stored_path.is_file():
        raise InputError(f"--resume: '{run_dir}' holds no run to continue (no config.yaml): start without "
                         "--resume, or pass the --run-dir of an earlier run")
    stored = load_config(stored_path)
    wanted = load_config(stored_path, overrides)
    allowed = ", ".join(RESUMABLE_KEYS)
    if config is not None:
        differs = config_diff(wanted, load_config(config, overrides))
        if differs:
            raise InputError(f"--resume continues run '{run_dir}' with its own config.yaml, but --config "
                             f"{config} differs: {_describe(differs, 'run', 'given')}: drop --config "
                             f"(on --resume only {allowed} may change, with --set)")
    refused = [d for d in config_diff(stored, wanted) if d[0] not in RESUMABLE_KEYS]
    if refused:
        raise InputError(f"--set would change run '{run_dir}' on --resume: {_describe(refused, 'run', 'given')}; "
                         f"only {allowed} may change when continuing a run: drop that --set, or start a new "
                         "run with it (another --run-dir, without --resume)")
    check_writable_target(run_dir)
    changes = {key: [a, b] for key, a, b in config_diff(stored, wanted)}
    text = dump_config(wanted) if changes else stored_path.read_text()
    return Plan(wanted, text, run_dir, fresh=False, changes=changes or None)
