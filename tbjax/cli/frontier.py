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

A frontier stops and resumes as ``python -m tbjax.train`` does: SIGINT/SIGTERM during training or
``--max-chunks N`` save the latest checkpoint and print the command that continues it,
``python -m tbjax.frontier --run-dir R --resume`` (the run's own config.yaml; ``--set`` only of
:data:`tbjax.run.resume.RESUMABLE_KEYS`). ``--resume`` on a finished frontier trains nothing: it
chooses again when a budget is given, else it only says so.

Exit status: 0 done or stopped resumably; 2 bad input, a failed write, or no point within the
budget (one ``error:`` line naming the tightest point; frontier.json is written); 130 interrupted
before training started or during the evaluation (``--resume`` then evaluates). The frontier is
:mod:`tbjax.run.frontier`; this module parses and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tbjax.cli.common import OneLineParser, add_training_flags, parse_training_args, training_main
from tbjax.errors import InputError


def parse_args(argv):
    ap = OneLineParser(prog="python -m tbjax.frontier", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="YAML config (default configs/base.yaml); its frontier.* section")
    ap.add_argument("--max-cvar", default=None, metavar="LOSS",
                    help="largest val per-bar CVaR 5%% loss of the chosen point, e.g. 1.5%% or 0.015")
    ap.add_argument("--max-drawdown", default=None, metavar="LOSS",
                    help="largest val max drawdown of the chosen point, e.g. 20%% or 0.2")
    add_training_flags(ap, set_help="override a config key",
                       resume_help="continue a stopped frontier from its latest checkpoint")
    return parse_training_args(ap, argv)


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
    from tbjax.run.frontier import continue_command, describe, frontier_job, rechoose
    from tbjax.run.interrupts import interrupt_means
    from tbjax.run.job import NOTHING_WRITTEN, RunOptions
    from tbjax.run.resume import plan_fresh, plan_resume

    budgets = budgets_of(args)
    use_compilation_cache()
    if args.run_dir and (Path(args.run_dir) / "frontier.json").is_file():
        if args.config or args.set:
            raise InputError(f"'{args.run_dir}' already holds a finished frontier: pass only --run-dir and a budget "
                             "to choose again, or another --run-dir for a new frontier")
        if args.resume and not budgets:
            print(f"frontier finished already: {args.run_dir} (frontier.json); nothing to resume (a budget, "
                  "--max-cvar or --max-drawdown, chooses again)")
            return 0
        summary, run_dir = rechoose(args.run_dir, budgets), Path(args.run_dir)
    else:
        with interrupt_means(NOTHING_WRITTEN):
            plan = (plan_resume if args.resume else plan_fresh)(args.config, args.set, args.run_dir)
        summary = frontier_job(plan, budgets, command=["python", "-m", "tbjax.frontier", *args.argv],
                               options=RunOptions.of(args),
                               note=lambda text: print(f"note: {text}", file=sys.stderr))
        run_dir = plan.run_dir
        if summary is None:
            print(f"stopped; continue with: {continue_command(run_dir, args.quiet)}", file=sys.stderr)
            return 0
    chosen = summary["chosen"]
    point = summary["points"][chosen["point"]]
    print(f"frontier: {len(summary['points'])} points, val Pareto set {summary['val_pareto']}; the run's policy is "
          f"point {chosen['point']} ({describe(point['settings'])}): {chosen['rule']}")
    print(f"frontier finished: {run_dir}  (frontier.json, frontier.png, report.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
