"""One planned ``python -m tbjax.train`` invocation: checks, session, run directory, chunks, final evaluation.

:func:`train_job` runs a :class:`~tbjax.run.resume.Plan` in three phases; what an interrupt or a
failed write leaves behind is decided here, the exit status and the printing are the CLI's:

1. :func:`open_session` only reads: the run directory, config paths, warm-up
   (:func:`tbjax.run.warmup.check_warmup`), data, the checkpoint to resume from, and the compile of
   the first chunk. An interrupt is :class:`~tbjax.run.interrupts.Interrupted` with
   :data:`NOTHING_WRITTEN`.
2. :func:`train_chunks` writes the run directory (all or nothing) and trains. SIGINT/SIGTERM only
   set a flag: the running chunk finishes and its checkpoint is saved; an interrupt during the
   setup undoes it. A failed write is one InputError naming the newest complete checkpoint and the
   command that continues from it.
3. :func:`final_evaluation` restores the best checkpoint and writes eval/ and report.md; training is
   complete, so an interrupt or a failed write names ``python -m tbjax.evaluate`` as the way on.

:func:`train_run` is the whole command as one library call (plan + :func:`train_job`), for notebooks
and tests that need a finished run without going through argv.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from tbjax.errors import InputError
from tbjax.run.interrupts import Interrupted, StopFlag, deferred_interrupts, interrupt_means
from tbjax.run.resume import (Plan, check_fresh_run_dir, continue_command, evaluate_command, plan_fresh,
                              plan_resume, resume_advice)
from tbjax.run.warmup import check_warmup

NOTHING_WRITTEN = "before training started; nothing was written"


@dataclass(frozen=True)
class RunOptions:
    """How the command line asks a run to go, beside its config: the flags every training command
    shares (:func:`tbjax.cli.common.add_training_flags`), each a field of the same name, copied by
    :meth:`of`; a new flag is one line there and a field here."""

    quiet: bool = False  # no progress bar; one log line per evaluation
    max_chunks: int | None = None  # stop (resumably) after this many chunks in this invocation

    @classmethod
    def of(cls, args) -> RunOptions:
        """The options of parsed arguments (an argparse namespace), field by field."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


@dataclass
class TrainResult:
    """How the invocation ended: ``finished`` (trained to the end and evaluated) or stopped resumably
    after update ``update`` (``--max-chunks``, SIGINT/SIGTERM)."""

    run_dir: Path
    finished: bool
    update: int


def open_session(plan: Plan, options: RunOptions, make_session: Callable | None = None):
    """(session, carry) ready for the first chunk, compiled; nothing written. ``make_session``:
    ``(cfg, run_dir, **kwargs)`` → the session (default a TrainingSession; the frontier's own)."""
    from tbjax.run.distributed import is_primary, maybe_initialize_distributed
    from tbjax.run.session import TrainingSession
    from tbjax.run.rundir import check_same_data, resolve_run_paths

    run_dir = plan.run_dir
    cfg = plan.cfg if plan.fresh else resolve_run_paths(plan.cfg, run_dir)
    check_warmup(cfg)
    maybe_initialize_distributed()
    pipeline = None
    if not plan.fresh and (run_dir / "feature_pipeline.json").is_file():
        from tbjax.data.pipeline import FeaturePipeline

        pipeline = FeaturePipeline.load(str(run_dir / "feature_pipeline.json"))
    session = (make_session or TrainingSession)(cfg, run_dir, write=is_primary(), quiet=options.quiet,
                                                   pipeline=pipeline)
    if not plan.fresh:
        check_same_data(session.exp, run_dir)
    carry = session.start(resume=not plan.fresh, fix=lambda: resume_advice(run_dir))
    with deferred_interrupts(NOTHING_WRITTEN):  # no KeyboardInterrupt inside XLA's compile callbacks
        session.compile(carry)
    return session, carry


