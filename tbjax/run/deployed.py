"""What a finished run deploys, scored on val and test: the agent, or the baseline it must beat.

The agent (one checkpoint, or a population's ensemble of the members chosen on val) is backtested
on val; the deployment decision (:func:`tbjax.evaluation.deployment.decide`) reads ONLY that val
result. Without an edge the run's policy is the baseline (flat or buy-and-hold, ``eval.baseline``):
val and test are then scored for the baseline traded through the same env, the agent's own
figures stay beside it under ``"agent"``, and ``deployment.json`` in the run directory says so
(``tbjax.load_policy`` reads it). Writes happen only in :func:`save_evaluation`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tbjax.atomic import write_atomic
from tbjax.data.market import ROLE_TEST, ROLE_VAL
from tbjax.evaluation.deployment import baseline_policy, decide, deployed_decision
from tbjax.evaluation.metrics import json_safe
from tbjax.run.rundir import read_metrics_lines, run_write

ROLES = {"val": ROLE_VAL, "test": ROLE_TEST}
AGENT_KEYS = ("pooled", "per_symbol", "is_it_real", "vs_baselines", "objective", "regime_sortino")
DEPLOYMENT_FILE = "deployment.json"


def _agent_evaluation(session, carry, meta: dict, which: str, splits) -> tuple[dict, dict]:
    """The agent's eval dict and report series per split (a population as its ensemble)."""
    from tbjax.run.population import evaluate_population

    if session.n_members > 1:
        return evaluate_population(session, carry, meta, which, splits)
    evals, series = {}, {}
    for split in splits:
        _, result, ser = session.objective(carry, ROLES[split])
        result["checkpoint"] = {"which": which, **{k: meta.get(k) for k in ("update", "env_steps", "objective")}}
        evals[split], series[split] = result, ser
    return evals, series


def baseline_evaluation(session, hold, split: str) -> tuple[dict, dict]:
    """The baseline's (``hold``, a constant policy) eval dict and series on ``split``, traded
    through the env like the agent."""
    from tbjax.evaluation.scoring import evaluate_with_objective

    _, result, ser = evaluate_with_objective(session.exp, hold, None, None, session.env_params, ROLES[split])
    return result, ser


def selection_looks(session) -> list[float]:
    """Every val look the run's selection compared (its member book; deflates the deployment test).
    A session opened only to evaluate has an empty book: the run's "latest" checkpoint records them
    all (the "best" one those up to its update; a walk-forward fold folder's "best" all of the fold's)."""
    looks = session.book.all_looks()
    if not looks:
        meta = session.ckpt.meta("latest") or session.ckpt.meta("best") or {}
        looks = [x for member in meta.get("member_looks") or [] for x in member]
    return looks


def evaluate_checkpoint(session, carry, meta: dict, which: str, splits=("val", "test")) -> tuple[dict, dict]:
    """(eval dict per split, report series per split) of what the run deploys; writes nothing.

    Every split's dict holds ``"deployed"`` (the decision, made on val alone). When the baseline is
    deployed, ``"pooled"`` etc. are the baseline's and the agent's are under ``"agent"``.
    """
    wanted = tuple(splits)
    evals, series = _agent_evaluation(session, carry, meta, which, tuple(dict.fromkeys(("val",) + wanted)))
    baseline, hold = baseline_policy(session.cfg)
    decision = decide(evals["val"], baseline, session.cfg.eval.edge_confidence, selection_looks(session),
                      session.cfg.eval.edge_deflation)
    out_evals, out_series = {}, {}
    for split in wanted:
        agent = evals[split]
        if decision["policy"] == "agent":
            out_evals[split], out_series[split] = {**agent, "deployed": decision}, series[split]
            continue
        result, ser = baseline_evaluation(session, hold, split)
        kept = {k: agent[k] for k in agent if k not in AGENT_KEYS and k not in result}
        out_evals[split] = {**result, **kept, "deployed": decision,
                            "agent": {k: agent.get(k) for k in AGENT_KEYS}}
        out_series[split] = ser
    return out_evals, out_series


def read_deployment(run_dir: Path) -> dict | None:
    """The decision a run's last evaluation wrote (None before its first one)."""
    path = Path(run_dir) / DEPLOYMENT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def save_evaluation(run_dir: Path, evals: dict, series: dict) -> None:
    """eval/<split>.json, deployment.json, report.md and plots; a failed write raises one RunWriteError."""
    from tbjax.evaluation.report import write_report

    run_dir = Path(run_dir)
    with run_write(run_dir / "eval"):
        (run_dir / "eval").mkdir(exist_ok=True)
        for split, result in evals.items():
            write_atomic(run_dir / "eval" / f"{split}.json", json.dumps(json_safe(result), indent=2, sort_keys=True))
    decision = deployed_decision(evals)
    if decision is not None:
        with run_write(run_dir / DEPLOYMENT_FILE):
            write_atomic(run_dir / DEPLOYMENT_FILE, json.dumps(json_safe(decision), indent=2, sort_keys=True))
    history = [json.loads(line) for line in read_metrics_lines(run_dir / "metrics.jsonl")]
    with run_write(run_dir / "report.md"):
        write_report(run_dir, evals, series, history)


def write_evaluation(session, carry, meta: dict, which: str, splits=("val", "test")) -> dict:
    """eval/<split>.json, deployment.json, report.md and plots for a restored checkpoint."""
    evals, series = evaluate_checkpoint(session, carry, meta, which, splits)
    save_evaluation(session.run_dir, evals, series)
    return evals
