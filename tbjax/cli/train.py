"""``python -m tbjax.train --config configs/base.yaml``: the main job, end to end.

config → data, roles, train-fitted features → MarketData → compiled trainer → chunks of updates
(progress bar, metrics.jsonl, TensorBoard) → validation with frozen statistics every
``train.eval_every`` updates (val Sortino, regime objective, best checkpoint) → final val/test
evaluation of the best checkpoint → report.md with plots.

Run directory lifecycle:

* A fresh start reads ``--config`` (default configs/base.yaml) and ``--set`` overrides. It is
  refused when ``--run-dir`` already holds a usable checkpoint; leftovers of an attempt that never
  saved one (a crash or a full disk during the first save) are cleared and the run starts afresh.
* ``--resume`` continues from the run's newest usable "latest" checkpoint with the run's OWN
  config.yaml: ``python -m tbjax.train --run-dir R --resume`` needs nothing else. ``--config`` may
  be given but must agree with it; ``--set`` may change only :data:`RESUMABLE_KEYS`. Without such
  a change the run ends with the same metrics as an uninterrupted one (the carry holds the RNG).
* Nothing in the run directory is written before every check passed: config, data, warm-up,
  run directory, the checkpoint to resume from, and the compile of the first chunk.
* SIGINT/SIGTERM during training finish the running chunk, save the latest checkpoint and exit 0
  with the exact command that continues the run; so does ``--max-chunks``.

Exit status: 0 finished or stopped resumably; 2 bad input or a failed write (one ``error:`` line
saying what, where and how to fix it; what was saved before stays usable); 130 interrupted before
training started, i.e. while loading, checking or compiling (nothing written), or during the final
evaluation (training is complete).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import warnings
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


class Interrupted(Exception):
    """SIGINT/SIGTERM outside the chunk loop (exit 130); printed as "interrupted <message>", which
    says when and what was kept."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one InputError line (exit 2 through main), not usage text."""

    def error(self, message: str):
        raise InputError(f"{message} (see {self.prog} --help)")


def parse_args(argv):
    ap = OneLineParser(prog="python -m tbjax.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None,
                    help=f"YAML config (default {DEFAULT_CONFIG}; with --resume: the run's own config.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="A.B=C",
                    help="override a config key (with --resume only " + ", ".join(RESUMABLE_KEYS) + ")")
    ap.add_argument("--run-dir", default=None, help="run directory (default runs/<run_name or timestamp>)")
    ap.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    ap.add_argument("--quiet", action="store_true", help="no progress bar; one log line per evaluation")
    ap.add_argument("--max-chunks", type=int, default=None,
                    help="stop (resumably) after this many chunks in this invocation")
    args = ap.parse_args(argv)
    if args.max_chunks is not None and args.max_chunks < 1:
        ap.error(f"--max-chunks must be >= 1, got {args.max_chunks}")
    return args


# ---------------------------------------------------------------------- console


@contextlib.contextmanager
def one_line_warnings():
    """Show warnings as one ``warning: ...`` line each (no file path, no source line) in the block:
    a fallback to an older checkpoint is news for the user, not a stack location."""
    with warnings.catch_warnings():  # the filters stay as they are; only the display changes

        def show(message, category, filename, lineno, file=None, line=None):
            print("warning: " + " ".join(str(message).split()), file=sys.stderr, flush=True)

        warnings.showwarning = show
        yield


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM behaves like SIGINT (KeyboardInterrupt) outside the chunk loop, so a scheduler's
    kill before training gets the same clean exit 130 instead of dying mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def interrupt_means(message: str):
    """A KeyboardInterrupt in the block becomes :class:`Interrupted` with ``message``."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(message) from None


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between chunks (the running chunk always finishes);
    also defers an interrupt until the run directory setup is complete (or undone)."""

    def __init__(self):
        self.raised = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def continue_command(run_dir: Path, quiet: bool) -> str:
    """The command that continues ``run_dir``: its config.yaml holds everything else."""
    return (f"python -m tbjax.train --run-dir {shlex.quote(str(run_dir))} --resume"
            + (" --quiet" if quiet else ""))


