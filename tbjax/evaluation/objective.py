"""The regime objective: what the best checkpoint and the hyperparameter search maximise.

objective = w_val·Sortino(val) + w_choppy·Sortino(CHOPPY_FLAT) + w_trend·Sortino(STRONG_TREND)
(config keys eval.w_val / eval.w_choppy / eval.w_trend; docs/ALGORITHMS.md, "Regime objective").
Defined here once; ``tbjax.evaluation.scoring.objective_of`` feeds it for training, HPO and evaluate.
"""

from __future__ import annotations

import math


def finite_or_zero(x: float) -> float:
    """Sortino is undefined (NaN) for a series without losses, e.g. a flat policy; count it as 0."""
    return float(x) if x is not None and math.isfinite(float(x)) else 0.0


def regime_objective(val_sortino: float, choppy_sortino: float, trend_sortino: float,
                     w_val: float, w_choppy: float, w_trend: float) -> float:
    """objective = w_val·Sortino(val) + w_choppy·Sortino(CHOPPY_FLAT) + w_trend·Sortino(STRONG_TREND).

    The seed system's ObjectiveScorePruningCallback with weights 0.5 / 0.3 / 0.2 by default (docs/ALGORITHMS.md).
    Undefined Sortino values count as 0 so a flat policy scores 0, not NaN.
    """
    return (w_val * finite_or_zero(val_sortino) + w_choppy * finite_or_zero(choppy_sortino)
            + w_trend * finite_or_zero(trend_sortino))
