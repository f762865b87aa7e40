"""``python -m tbjax.hpo --config configs/hpo.yaml``: Optuna search over the compiled trainer.

    python -m tbjax.hpo --config configs/hpo.yaml [--storage URL] [--study-name S] [--n-trials N]
                        [--timeout SEC] [--batch B] [--run-dir DIR] [--set a.b=c]
                        [--heartbeat-interval S] [--grace-period S] [--max-retries K]

The study lives in a storage that several processes (or machines) can share and that
``optuna-dashboard`` opens: by default ``<run-dir>/study.db`` (SQLite); any SQLAlchemy URL; or an
Optuna journal file (a path ending in ``.log``). The study is always loaded if it exists, so
re-running the same command resumes it (``n_trials`` is the study's total). Every storage carries
Optuna's trial heartbeat and ``RetryHeartbeatStaleTrialCallback``: a trial whose worker was killed
is reported, failed after ``--grace-period`` seconds of silence and retried with the same
parameters up to ``--max-retries`` times (:mod:`tbjax.hpo.liveness`). Sampler: TPE seeded
with ``hpo.sampler_seed`` (+ the number of trials already stored, so a resumed or second worker
does not replay the first one's random start); pruner: ``hpo.pruner``. Trial execution, batching
and pruning rules: :mod:`tbjax.hpo.runner`; the search space: :mod:`tbjax.hpo.space`.

Outputs in the run dir: ``trials/<n>/`` (config.yaml, feature_pipeline.json, checkpoints/best:
``python -m tbjax.evaluate --run-dir <run-dir>/trials/<n>`` works), ``best/`` (a copy of the best
trial's folder), ``hpo_summary.json`` and ``plots/*.png``. With two or three ``hpo.objectives``
(:mod:`tbjax.hpo.objectives`) the study is multi-objective, without pruning: ``pareto/<n>/`` holds a
copy of each Pareto-front member instead of ``best/``, and ``plots/pareto_front.png`` Optuna's plot.
Compiled programs are cached on disk in ``<run-dir>/jax_cache`` (unless JAX_COMPILATION_CACHE_DIR is
set) so further workers and resumed runs skip XLA compilation. A study in which no trial completed
(every trial failed or was pruned, and none is still running) exits 2 with one message quoting the
first reasons.

The job (plan, study, trials, results) is :mod:`tbjax.hpo.job`, whose :func:`~tbjax.hpo.job.hpo_run`
is the command as one library call; this module parses and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tbjax.cli.common import OneLineParser, run_main
from tbjax.errors import InputError
from tbjax.hpo.job import DEFAULT_CONFIG, HPO_FLAG_KEYS, hpo_job, plan_hpo
from tbjax.hpo.liveness_settings import LivenessSettings
from tbjax.hpo.objectives import Goals


def parse_args(argv):
    ap = OneLineParser(prog="python -m tbjax.hpo", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config with an hpo: section")
    ap.add_argument("--storage", help="SQLAlchemy URL or journal file (*.log); default <run-dir>/study.db")
    ap.add_argument("--study-name", help="study name (default hpo.study_name)")
    ap.add_argument("--n-trials", type=int, help="total trials of the study (default hpo.n_trials)")
    ap.add_argument("--timeout", type=float, help="stop asking new trials after this many seconds")
    ap.add_argument("--batch", type=int, help="trials trained together by one vmapped program")
    ap.add_argument("--run-dir", help="HPO run directory (default <runs_dir>/<run_name or hpo-<study>>)")
    ap.add_argument("--set", action="append", default=[], metavar="A.B=C", help="override a config key")
    d = LivenessSettings()
    ap.add_argument("--heartbeat-interval", type=int, default=d.interval, metavar="S",
                    help=f"seconds between a trial's heartbeats (Optuna's heartbeat_interval; default {d.interval})")
    ap.add_argument("--grace-period", type=int, default=d.grace, metavar="S",
                    help=f"a RUNNING trial silent this long is failed and retried (default {d.grace})")
    ap.add_argument("--max-retries", type=int, default=d.max_retry, metavar="K",
                    help=f"retries of a trial whose worker died (RetryHeartbeatStaleTrialCallback; default {d.max_retry})")
    args = ap.parse_args(argv)
    for flag, value, low in (("--heartbeat-interval", args.heartbeat_interval, 1),
                             ("--grace-period", args.grace_period, 1), ("--max-retries", args.max_retries, 0)):
        if value < low:
            raise InputError(f"{flag} must be an integer >= {low}, got {value}")
    if args.grace_period <= args.heartbeat_interval:
        raise InputError(f"--grace-period ({args.grace_period} s) must exceed --heartbeat-interval "
                         f"({args.heartbeat_interval} s), or live trials would be failed as stale")
    return args


def liveness_of(args) -> LivenessSettings:
    return LivenessSettings(args.heartbeat_interval, args.grace_period, args.max_retries)


def _note(text: str) -> None:
    print(f"hpo: note: {text}", file=sys.stderr)


def run(argv=None) -> dict:
    args = parse_args(argv)
    plan = plan_hpo(args.config, args.set, args.run_dir,
                    **{key: getattr(args, key) for key in HPO_FLAG_KEYS})
    result = hpo_job(plan, liveness=liveness_of(args), quiet=False, note=_note)
    cfg, summary = result.cfg, result.summary
    print(f"storage: {result.storage} (study '{cfg.hpo.study_name}'; browse it with: optuna-dashboard {result.storage})")
    if result.error is not None:
        raise result.error
    print(_outcome(cfg, summary, Goals.of(cfg), result.run_dir))
    return summary


def _outcome(cfg, summary: dict, goals, run_dir: Path) -> str:
    """The last line: the best trial, or the Pareto front, or that none has completed yet."""
    head = f"study '{cfg.hpo.study_name}': {summary['trial_counts']}"
    if summary.get("pareto_front"):
        front = ", ".join(str(m["trial"]) for m in summary["pareto_front"])
        return (f"{head}; Pareto front on {goals.label()}: trials {front} (copies in {run_dir / 'pareto'}); "
                f"results in {run_dir}")
    if summary["best_trial"] is None:
        return (f"{head}; no trial has completed yet (others are still running in other workers); run the "
                f"command again later to collect the results in {run_dir}")
    return f"{head}; best value {summary['best_value']} (trial {summary['best_trial']}); results in {run_dir}"


def main(argv=None) -> int:
    def body() -> int:
        run(argv)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
