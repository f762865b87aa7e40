"""``python -m tbjax.frontier --config C [--run-dir R] [--set k=v ...] [--max-cvar 1.5%] [--max-drawdown 20%]``.

Risk you can choose: trains a grid of risk settings (``frontier.cvar_weight`` × ``frontier.cvar_alpha``
× ``frontier.turnover_penalty``, ``frontier.seeds`` seeds each) as ONE compiled program, evaluates
each point's ensemble on val and test, and writes the return–tail-risk frontier to the run folder:
frontier.json (every point), frontier.png (val and test frontiers, buy-and-hold and flat marked)
and frontier.md (also at the head of report.md: what each step of risk aversion along the val
Pareto set cost and bought, and whether test keeps the val order).

``--max-cvar`` (val per-bar CVaR 5 % loss) and ``--max-drawdown`` (val max drawdown), as "1.5%" or
"0.015", pick the best val return within the budget; without them the best val return of the val
Pareto set. The run folder then holds that point as its policy: ``python -m tbjax.evaluate
--run-dir R`` and ``tbjax.load_policy(R)`` work on it as on a training run.

On a finished frontier, ``python -m tbjax.frontier --run-dir R --max-cvar 2%`` chooses again
without training (from R's frontier.json).

Exit status: 0 done; 2 bad input, a failed write, or no point within the budget (one ``error:``
line naming the tightest point; frontier.json is written); 130 interrupted. The frontier is
:mod:`tbjax.run.frontier`; this module parses and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tbjax.cli.common import OneLineParser, training_main
from tbjax.errors import InputError


def parse_args(argv):
    ap = OneLineParser(prog="python -m tbjax.frontier", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="YAML config (default configs/base.yaml); its frontier.* section")
    ap.add_argument("--set", action="append", default=[], metavar="A.B=C", help="override a config key")
    ap.add_argument("--run-dir", default=None, help="run directory (default runs/<run_name or timestamp>)")
    ap.add_argument("--max-cvar", default=None, metavar="LOSS",
                    help="largest val per-bar CVaR 5%% loss of the chosen point, e.g. 1.5%% or 0.015")
    ap.add_argument("--max-drawdown", default=None, metavar="LOSS",
                    help="largest val max drawdown of the chosen point, e.g. 20%% or 0.2")
    ap.add_argument("--quiet", action="store_true", help="no progress bar; one log line per evaluation")
    return ap.parse_args(argv)


def budgets_of(args) -> dict[str, float]:
    """{tail metric: largest val loss} from the budget flags; a malformed one is an InputError."""
    from tbjax.evaluation.pareto import parse_budget
    from tbjax.run.frontier_outputs import BUDGET_METRICS

    out = {}
    for attr, metric in BUDGET_METRICS.items():
        text = getattr(args, attr)
        if text is not None:
            try:
                out[metric] = parse_budget(text, "--" + attr.replace("_", "-"))
            except ValueError as exc:
                raise InputError(str(exc)) from None
    return out


def main(argv=None) -> int:
    return training_main(parse_args, run, argv)


def run(args) -> int:
    from tbjax.run.compile_cache import use_compilation_cache
    from tbjax.run.frontier import describe, frontier_job, rechoose
    from tbjax.run.interrupts import interrupt_means
    from tbjax.run.job import NOTHING_WRITTEN
    from tbjax.run.resume import plan_fresh

    budgets = budgets_of(args)
    use_compilation_cache()
    if args.run_dir and (Path(args.run_dir) / "frontier.json").is_file():
        if args.config or args.set:
            raise InputError(f"'{args.run_dir}' already holds a frontier: pass only --run-dir and a budget to "
                             "choose again, or another --run-dir for a new frontier")
        summary, run_dir = rechoose(args.run_dir, budgets), Path(args.run_dir)
    else:
        with interrupt_means(NOTHING_WRITTEN):
            plan = plan_fresh(args.config, args.set, args.run_dir)
        summary = frontier_job(plan, budgets, command=["python", "-m", "tbjax.frontier", *args.argv],
                               quiet=args.quiet, note=lambda text: print(f"note: {text}", file=sys.stderr))
        run_dir = plan.run_dir
    chosen = summary["chosen"]
    point = summary["points"][chosen["point"]]
    print(f"frontier: {len(summary['points'])} points, val Pareto set {summary['val_pareto']}; the run's policy is "
          f"point {chosen['point']} ({describe(point['settings'])}): {chosen['rule']}")
    print(f"frontier finished: {run_dir}  (frontier.json, frontier.png, report.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
