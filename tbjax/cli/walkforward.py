"""``python -m tbjax.walkforward --config C [--folds K] [--run-dir R] [--set a.b=c] [--sequential]``.

Trains K walk-forward folds (tbjax.walkforward.folds) as one vmapped program (``--sequential``: one by
one, for comparison) and writes ``<run>/walkforward.json`` and ``report.md``. Bad input: one
``error:`` line, exit 2. The command as one library call is
:func:`tbjax.walkforward.job.walkforward_run`; this module parses and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tbjax.cli.common import OneLineParser, run_main
from tbjax.run.resume import DEFAULT_CONFIG


def parse_args(argv):
    ap = OneLineParser(prog="python -m tbjax.walkforward", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config")
    ap.add_argument("--folds", type=int, default=None, help="number of folds (walkforward.folds)")
    ap.add_argument("--run-dir", default=None, help="output folder (default runs/walkforward-<time>)")
    ap.add_argument("--set", action="append", default=[], metavar="A.B=C", help="override a config key")
    ap.add_argument("--sequential", action="store_true", help="train the folds one by one (unbatched)")
    ap.add_argument("--quiet", action="store_true", help="no per-evaluation log lines")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    def body() -> int:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        from tbjax.walkforward.job import plan_walkforward

        cfg, run_dir = plan_walkforward(args.config, args.set, args.run_dir, folds=args.folds)
        from tbjax.run.compile_cache import use_compilation_cache
        from tbjax.walkforward.driver import run_walkforward

        use_compilation_cache()

        log = None if args.quiet else (lambda line: print(line, flush=True))
        _print(run_walkforward(cfg, run_dir, sequential=args.sequential, log=log), run_dir)
        return 0

    return run_main(body)


def _print(doc: dict, run_dir: Path) -> None:
    def num(v):
        return "n/a" if v is None else f"{v:.3f}"
    for row in doc["folds"]:
        t = row["test"]
        print(f"fold {row['fold']}: val sortino {num(row['val_sortino'])}; test sortino {num(t.get('sortino'))}, "
              f"return {num(t.get('total_return'))} (buy-and-hold sortino {num(t['buy_and_hold'].get('sortino'))})")
    st = doc["stitched"]
    print(f"stitched out-of-sample: sortino {num(st['metrics'].get('sortino'))} vs buy-and-hold "
          f"{num(st['buy_and_hold'].get('sortino'))}; {st['is_it_real'].get('reading', '')}")
    print(f"written to {run_dir} (each fold's policy in {run_dir / 'folds'})")
