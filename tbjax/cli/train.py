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
  be given but must agree with it; ``--set`` may change only :data:`tbjax.run.resume.RESUMABLE_KEYS`.
  Without such a change the run ends with the same metrics as an uninterrupted one (the carry
  holds the RNG).
* Nothing in the run directory is written before every check passed: config, data, warm-up,
  run directory, the checkpoint to resume from, and the compile of the first chunk.
* SIGINT/SIGTERM during training finish the running chunk, save the latest checkpoint and exit 0
  with the exact command that continues the run; so does ``--max-chunks``.

Exit status: 0 finished or stopped resumably; 2 bad input or a failed write (one ``error:`` line
saying what, where and how to fix it; what was saved before stays usable); 130 interrupted before
training started, i.e. while loading, checking or compiling (nothing written), or during the final
evaluation (training is complete).

The rules live below the CLI: planning in :mod:`tbjax.run.resume`, the phases in
:mod:`tbjax.run.job`, signals in :mod:`tbjax.run.interrupts`; this module parses and prints.
"""

from __future__ import annotations

import sys

from tbjax.cli.common import OneLineParser, add_training_flags, parse_training_args, training_main
from tbjax.run.interrupts import interrupt_means
from tbjax.run.resume import DEFAULT_CONFIG, RESUMABLE_KEYS, continue_command

__all__ = ["DEFAULT_CONFIG", "RESUMABLE_KEYS", "continue_command", "main", "parse_args", "run"]


def parse_args(argv):
    ap = OneLineParser(prog="python -m tbjax.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None,
                    help=f"YAML config (default {DEFAULT_CONFIG}; with --resume: the run's own config.yaml)")
    add_training_flags(ap, set_help="override a config key (with --resume only " + ", ".join(RESUMABLE_KEYS) + ")",
                       resume_help="continue from the run directory's latest checkpoint")
    return parse_training_args(ap, argv)


def main(argv=None) -> int:
    return training_main(parse_args, run, argv)


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def run(args) -> int:
    from tbjax.run.compile_cache import use_compilation_cache
    from tbjax.run.job import NOTHING_WRITTEN, RunOptions, train_job
    from tbjax.run.resume import plan_fresh, plan_resume

    use_compilation_cache()

    with interrupt_means(NOTHING_WRITTEN):
        plan = (plan_resume if args.resume else plan_fresh)(args.config, args.set, args.run_dir)
    result = train_job(plan, command=["python", "-m", "tbjax.train", *args.argv], options=RunOptions.of(args),
                       note=_note)
    if not result.finished:
        print(f"stopped after update {result.update}; continue with: {continue_command(result.run_dir, args.quiet)}",
              file=sys.stderr)
        return 0
    from tbjax.run.distributed import is_primary

    if not is_primary():  # process 0 wrote the run directory; this process trained its share
        print(f"run finished; process 0 wrote {result.run_dir}")
        return 0
    print(f"run finished: {result.run_dir}  (report: {result.run_dir / 'report.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