def main(argv=None) -> int:
    with one_line_warnings(), sigterm_interrupts():
        try:
            args = parse_args(argv)
            args.argv = list(sys.argv[1:] if argv is None else argv)
            return run(args)
        except Interrupted as exc:
            print(f"interrupted {exc}", file=sys.stderr)
            return 130
        except KeyboardInterrupt:  # between the phases below: nothing half-done to report
            print("interrupted", file=sys.stderr)
            return 130
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2


# ---------------------------------------------------------------------- planning (reads only)


@dataclass
class Plan:
    """What this invocation will do, decided before anything is written."""

    cfg: object  # tbjax.config.Config; data paths still as the user wrote them
    config_text: str  # config.yaml as it will be (re)written
    run_dir: Path
    fresh: bool
    changes: dict | None = None  # resume: {key: [stored, new]} of the RESUMABLE_KEYS a --set changed


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
    from tbjax.run.session import RUN_ARTIFACTS

    return any((run_dir / name).exists() for name in RUN_ARTIFACTS)


def check_fresh_run_dir(run_dir: Path) -> list[str]:
    """A fresh start may use ``run_dir``: new, empty, or an earlier attempt without a usable checkpoint.

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
        quoted = shlex.quote(str(run_dir))
        if "latest" in usable:
            where = ", ".join(f"{kind} at update {update}" for kind, update in usable.items())
            raise InputError(f"run directory '{run_dir}' already holds checkpoints ({where}): continue it with "
                             f"python -m tbjax.train --run-dir {quoted} --resume, or choose another --run-dir")
        if usable:
            raise InputError(f"run directory '{run_dir}' holds a usable best checkpoint (update {usable['best']}) "
                             f"but no usable latest one ({'; '.join(problems[:2]) or 'none saved'}): it cannot be "
                             f"continued, and a fresh start here would delete it: evaluate it with python -m "
                             f"tbjax.evaluate --run-dir {quoted}, and train in another --run-dir (or delete "
                             f"'{run_dir / 'checkpoints'}' to start over in this one)")
    return problems or ["no checkpoint"]


def resume_advice(run_dir: Path) -> str:
    """What to do when --resume finds no usable "latest" checkpoint, from what the folder holds."""
    from tbjax.run.checkpoint import RunCheckpoints

    usable, _ = RunCheckpoints(run_dir).survey()
    quoted = shlex.quote(str(run_dir))
    if "best" in usable:
        return (f"the run cannot be continued, but its best checkpoint (update {usable['best']}) still evaluates: "
                f"python -m tbjax.evaluate --run-dir {quoted}; to train again use another --run-dir (or delete "
                f"'{run_dir / 'checkpoints'}' to start over in this one)")
    return ("nothing in it can be continued: start without --resume (a fresh start clears the unusable "
            "checkpoints), or pass the --run-dir of another run")


def plan_fresh(args) -> Plan:
    from tbjax.config import dump_config, load_config

    cfg = load_config(args.config or DEFAULT_CONFIG, args.set)
    if args.run_dir is None:
        name = cfg.output.run_name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.output.runs_dir) / name
    else:
        run_dir = Path(args.run_dir)
    return Plan(cfg, dump_config(cfg), run_dir, fresh=True)


def resume_run_dir(args) -> Path:
    from tbjax.config import load_config

    if args.run_dir is not None:
        return Path(args.run_dir)
    cfg = load_config(args.config or DEFAULT_CONFIG, args.set)
    if not cfg.output.run_name:
        raise InputError("--resume needs --run-dir R (the run directory to continue), or output.run_name in "
                         "the config")
    return Path(cfg.output.runs_dir) / cfg.output.run_name


def plan_resume(args) -> Plan:
    """The run's own config.yaml, changed only by --set of RESUMABLE_KEYS; --config must agree."""
    from tbjax.config import dump_config, load_config

    run_dir = resume_run_dir(args)
    stored_path = run_dir / "config.yaml"
    if not stored_path.is_file():
        raise InputError(f"--resume: '{run_dir}' holds no run to continue (no config.yaml): start without "
                         "--resume, or pass the --run-dir of an earlier run")
    stored = load_config(stored_path)
    wanted = load_config(stored_path, args.set)
    allowed = ", ".join(RESUMABLE_KEYS)
    if args.config is not None:
        differs = config_diff(wanted, load_config(args.config, args.set))
        if differs:
            raise InputError(f"--resume continues run '{run_dir}' with its own config.yaml, but --config "
                             f"{args.config} differs: {_describe(differs, 'run', 'given')}: drop --config "
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


# ---------------------------------------------------------------------- the run


def run(args) -> int:
    nothing_written = "before training started; nothing was written"
    with interrupt_means(nothing_written):
        plan = plan_resume(args) if args.resume else plan_fresh(args)
        leftovers = check_fresh_run_dir(plan.run_dir) if plan.fresh else []
        from tbjax.cli.check import read_prepared_warmup, warmup_rule
        from tbjax.run.distributed import is_primary, maybe_initialize_distributed
        from tbjax.run.session import RunWriteError, TrainingSession, check_same_data, resolve_run_paths

        run_dir = plan.run_dir
        cfg = plan.cfg if plan.fresh else resolve_run_paths(plan.cfg, run_dir)
        ok, detail = warmup_rule(cfg.env.window_size, read_prepared_warmup(cfg.data.processed_dir))
        if not ok:
            raise InputError(detail)
        maybe_initialize_distributed()
        pipeline = None
        if not plan.fresh and (run_dir / "feature_pipeline.json").is_file():
            from tbjax.data.pipeline import FeaturePipeline

            pipeline = FeaturePipeline.load(str(run_dir / "feature_pipeline.json"))
        session = TrainingSession(cfg, run_dir, write=is_primary(), quiet=args.quiet, pipeline=pipeline)
        if not plan.fresh:
            check_same_data(session.exp, run_dir)
        carry = session.start(resume=not plan.fresh, fix=lambda: resume_advice(run_dir))
        session.compile(carry)
    try:
        with StopFlag() as stop:  # from here SIGINT/SIGTERM only set stop.raised
            if is_primary():
                session.setup_run_dir(plan.config_text, fresh=plan.fresh, changes=plan.changes, run_info={
                    "cwd": os.getcwd(), "command": ["python", "-m", "tbjax.train", *args.argv],
                    "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            if stop.raised:  # during setup: undo it, as if the interrupt had come a moment earlier
                session.undo_setup()
                raise Interrupted(nothing_written)
            if plan.fresh and leftovers and leftovers != ["no checkpoint"]:
                print(f"note: '{run_dir}' held no usable checkpoint ({'; '.join(leftovers[:3])}); cleared it and "
                      "started afresh", file=sys.stderr)
            finished = session.train(resume=not plan.fresh, stop=stop, max_chunks=args.max_chunks, carry=carry)
    except RunWriteError as exc:
        if session.saved_update is None:
            hint = "no checkpoint was saved: once fixed, run the same command again to start afresh"
        else:
            hint = (f"the newest complete checkpoint is update {session.saved_update}: once fixed, continue with: "
                    f"{continue_command(run_dir, args.quiet)}")
        raise InputError(f"{exc}; {hint}") from None
    if not finished:
        print(f"stopped after update {session.update}; continue with: {continue_command(run_dir, args.quiet)}",
              file=sys.stderr)
        return 0
    evaluate_cmd = f"python -m tbjax.evaluate --run-dir {shlex.quote(str(run_dir))}"
    try:
        with interrupt_means(f"during the final evaluation; training is complete: {evaluate_cmd} writes the "
                             "evaluation"):
            session.final_evaluation()
    except RunWriteError as exc:
        raise InputError(f"{exc}; training is complete: once fixed, {evaluate_cmd} writes the evaluation") from None
    print(f"run finished: {run_dir}  (report: {run_dir / 'report.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
