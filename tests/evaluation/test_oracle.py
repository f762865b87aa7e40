"""Planted-signal oracle: positions and costs by hand, Sharpe against closed forms."""

import math

import numpy as np
import pytest

from tbjax.data.synthetic import generate_klines
from tbjax.evaluation.oracle import klines_oracle, policy_pnl, threshold_oracle, threshold_positions

RHO, SIGMA, N = 0.2, 0.01, 200_000


def pdf(c):
    return math.exp(-c * c / 2) / math.sqrt(2 * math.pi)


def upper_tail(c):
    return 0.5 * math.erfc(c / math.sqrt(2))


def analytic_sharpe(c, mode, rho=RHO):
    """Per-bar Sharpe of a threshold policy on r = sigma (rho z + sqrt(1-rho^2) eps), no costs.

    E[sign(z) z 1{|z|>c}] = 2 pdf(c); E[z^2 1{|z|>c}] = 2 (c pdf(c) + tail(c)).
    flat: pnl = sign(z) 1{|z|>c} r.  keep: |position| = 1 always, and on bars with |z| <= c the
    held sign is independent of z, so only active bars add to the mean.
    """
    mean = rho * 2 * pdf(c)
    if mode == "flat":
        second = rho**2 * 2 * (c * pdf(c) + upper_tail(c)) + (1 - rho**2) * 2 * upper_tail(c)
    else:
        second = 1.0
    return mean / math.sqrt(second - mean**2)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(42)
    z = rng.standard_normal(N)
    returns = SIGMA * (RHO * z + math.sqrt(1 - RHO**2) * rng.standard_normal(N))
    return z, returns


def test_positions_and_costs_by_hand():
    signal = np.array([1.0, 2.0, -0.1, -3.0, 0.5, np.nan])
    np.testing.assert_array_equal(threshold_positions(signal, 0.5, "flat"), [1, 1, 0, -1, 0, 0])
    np.testing.assert_array_equal(threshold_positions(signal, 0.5, "keep"), [1, 1, 1, -1, -1, -1])
    np.testing.assert_array_equal(threshold_positions(signal, 0.5, "keep", long_only=True),
                                  [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(threshold_positions(-signal, 1.5, "keep"), [0, -1, -1, 1, 1, 1])
    returns = np.array([0.01, -0.02, 0.03, -0.01, 0.02, 0.0])
    pnl = policy_pnl(np.array([1.0, 1, 0, -1, 0, 0]), returns, cost_bps=10)
    np.testing.assert_allclose(pnl, [0.01 - 0.001, -0.02, -0.001, 0.01 - 0.001, -0.001, 0.0])


def test_zero_cost_matches_closed_forms(planted):
    z, returns = planted
    result = threshold_oracle(z, returns, cost_bps=0.0)
    for row in result["table"]:
        expected = analytic_sharpe(row["threshold"], row["mode"])
        assert row["sharpe_per_bar"] == pytest.approx(expected, abs=0.01), row
    sign_policy = RHO * math.sqrt(2 / math.pi) / math.sqrt(1 - 2 * RHO**2 / math.pi)
    assert analytic_sharpe(0.0, "flat") == pytest.approx(sign_policy, rel=1e-12)
    best_analytic = max(analytic_sharpe(c, m) for c in (0, .25, .5, .75, 1, 1.25, 1.5, 2)
                        for m in ("flat", "keep"))
    assert result["sharpe_per_bar"] == pytest.approx(best_analytic, abs=0.01)
    assert result["sharpe_per_bar"] > result["table"][0]["sharpe_per_bar"]  # beats sign(z)
    assert result["cost_bps"] == 0.0 and result["long_only"] is False


def test_costs_push_the_threshold_up(planted):
    z, returns = planted
    result = threshold_oracle(z, returns, cost_bps=5.0)
    assert result["threshold"] > 0.0
    sign_row = result["table"][0]
    assert sign_row["threshold"] == 0.0 and sign_row["turnover"] == pytest.approx(1.0, abs=0.01)
    assert result["sharpe_per_bar"] > sign_row["sharpe_per_bar"] + 0.01
    # sign(z): edge sigma rho E|z| minus 5 bp per unit turnover (flips half the time, |dp| = 2).
    edge = SIGMA * RHO * math.sqrt(2 / math.pi) - 5e-4 * 1.0
    assert sign_row["mean_return"] == pytest.approx(edge, abs=1e-4)  # se ~2.2e-5
    long_only = threshold_oracle(z, returns, cost_bps=5.0, long_only=True)
    assert long_only["long_only"] and long_only["sharpe_per_bar"] < result["sharpe_per_bar"]


def test_klines_oracle_alignment_on_synthetic_market():
    bars = generate_klines(20_000, 3_600_000, seed=2, signal_rho=RHO, regime="NORMAL")
    result = klines_oracle(bars, cost_bps=0.0)
    sign_row = result["table"][0]
    # shocks add variance: corr(z, r) = rho sigma / sqrt(sigma^2 + 0.01 E[m^2]) ~ 0.99 rho
    rho_eff = RHO * 0.010 / math.sqrt(0.010**2 + 0.01 * 7.5e-4 / 4)
    assert sign_row["sharpe_per_bar"] == pytest.approx(analytic_sharpe(0.0, "flat", rho_eff),
                                                       abs=0.02)
