"""The return-tail-risk Pareto set of ``python -m tbjax.frontier`` and the choice of one point in it.

Every point carries a return measure (higher is better: a pooled Sortino, Sharpe, total return,
...) and a tail measure read as a LOSS (lower is better: :func:`tail_loss` turns the per-bar
``var_5`` / ``cvar_5`` returns of :mod:`tbjax.evaluation.metrics` into losses by negating them;
``max_drawdown`` and ``volatility`` already are). Point a DOMINATES point b when a's return is
>= b's and a's loss <= b's, one of the two strictly; the Pareto set is the points nobody
dominates (docs/ALGORITHMS.md, "Risk you can choose"). A point with a NaN measure carries no
evidence: it is never on the set and dominates nobody. Pure NumPy / SciPy, host side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# + : the metric is already a loss; - : it is a return (negative = loss), negated
LOSS_SIGN = {"cvar_5": -1.0, "var_5": -1.0, "max_drawdown": 1.0, "volatility": 1.0}


def tail_loss(metrics: dict, tail_metric: str) -> float:
    """The tail measure of a metrics dict as a loss (NaN when missing or None)."""
    value = metrics.get(tail_metric)
    return math.nan if value is None else LOSS_SIGN[tail_metric] * float(value)


def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def pareto_mask(returns: Sequence[float], losses: Sequence[float]) -> list[bool]:
    """True for each point no other point dominates (higher-or-equal return, lower-or-equal loss,
    one strictly); points with a non-finite measure are never on the set and dominate nobody."""
    r = np.asarray([float(x) if _finite(x) else np.nan for x in returns], np.float64)
    loss = np.asarray([float(x) if _finite(x) else np.nan for x in losses], np.float64)
    ok = np.isfinite(r) & np.isfinite(loss)
    out = []
    for i in range(len(r)):
        if not ok[i]:
            out.append(False)
            continue
        others = ok & (r >= r[i]) & (loss <= loss[i]) & ((r > r[i]) | (loss < loss[i]))
        out.append(not bool(others.any()))
    return out


def parse_budget(text: str, flag: str) -> float:
    """``"1.5%"`` or ``"0.015"`` → 0.015 (a fraction > 0); a ValueError names ``flag`` otherwise."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"{flag} must be a fraction like 0.015 or a percentage like 1.5%, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{flag} must be > 0, got {text!r}")
    return value


def within_budget(points: list[dict], budgets: dict[str, float], return_metric: str,
                  split: str = "val") -> tuple[int | None, dict | None]:
    """(index of the best-return point whose ``split`` losses are all within ``budgets``
    {tail metric: largest loss}, None) — or (None, the tightest point) when none is: the point of
    least worst budget use (loss / budget), as {"index", "metric", "loss"} of its worst measure.

    Each point is a dict with ``points[i][split]`` a pooled metrics dict. Ties in the return
    measure go to the lower index (the grid's order). Points with a NaN return are not chosen.
    """
    best, best_return, tightest = None, -math.inf, None
    for i, point in enumerate(points):
        metrics = point[split]
        use = {m: tail_loss(metrics, m) / b for m, b in budgets.items()}
        worst = max(use, key=lambda m: use[m] if math.isfinite(use[m]) else math.inf)
        if tightest is None or (math.isfinite(use[worst]) and use[worst] < tightest[0]):
            tightest = (use[worst] if math.isfinite(use[worst]) else math.inf,
                        {"index": i, "metric": worst, "loss": tail_loss(metrics, worst)})
        ret = metrics.get(return_metric)
        if all(math.isfinite(u) and u <= 1.0 for u in use.values()) and _finite(ret) and float(ret) > best_return:
            best, best_return = i, float(ret)
    if best is not None:
        return best, None
    return None, tightest[1] if tightest else None


def best_return(points: list[dict], candidates: Sequence[int], return_metric: str, split: str = "val") -> int | None:
    """The candidate of highest ``split`` return measure (lowest index on ties; None when none is finite)."""
    scored = [(float(points[i][split][return_metric]), -i) for i in candidates if _finite(points[i][split].get(return_metric))]
    return -max(scored)[1] if scored else None


def rank_agreement(val: Sequence[float], test: Sequence[float]) -> float | None:
    """Spearman rank correlation of a measure between val and test over the same points (None for
    fewer than 2 points with both finite, or a constant side: no order to keep)."""
    pairs = [(float(a), float(b)) for a, b in zip(val, test) if _finite(a) and _finite(b)]
    if len(pairs) < 2:
        return None
    a, b = zip(*pairs)
    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    from scipy.stats import spearmanr

    rho = float(spearmanr(a, b)[0])
    return rho if math.isfinite(rho) else None
