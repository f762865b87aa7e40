"""What a frontier run writes and how it hands one point to the run folder as its policy.

* :func:`summarize`: the Pareto set on VAL (and, for the plot, on test) of the config's return
  measure vs tail loss (:mod:`tbjax.evaluation.pareto`), and whether test keeps val's order along
  the val Pareto set (Spearman rank correlation of the tail loss and of the return measure).
* :func:`choose`: the point the run deploys: the best val return within ``--max-cvar`` /
  ``--max-drawdown`` (val), or without a budget the best val return of the val Pareto set.
* :func:`install_choice`: the run folder holds that point as its policy: the point's settings in
  config.yaml (``train.population`` stays every member, the checkpoint's shape) and its ensemble
  as the "best" checkpoint's ``selected`` members, which ``tbjax.evaluate`` and
  ``tbjax.load_policy`` read as they read any population run's choice.
* frontier.json, frontier.png and frontier.md (also at the head of report.md), all atomic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from tbjax.atomic import write_atomic, write_with
from tbjax.errors import InputError
from tbjax.evaluation.metrics import json_safe
from tbjax.evaluation.pareto import best_return, pareto_mask, rank_agreement, tail_loss, within_budget

BUDGET_METRICS = {"max_cvar": "cvar_5", "max_drawdown": "max_drawdown"}
BUDGET_FLAGS = {"cvar_5": "--max-cvar", "max_drawdown": "--max-drawdown"}


def summarize(points: list[dict], baselines: dict, return_metric: str, tail_metric: str) -> dict:
    """frontier.json's body (without the choice): points with ``pareto`` flags per split, the val
    Pareto set ordered from the riskiest (highest tail loss) point, and the order check."""
    for split in ("val", "test"):
        mask = pareto_mask([pt[split].get(return_metric) for pt in points],
                           [tail_loss(pt[split], tail_metric) for pt in points])
        for pt, on in zip(points, mask):
            pt.setdefault("pareto", {})[split] = on
    front = sorted((i for i, pt in enumerate(points) if pt["pareto"]["val"]),
                   key=lambda i: -tail_loss(points[i]["val"], tail_metric))
    order = {f"{name}_spearman": rank_agreement([measure(points[i]["val"]) for i in front],
                                                [measure(points[i]["test"]) for i in front])
             for name, measure in (("tail", lambda m: tail_loss(m, tail_metric)),
                                   ("return", lambda m: m.get(return_metric)))}
    return {"return_metric": return_metric, "tail_metric": tail_metric,
            "tail_loss": f"{tail_metric} as a loss (var_5 / cvar_5 negated)", "points": points,
            "val_pareto": front, "test_keeps_val_order": order, "baselines": baselines}


def choose(summary: dict, budgets: dict[str, float]) -> dict:
    """{"point", "rule"}: the best val return within ``budgets`` {tail metric: largest val loss}, or
    without budgets the best val return of the val Pareto set. No point within budget: one
    InputError naming the tightest point and its value of the budgeted measure."""
    points, ret = summary["points"], summary["return_metric"]
    if not budgets:
        best = best_return(points, summary["val_pareto"], ret)
        if best is None:
            return {"point": 0, "rule": f"no budget given and no point has a finite val {ret} and tail: the first point"}
        return {"point": best, "rule": f"no budget given: the val Pareto set's best val {ret}"}
    best, tightest = within_budget(points, budgets, ret)
    wanted = " and ".join(f"val {m} loss <= {b:.4%}" for m, b in budgets.items())
    if best is None:
        if tightest is None:
            raise InputError(f"no frontier point has {wanted}: the frontier is empty")
        pt = points[tightest["index"]]
        from tbjax.run.frontier import describe

        raise InputError(f"no frontier point has {wanted}: the tightest is point {tightest['index']} "
                         f"({describe(pt['settings'])}) with val {tightest['metric']} loss {tightest['loss']:.4%}; "
                         f"loosen {BUDGET_FLAGS[tightest['metric']]} to at least that, or add larger values to "
                         "frontier.cvar_weight (frontier.json holds every point)")
    return {"point": best, "rule": f"best val {ret} with {wanted}"}


def write_json(run_dir: Path, summary: dict) -> None:
    write_atomic(Path(run_dir) / "frontier.json", json.dumps(json_safe(summary), indent=2, sort_keys=True))


def _finite_or(x, default=0.0) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else default


def write_plot(run_dir: Path, summary: dict) -> None:
    """frontier.png: return measure vs tail loss on val and on test, the points, their split's
    Pareto set as a line, the chosen point ringed, buy-and-hold and flat marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ret, tail = summary["return_metric"], summary["tail_metric"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    chosen = (summary.get("chosen") or {}).get("point")
    for ax, split in zip(axes, ("val", "test")):
        pts = summary["points"]
        xs = [tail_loss(p[split], tail) for p in pts]
        ys = [_finite_or(p[split].get(ret), math.nan) for p in pts]
        ax.scatter(xs, ys, c="tab:blue", label="grid points")
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(str(p["point"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = sorted((i for i, p in enumerate(pts) if p["pareto"][split]), key=lambda i: xs[i])
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "-o", c="tab:red", label=f"{split} Pareto set")
        if chosen is not None:
            ax.scatter([xs[chosen]], [ys[chosen]], s=160, facecolors="none", edgecolors="k", label="chosen")
        for name, marker in (("buy_and_hold", "s"), ("flat", "x")):
            m = summary["baselines"][split][name]
            ax.scatter([_finite_or(tail_loss(m, tail))], [_finite_or(m.get(ret))], marker=marker, c="tab:gray",
                       s=60, label=name.replace("_", "-"))
        ax.set_xlabel(f"{tail} loss ({split})")
        ax.set_ylabel(f"{ret} ({split})")
        ax.set_title(f"{split} frontier")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    try:
        write_with(Path(run_dir) / "frontier.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100,
                                                                          bbox_inches="tight"))
    finally:
        plt.close(fig)


def _fmt(x, pct: bool) -> str:
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{float(x):.3%}" if pct else f"{float(x):.3f}"


def markdown(summary: dict) -> str:
    """The frontier in plain words: each step of risk aversion along the val Pareto set, what it
    cost (return) and bought (tail), whether test keeps the order, and the choice."""
    from tbjax.run.frontier import describe

    ret, tail, pts = summary["return_metric"], summary["tail_metric"], summary["points"]
    pct_ret, pct_tail = ret in ("total_return", "cagr"), True
    lines = ["# Return–tail-risk frontier", "",
             f"{len(pts)} grid points trained as one compiled program; return measure: val `{ret}`, tail "
             f"measure: val `{tail}` as a loss (lower is safer). A point is on the Pareto set when no other point "
             "has a return at least as high and a tail loss at least as low, one of them strictly.", "",
             "| point | settings | val " + ret + " | val " + tail + " loss | test " + ret + " | test " + tail
             + " loss | val Pareto |", "|---|---|---|---|---|---|---|"]
    for p in pts:
        lines.append(f"| {p['point']} | {describe(p['settings'])} | {_fmt(p['val'].get(ret), pct_ret)} | "
                     f"{_fmt(tail_loss(p['val'], tail), pct_tail)} | {_fmt(p['test'].get(ret), pct_ret)} | "
                     f"{_fmt(tail_loss(p['test'], tail), pct_tail)} | {'yes' if p['pareto']['val'] else ''} |")
    lines += ["", "## Each step of risk aversion along the val Pareto set", ""]
    front = summary["val_pareto"]
    if len(front) < 2:
        lines.append("The val Pareto set has one point: no setting bought a smaller tail at any cost in return.")
    for a, b in zip(front, front[1:]):
        va, vb = pts[a]["val"], pts[b]["val"]
        cost = _finite_or(va.get(ret), math.nan) - _finite_or(vb.get(ret), math.nan)
        bought = tail_loss(va, tail) - tail_loss(vb, tail)
        lines.append(f"- point {a} → point {b} ({describe(pts[b]['settings'])}): costs {_fmt(cost, pct_ret)} of val "
                     f"{ret} and buys {_fmt(bought, pct_tail)} less val {tail} loss.")
    order = summary["test_keeps_val_order"]
    rho = order.get("tail_spearman")
    lines += ["", "## Does test keep the val order?", "",
              ("Too few Pareto points (or a constant measure) to rank." if rho is None else
               f"Spearman rank correlation of the {tail} loss between val and test along the val Pareto set: "
               f"{rho:.2f} ({'test keeps the order' if rho > 0.5 else 'test does NOT keep the order'}); of "
               f"{ret}: {_fmt(order.get('return_spearman'), False)}.")]
    chosen = summary.get("chosen")
    if chosen:
        c = pts[chosen["point"]]
        lines += ["", "## The run's policy", "",
                  f"Point {chosen['point']} ({describe(c['settings'])}), members {c['selected']}: {chosen['rule']}. "
                  f"Val {ret} {_fmt(c['val'].get(ret), pct_ret)}, val {tail} loss {_fmt(tail_loss(c['val'], tail), True)}; "
                  f"test {ret} {_fmt(c['test'].get(ret), pct_ret)}, test {tail} loss "
                  f"{_fmt(tail_loss(c['test'], tail), True)}."]
    return "\n".join(lines) + "\n"


def install_choice(session, summary: dict) -> None:
    """The run folder holds the chosen point as its policy (module docstring); the best checkpoint
    is saved again (a new step) with the point's ensemble as its ``selected`` members."""
    from tbjax.run.rundir import run_write

    chosen = summary["chosen"]
    point = summary["points"][chosen["point"]]
    path = session.run_dir / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    for key, value in point["settings"].items():
        section, name = key.split(".")
        raw[section][name] = value
    with run_write(path):
        write_atomic(path, yaml.safe_dump(raw, sort_keys=False))
    import jax

    carry, meta = session.ckpt.restore("best", jax.eval_shape(session.template))  # the structure is enough
    meta = {k: v for k, v in meta.items() if k not in ("step", "structure")}
    meta.update(selected=point["selected"], frontier_point={"point": chosen["point"], "rule": chosen["rule"],
                                                            "settings": point["settings"]})
    with run_write(session.ckpt.paths["best"]):
        session.ckpt.save_best(int(meta.get("update") or 0), carry, meta)


def write_outputs(run_dir: Path, summary: dict, with_report: bool) -> None:
    """frontier.json, frontier.png, frontier.md; ``with_report``: frontier.md also heads report.md
    (after the run's evaluation wrote it)."""
    from tbjax.run.rundir import run_write

    run_dir = Path(run_dir)
    text = markdown(summary)
    with run_write(run_dir / "frontier.json"):
        write_json(run_dir, summary)
        write_plot(run_dir, summary)
        write_atomic(run_dir / "frontier.md", text)
        report = run_dir / "report.md"
        if with_report and report.is_file():
            write_atomic(report, text + "\n![frontier](frontier.png)\n\n" + report.read_text())
