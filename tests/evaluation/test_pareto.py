"""The frontier's Pareto rule against brute force, the budget chooser on a hand-made frontier, and
the budget parser."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tbjax.config_rules import FRONTIER_TAIL_METRICS
from tbjax.errors import InputError
from tbjax.evaluation.pareto import LOSS_SIGN, pareto_mask, parse_budget, rank_agreement, tail_loss, within_budget
from tbjax.run.frontier_outputs import choose, summarize


def brute_force(returns, losses):
    n = len(returns)
    out = []
    for i in range(n):
        if not (math.isfinite(returns[i]) and math.isfinite(losses[i])):
            out.append(False)
            continue
        dominated = any(j != i and math.isfinite(returns[j]) and math.isfinite(losses[j])
                        and returns[j] >= returns[i] and losses[j] <= losses[i]
                        and (returns[j] > returns[i] or losses[j] < losses[i]) for j in range(n))
        out.append(not dominated)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_pareto_mask_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    # rounded values: ties in one measure or both are frequent
    returns = list(np.round(rng.normal(size=n), 1))
    losses = list(np.round(rng.uniform(0, 1, size=n), 1))
    if seed % 4 == 0 and n > 2:
        returns[0], losses[1] = math.nan, math.nan
    mask = pareto_mask(returns, losses)
    assert mask == brute_force(returns, losses)
    finite = [i for i in range(n) if math.isfinite(returns[i]) and math.isfinite(losses[i])]
    assert not finite or any(mask)  # a non-empty finite set has a non-empty front


def test_tail_loss_signs_cover_the_configurable_tail_metrics():
    assert set(LOSS_SIGN) == set(FRONTIER_TAIL_METRICS)
    assert tail_loss({"cvar_5": -0.02}, "cvar_5") == pytest.approx(0.02)
    assert tail_loss({"max_drawdown": 0.3}, "max_drawdown") == pytest.approx(0.3)
    assert math.isnan(tail_loss({"cvar_5": None}, "cvar_5"))


def test_parse_budget():
    assert parse_budget("1.5%", "--max-cvar") == pytest.approx(0.015)
    assert parse_budget("0.015", "--max-cvar") == pytest.approx(0.015)
    for bad in ("abc", "-1%", "0", "nan"):
        with pytest.raises(ValueError, match="--max-cvar"):
            parse_budget(bad, "--max-cvar")


def hand_made():
    """4 points: riskier is better in return; point 3 is dominated by point 1."""
    rows = [(2.0, -0.030, 0.25), (1.5, -0.020, 0.18), (1.0, -0.012, 0.22), (1.2, -0.025, 0.30)]
    points = [{"point": i, "settings": {"ppo.cvar_weight": float(i)}, "selected": [i],
               "val": {"sortino": s, "cvar_5": c, "max_drawdown": d},
               "test": {"sortino": s * 0.8, "cvar_5": c * 1.1, "max_drawdown": d}} for i, (s, c, d) in enumerate(rows)]
    flat = {"sortino": None, "cvar_5": 0.0, "max_drawdown": 0.0}
    return summarize(points, {"val": {"buy_and_hold": flat, "flat": flat}, "test": {"buy_and_hold": flat, "flat": flat}},
                     "sortino", "cvar_5")


def test_summary_pareto_set_and_order():
    summary = hand_made()
    assert summary["val_pareto"] == [0, 1, 2]  # riskiest first; 3 is dominated by 1
    assert summary["test_keeps_val_order"]["tail_spearman"] == pytest.approx(1.0)


def test_budget_picks_the_best_return_within_it():
    summary = hand_made()
    assert choose(summary, {})["point"] == 0
    assert choose(summary, {"cvar_5": 0.026})["point"] == 1  # 0 is over; 1 beats 3 and 2
    assert choose(summary, {"cvar_5": 0.015})["point"] == 2
    assert choose(summary, {"cvar_5": 0.026, "max_drawdown": 0.2})["point"] == 1
    assert choose(summary, {"max_drawdown": 0.2})["point"] == 1
    assert within_budget(summary["points"], {"cvar_5": 0.03}, "sortino") == (0, None)
    with pytest.raises(InputError, match=r"tightest is point 2 .*cvar_5 loss 1\.2000%"):
        choose(summary, {"cvar_5": 0.01})


def test_rank_agreement():
    assert rank_agreement([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert rank_agreement([1], [1]) is None
    assert rank_agreement([1, 1], [1, 2]) is None
