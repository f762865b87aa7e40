"""``python -m tbjax.train --config configs/base.yaml``: the main job, end to end.

config → data, roles, train-fitted features → MarketData → compiled trainer → chunks of updates
(progress bar, metrics.jsonl, TensorBoard) → validation with frozen statistics every
``train.eval_every`` updates (val Sortino, regime objective, best checkpoint) → final val/test
evaluation of the best checkpoint → report.md with plots.

SIGINT/SIGTERM finish the running chunk, save the latest checkpoint and exit 0; ``--resume``
continues from it and ends with the same metrics as an uninterrupted run (the carry holds the RNG).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

from tbjax.errors import InputError


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m tbjax.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/base.yaml", help="YAML config (default configs/base.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="A.B=C", help="override a config key")
    ap.add_argument("--run-dir", default=None, help="run directory (default runs/<run_name or timestamp>)")
    ap.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    ap.add_argument("--quiet", action="store_true", help="no progress bar; one log line per evaluation")
    ap.add_argument("--max-chunks", type=int, default=None,
                    help="stop (resumably) after this many chunks in this invocation")
    return ap.parse_args(argv)


def resolve_run_dir(cfg, run_dir: str | None, resume: bool) -> Path:
    if run_dir is None:
        name = cfg.output.run_name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_dir = os.path.join(cfg.output.runs_dir, name)
    path = Path(run_dir)
    if resume and not (path / "checkpoints" / "latest").is_dir():
        raise InputError(f"--resume: no checkpoint in '{path / 'checkpoints' / 'latest'}': start without --resume "
                         "or pass the --run-dir of an earlier run")
    if not resume and (path / "checkpoints").is_dir() and any((path / "checkpoints").iterdir()):
        raise InputError(f"run directory '{path}' already holds checkpoints: pass --resume to continue it "
                         "or choose another --run-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"run directory '{path}' is not writable ({exc.strerror}): choose another --run-dir") from None
    return path


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between chunks (the running chunk always finishes)."""

    def __init__(self):
        self.raised = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    from tbjax.config import dump_config, load_config

    cfg = load_config(args.config, args.set)
    from tbjax.distributed import is_primary, maybe_initialize_distributed

    maybe_initialize_distributed()
    run_dir = resolve_run_dir(cfg, args.run_dir, args.resume)
    from tbjax.session import TrainingSession  # heavy imports (JAX) after the cheap checks

    session = TrainingSession(cfg, run_dir, write=is_primary(), quiet=args.quiet)
    if is_primary():
        write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
    with StopFlag() as stop:
        finished = session.train(resume=args.resume, stop=stop, max_chunks=args.max_chunks)
    if not finished:
        print(f"stopped after update {session.update}; continue with: python -m tbjax.train --config {args.config} "
              f"--run-dir {run_dir} --resume", file=sys.stderr)
        return 0
    session.final_evaluation()
    print(f"run finished: {run_dir}  (report: {run_dir / 'report.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
