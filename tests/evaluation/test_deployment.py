"""Do no harm: the paired edge test, the deployment decision and the constant baseline policy,
checked against hand-computed values and an independent PSR written here."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from tbjax.errors import InputError
from tbjax.evaluation.deployment import (ConstantPolicy, baseline_action, decide, resolve_baseline)
from tbjax.evaluation.significance import paired_edge


def reference_psr(a: np.ndarray) -> float:
    """PSR(0) of Bailey & López de Prado (2012), population moments, written out independently."""
    m, s = a.mean(), a.std()
    sr = m / s
    g3 = np.mean((a - m) ** 3) / s ** 3
    g4 = np.mean((a - m) ** 4) / s ** 4
    return float(norm.cdf(sr * math.sqrt(len(a) - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr ** 2)))


def test_paired_edge_is_the_psr_of_the_active_return():
    rng = np.random.default_rng(0)
    bench = rng.normal(0.0005, 0.01, 500)
    strat = bench + rng.normal(0.0003, 0.002, 500)  # correlated with the benchmark, slightly better
    out = paired_edge(strat, bench)
    active = strat - bench
    assert out["n_bars"] == 500
    assert out["mean_active_return"] == pytest.approx(active.mean())
    assert out["active_sharpe"] == pytest.approx(active.mean() / active.std())
    assert out["psr"] == pytest.approx(reference_psr(active), rel=1e-9)
    # pairing matters: the same strategy is nearly certain to beat its correlated benchmark, while
    # its own Sharpe is far from significant against zero over 500 bars
    assert out["psr"] > 0.9 and paired_edge(strat - bench.mean(), np.zeros(500))["psr"] < out["psr"]


def test_a_strategy_identical_to_its_baseline_has_no_evidence_of_an_edge():
    r = np.random.default_rng(1).normal(0, 0.01, 200)
    assert math.isnan(paired_edge(r, r)["psr"])
    decision = decide({"vs_baselines": {"flat": paired_edge(r, r)}}, "flat", 0.95)
    assert decision["policy"] == "baseline" and "no edge found on val" in decision["reason"]
    assert "differ from those of holding flat on 0 val bars only, too few to test (at least 30)" in decision["reason"]
    agent = r.copy()
    agent[:5] += 0.003  # better than flat on five bars, the same elsewhere: nothing a test can read
    decision = decide({"vs_baselines": {"flat": paired_edge(agent, r)}}, "flat", 0.95)
    assert decision["policy"] == "baseline" and "on 5 val bars only" in decision["reason"]


@pytest.mark.parametrize("psr,confidence,policy", [(0.97, 0.95, "agent"), (0.95, 0.95, "agent"), (0.94, 0.95, "baseline"),
                                                   (float("nan"), 0.95, "baseline"), (0.1, 0.0, "agent"),
                                                   (float("nan"), 0.0, "agent")])
def test_decide_deploys_the_agent_only_with_enough_val_evidence(psr, confidence, policy):
    val = {"split": "val", "vs_baselines": {"buy_and_hold": {"psr": psr, "n_bars": 300}}}
    d = decide(val, "buy_and_hold", confidence)
    assert d["policy"] == policy and d["baseline"] == "buy_and_hold" and d["position"] == 1.0
    assert ("buying and holding instead" in d["reason"]) == (policy == "baseline")


def test_the_edge_is_deflated_for_every_val_look_the_selection_compared():
    """An agent whose val edge clears 0.95 on its own, chosen as the best of 20 val looks: the
    deflated test is against SR0, the Sharpe the best of 20 zero-skill looks shows (Bailey & López
    de Prado 2014), computed here by hand from the closed form; it no longer clears 0.95. The
    decision states it always and uses it with eval.edge_deflation."""
    rng = np.random.default_rng(3)
    bench = rng.normal(0.0, 0.01, 400)
    strat = bench + rng.normal(0.00025, 0.002, 400)
    edge = paired_edge(strat, bench)
    assert edge["psr"] >= 0.95  # alone: an edge
    looks = list(rng.normal(0.0, 0.05, 19)) + [edge["active_sharpe"]]
    lone = decide({"vs_baselines": {"flat": edge}}, "flat", 0.95)
    stated = decide({"vs_baselines": {"flat": edge}}, "flat", 0.95, looks)
    deflated = decide({"vs_baselines": {"flat": edge}}, "flat", 0.95, looks, deflate=True)
    n, var, gamma = 20, np.var(looks, ddof=1), 0.5772156649015329
    sr0 = math.sqrt(var) * ((1 - gamma) * norm.ppf(1 - 1 / n) + gamma * norm.ppf(1 - 1 / (n * math.e)))
    a = strat - bench
    sr, m, sd = a.mean() / a.std(), a.mean(), a.std()
    g3, g4 = np.mean((a - m) ** 3) / sd ** 3, np.mean((a - m) ** 4) / sd ** 4
    expected = norm.cdf((sr - sr0) * math.sqrt(len(a) - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr ** 2))
    assert deflated["sr0"] == pytest.approx(sr0, rel=1e-9) and deflated["looks"] == 20
    assert deflated["psr_deflated"] == pytest.approx(expected, rel=1e-9) and expected < 0.95
    assert lone["policy"] == "agent" and stated["policy"] == "agent" and deflated["policy"] == "baseline"
    assert stated["psr_deflated"] == deflated["psr_deflated"] and not stated["deflated"] and deflated["deflated"]
    assert f"({expected:.2f} once deflated for the 20 val evaluations compared)" in stated["reason"]
    assert "deflated for the 20 val evaluations compared; undeflated" in deflated["reason"]
    # one look is the plain paired test; a look of a policy that trades as the baseline counts as 0
    assert decide({"vs_baselines": {"flat": edge}}, "flat", 0.95, looks[-1:])["psr_deflated"] == edge["psr"]


def test_baseline_follows_the_action_space():
    assert resolve_baseline("auto", "discrete", (-1.0, 0.0, 1.0), -1.0) == "flat"
    assert resolve_baseline("auto", "discrete", (0.0, 0.5, 1.0), -1.0) == "buy_and_hold"
    assert resolve_baseline("auto", "continuous", (0.0, 1.0), -0.5) == "flat"
    assert resolve_baseline("auto", "continuous", (-1.0, 1.0), 0.0) == "buy_and_hold"
    assert resolve_baseline("flat", "discrete", (0.0, 1.0), 0.0) == "flat"


def test_baseline_action_targets_the_baseline_position():
    assert baseline_action("buy_and_hold", "discrete", (0.0, 0.5, 1.0), 0, 1) == 2
    assert baseline_action("flat", "discrete", (-1.0, 0.0, 1.0), 0, 1) == 1
    # continuous: a in [-1, 1] maps to min + (a + 1) / 2 * (max - min)
    assert baseline_action("flat", "continuous", (), -1.0, 1.0) == pytest.approx(0.0)
    assert baseline_action("buy_and_hold", "continuous", (), 0.0, 2.0) == pytest.approx(0.0)
    assert baseline_action("buy_and_hold", "continuous", (), -1.0, 1.0) == pytest.approx(1.0)
    with pytest.raises(InputError, match="env.position_levels"):
        baseline_action("buy_and_hold", "discrete", (-1.0, 0.0, 0.5), 0, 1)
    with pytest.raises(InputError, match="env.max_position"):
        baseline_action("buy_and_hold", "continuous", (), -1.0, 0.5)


def test_constant_policy_acts_the_same_on_every_observation():
    obs = np.zeros((3, 7), np.float32)
    assert np.asarray(ConstantPolicy("discrete", 2)(None, None, obs)).tolist() == [2, 2, 2]
    assert np.asarray(ConstantPolicy("continuous", 0.25)(None, None, obs)).reshape(-1).tolist() == [0.25] * 3
