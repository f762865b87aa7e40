"""``python -m tbjax.evaluate --run-dir R [--split val|test|both] [--checkpoint best|latest] [--no-write]``.

Re-evaluates a run from its directory alone: the resolved config.yaml, the train-fitted
feature_pipeline.json and an orbax checkpoint (frozen observation statistics inside it). Prints the
metrics, then writes eval/<split>.json and report.md with plots.

Works from any folder: a relative ``data.processed_dir`` is found where the run was trained
(``tbjax.run.rundir.resolve_run_paths``), and data that differs from what the run was trained on is
refused. A damaged newest checkpoint falls back to the previous one with one warning line.

A run directory that cannot be written (read-only copy, full disk): the metrics are still
computed and printed, then one ``error:`` line says they were not saved and how to fix it, exit 2
(a script must not take the stale eval/*.json for new ones). ``--no-write`` only prints, exit 0.

The evaluation is :func:`tbjax.run.reevaluate.evaluate_run`; this module parses and prints.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tbjax.cli.common import OneLineParser, one_line_warnings, run_main
from tbjax.errors import InputError


def _no_checkpoint_fix(which: str, run_dir: Path) -> str:
    """What to do when the run has no usable ``which`` checkpoint (said in this command's flags)."""
    from tbjax.run.resume import continue_command

    if which == "best":
        return ("a best checkpoint is saved at each validation (every train.eval_every updates): pass "
                f"--checkpoint latest, or continue training with {continue_command(run_dir, quiet=False)}")
    return "pass --checkpoint best, or pick another --run-dir"


def _reason(exc: Exception) -> str:
    """The reason ("the disk is full") in tbjax.atomic's "<what> '<path>' failed: <reason>; <fix>"."""
    match = re.search(r"' failed: (.*?); ", str(exc))
    return match.group(1) if match else str(exc)


def main(argv=None) -> int:
    ap = OneLineParser(prog="python -m tbjax.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a run directory written by python -m tbjax.train")
    ap.add_argument("--split", choices=["val", "test", "both"], default="both")
    ap.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    ap.add_argument("--no-write", action="store_true",
                    help="only print the metrics (for a read-only run directory)")
    with one_line_warnings():
        return run_main(lambda: evaluate(ap.parse_args(argv)), interrupted="interrupted: nothing was written")


def evaluate(args) -> int:
    from tbjax.run.compile_cache import use_compilation_cache
    from tbjax.run.reevaluate import evaluate_run
    from tbjax.run.deployed import save_evaluation
    from tbjax.run.rundir import RunWriteError

    use_compilation_cache()
    run_dir = Path(args.run_dir)
    splits = ("val", "test") if args.split == "both" else (args.split,)
    evals, series = evaluate_run(run_dir, args.checkpoint, splits, fix=_no_checkpoint_fix(args.checkpoint, run_dir))
    for split, result in evals.items():
        p = result["pooled"]
        print(f"{split}: sharpe {p['sharpe']:.3f}  sortino {p['sortino']:.3f}  total_return {p['total_return']:.2%}  "
              f"max_drawdown {p['max_drawdown']:.2%}  objective {result['objective']:.3f}", flush=True)
    if args.no_write:
        return 0
    try:
        save_evaluation(run_dir, evals, series)
    except RunWriteError as exc:
        raise InputError(f"could not save the evaluation in '{run_dir}' ({_reason(exc)}): the metrics printed above "
                         "were not saved; make the run directory writable (or copy it somewhere writable) and run "
                         "again, or pass --no-write to only print them") from None
    print(f"report: {run_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
