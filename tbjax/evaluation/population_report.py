"""The report section of a population run (``train.population`` > 1): members first, then the ensemble.

A careful reader must see the spread before the headline: every member's val objective and test
metrics, which members the ensemble uses (chosen on val only), a spread plot of the members' test
Sortino (min / median / max) beside the ensemble's and buy-and-hold's, then the ensemble's row
against buy-and-hold. When validation found no edge the run deploys its baseline: the ensemble's
row then shows the ensemble's own figures, marked not deployed, and a row of its own shows what the
run trades.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tbjax.atomic import write_with  # noqa: E402
from tbjax.evaluation.deployment import deployed_decision  # noqa: E402


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _baseline(ev: dict) -> dict:
    bh = (ev.get("baselines") or {}).get("buy_and_hold") or {}
    return bh.get("pooled", bh)


def _agent(ev: dict) -> dict:
    """The ensemble's own figures on a split: ``ev["agent"]`` when the run deployed its baseline
    (the split's top-level figures then score the baseline, tbjax.evaluation.deployment), else ``ev``."""
    return ev.get("agent") or ev


def _summary_row(label: str, val: dict, test: dict) -> str:
    """One table row: the val objective and Sortino of ``val``, the test figures of ``test``."""
    v, t = val.get("pooled") or {}, test.get("pooled") or {}
    return (f"| {label} | | | | {_num(val.get('objective'))} | {_num(v.get('sortino'))} | {_num(t.get('sortino'))} "
            f"| {_num(t.get('total_return'), 4)} | {_num(t.get('max_drawdown'), 4)} | {_num(t.get('turnover'))} |")


def plot_spread(path: Path, test: dict) -> None:
    """Members' test Sortino as points with min / median / max marks, the ensemble's and
    buy-and-hold's beside them (atomic write)."""
    members = [m.get("sortino") for m in test["population"]["members"]]
    values = np.array([v if v is not None else np.nan for v in members], float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    try:
        ax.scatter(np.zeros(len(values)), values, label="members", alpha=0.7)
        finite = values[np.isfinite(values)]
        if finite.size:
            for q, name in ((finite.min(), "min"), (np.median(finite), "median"), (finite.max(), "max")):
                ax.hlines(q, -0.2, 0.2, colors="grey", lw=1)
                ax.annotate(name, (0.22, q), fontsize=8, va="center")
        ax.scatter([1], [_agent(test)["pooled"].get("sortino", np.nan)], marker="*", s=150, label="ensemble")
        ax.scatter([2], [_baseline(test).get("sortino", np.nan)], marker="s", label="buy and hold")
        ax.set_xticks([0, 1, 2], ["members", "ensemble", "buy & hold"])
        ax.set_ylabel("test Sortino")
        ax.legend(fontsize=8)
        write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def population_section(run_dir: Path, evals: dict) -> list[str]:
    """Markdown lines (and ``plots/population_spread.png``) when ``evals`` come from a population."""
    val, test = evals.get("val") or {}, evals.get("test") or {}
    pop = test.get("population") or val.get("population")
    if pop is None:
        return []
    val_members = {m["member"]: m for m in (val.get("population") or {}).get("members", [])}
    rule = f"the {pop['top_k']} best on val" if pop.get("top_k") else "every member that beats flat on val"
    if pop.get("rule") not in (None, "top_k", "beat flat on val"):  # e.g. no member had a finite val objective
        rule = str(pop["rule"])
    seeds = [m.get("seed") for m in pop["members"]]
    who = ("seeds differ" if len(set(seeds)) == len(seeds) else
           "a frontier's grid: each point's members repeat the same seeds, their risk settings differ")
    lines = ["## Population", "",
             f"{pop['size']} members ({who}) trained as one program; the ensemble uses {rule} "
             f"(members {', '.join(str(i) for i in pop['selected'])}), each with its own frozen statistics. "
             "Members are chosen on validation only; their test rows are shown so the spread is visible.", "",
             "| member | seed | in ensemble | best update | val objective | val Sortino | test Sortino | test return "
             "| test max DD | test turnover |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in pop["members"]:
        v = val_members.get(m["member"], {})
        lines.append(f"| {m['member']} | {m['seed']} | {'yes' if m['selected'] else 'no'} | {m.get('best_update')} | "
                     f"{_num(m.get('val_objective'))} | {_num(v.get('sortino'))} | {_num(m.get('sortino'))} | "
                     f"{_num(m.get('total_return'), 4)} | {_num(m.get('max_drawdown'), 4)} | {_num(m.get('turnover'))} |")
    decision = deployed_decision(evals) or {}
    if decision.get("policy") == "baseline":  # the splits' top-level figures score what the run trades
        lines.append(_summary_row("ensemble (not deployed: no edge on val)", _agent(val), _agent(test)))
        lines.append(_summary_row(f"**deployed: {decision['baseline'].replace('_', ' ')}**", val, test))
    else:
        lines.append(_summary_row("**ensemble**", val, test))
    bh = _baseline(test)
    lines.append(f"| buy and hold | | | | | | {_num(bh.get('sortino'))} | {_num(bh.get('total_return'), 4)} | "
                 f"{_num(bh.get('max_drawdown'), 4)} | |")
    if test.get("population"):
        (Path(run_dir) / "plots").mkdir(parents=True, exist_ok=True)
        plot_spread(Path(run_dir) / "plots" / "population_spread.png", test)
        lines += ["", "![members' test Sortino spread](plots/population_spread.png)"]
    return lines + [""]