def _run_info(command: list[str]) -> dict:
    return {"cwd": os.getcwd(), "command": list(command),
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def train_chunks(plan: Plan, session, carry, *, command: list[str], leftovers: list[str], options: RunOptions,
                 note: Callable[[str], None], continue_with: str | None = None) -> bool:
    """Set up the run directory and train; True when training reached its end. ``continue_with``:
    the command that continues the run (default :func:`~tbjax.run.resume.continue_command`'s)."""
    from tbjax.run.distributed import is_primary
    from tbjax.run.rundir import RunWriteError

    try:
        with StopFlag() as stop:  # from here SIGINT/SIGTERM only set stop.raised
            if is_primary():
                session.setup_run_dir(plan.config_text, fresh=plan.fresh, changes=plan.changes,
                                      run_info=_run_info(command))
            if stop.raised:  # during setup: undo it, as if the interrupt had come a moment earlier
                session.undo_setup()
                raise Interrupted(NOTHING_WRITTEN)
            if plan.fresh and leftovers and leftovers != ["no checkpoint"]:
                note(f"'{plan.run_dir}' held no usable checkpoint ({'; '.join(leftovers[:3])}); cleared it and "
                     "started afresh")
            return session.train(resume=not plan.fresh, stop=stop, max_chunks=options.max_chunks, carry=carry)
    except RunWriteError as exc:
        if session.saved_update is None:
            hint = "no checkpoint was saved: once fixed, run the same command again to start afresh"
        else:
            hint = (f"the newest complete checkpoint is update {session.saved_update}: once fixed, continue with: "
                    f"{continue_with or continue_command(plan.run_dir, options.quiet)}")
        raise InputError(f"{exc}; {hint}") from None


def final_evaluation(session, run_dir: Path) -> None:
    """Restore the best checkpoint, write eval/ and report.md (training is complete)."""
    from tbjax.run.rundir import RunWriteError

    evaluate_cmd = evaluate_command(run_dir)
    try:
        with interrupt_means(f"during the final evaluation; training is complete: {evaluate_cmd} writes the "
                             "evaluation"):
            session.final_evaluation()
    except RunWriteError as exc:
        raise InputError(f"{exc}; training is complete: once fixed, {evaluate_cmd} writes the evaluation") from None


def refuse_frontier(run_dir: Path) -> None:
    """``tbjax.train --resume`` continues training runs only: a frontier's members train its grid's
    settings (their own HParams), which a training session would silently replace by the config's."""
    from tbjax.run.checkpoint import RunCheckpoints

    with RunCheckpoints(run_dir) as ckpt:
        meta = ckpt.meta("latest") or {}
    if "frontier_points" in meta or (Path(run_dir) / "frontier.json").is_file():
        raise InputError(f"'{run_dir}' is a frontier run (python -m tbjax.frontier): continue it with "
                         f"python -m tbjax.frontier --run-dir {run_dir} --resume")


def train_job(plan: Plan, *, command: list[str], options: RunOptions = RunOptions(),
              note: Callable[[str], None] = lambda text: None) -> TrainResult:
    """Run ``plan`` to its end (or a resumable stop). ``command`` is recorded in run_info.json;
    ``note`` receives the one line worth telling the user besides the result (cleared leftovers)."""
    with interrupt_means(NOTHING_WRITTEN):
        if not plan.fresh:
            refuse_frontier(plan.run_dir)
        leftovers = check_fresh_run_dir(plan.run_dir) if plan.fresh else []
        session, carry = open_session(plan, options)
    finished = train_chunks(plan, session, carry, command=command, leftovers=leftovers, options=options, note=note)
    if finished and session.write:  # several processes: process 0 evaluates and writes the report
        final_evaluation(session, plan.run_dir)
    return TrainResult(plan.run_dir, finished, session.update)


def train_run(config: str | Path | None = None, overrides: Sequence[str] = (), run_dir: str | Path | None = None, *,
              resume: bool = False, options: RunOptions = RunOptions(quiet=True),
              note: Callable[[str], None] = lambda text: None) -> TrainResult:
    """``python -m tbjax.train --config C --set K=V ... --run-dir R [--resume]`` as one call, without
    parsing or printing (notebooks, tests): plan (:func:`~tbjax.run.resume.plan_fresh` or
    :func:`~tbjax.run.resume.plan_resume`), then :func:`train_job`. run_info.json records that command,
    the one that reproduces the run. Quiet unless ``options`` says otherwise; raises InputError."""
    overrides = [str(o) for o in overrides]
    with interrupt_means(NOTHING_WRITTEN):
        plan = (plan_resume if resume else plan_fresh)(None if config is None else str(config), overrides, run_dir)
    command = ["python", "-m", "tbjax.train", *([] if config is None else ["--config", str(config)]),
               "--run-dir", str(plan.run_dir), *(["--resume"] if resume else []),
               *(["--quiet"] if options.quiet else []),
               *([] if options.max_chunks is None else ["--max-chunks", str(options.max_chunks)]),
               *[arg for o in overrides for arg in ("--set", o)]]
    return train_job(plan, command=command, options=options, note=note)
