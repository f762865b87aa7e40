"""Backtest answers: the turnover the env charged (drift re-balancing included) by hand, seeded
stochastic evaluation, and one compiled walk for every split."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from env_fixtures import explicit_market, toy_market
from tbjax.evaluation.backtest import backtest
from tbjax.learner.walk import walk
from tbjax.data.market import ROLE_TEST, ROLE_TRAIN, ROLE_VAL
from tbjax.run.assembly import make_env_params

OPEN = [100.0, 101.0, 103.0, 100.0, 97.0, 100.0, 104.0, 103.0]
CLOSE = [100.0, 102.0, 101.0, 98.0, 99.0, 101.0, 103.0, 105.0]


def half_position(params, obs_stats, obs, deterministic=True, key=None):
    """Always level 1 of (0, 0.5, 1): a constant 0.5 target."""
    return jnp.ones(obs.shape[0], jnp.int32)


def random_level(params, obs_stats, obs, deterministic=True, key=None):
    """Argmax would be level 0; sampled actions draw a level uniformly from ``key``."""
    if deterministic:
        return jnp.zeros(obs.shape[0], jnp.int32)
    return jax.random.randint(key, (obs.shape[0],), 0, 3)


def test_constant_half_position_reports_the_turnover_the_env_charged():
    n = len(CLOSE)
    data = explicit_market(OPEN, CLOSE, [0.01] * n, [1e9] * n, [True] * n,
                           role_ranges=[(0, 0), (0, n), (0, 0)])
    params = make_env_params(window_size=2, episode_len=64, fee_bps=10.0, half_spread_bps=0.0,
                             slippage_k=0.0, impact_coef=0.0)
    result, series = backtest(half_position, None, None, data, params, ROLE_VAL, 252.0)
    # By hand: decisions on bars 1..6 (window 2, the last decision needs bar 7 to fill on).
    p, traded, equity = 0.0, [], 1.0
    for t in range(1, n - 1):
        g = OPEN[t + 1] / CLOSE[t] - 1
        p_open = p * (1 + g) / (1 + p * g)
        traded.append(abs(0.5 - p_open))
        r = CLOSE[t + 1] / OPEN[t + 1] - 1
        equity *= (1 + p * g) * (1 - traded[-1] * 10e-4) * (1 + 0.5 * r)
        p = 0.5 * (1 + r) / (1 + 0.5 * r)
    m = result["per_symbol"]["HAND"]
    np.testing.assert_allclose(series["HAND"]["turnover"], traded, rtol=1e-5)
    assert m["turnover_total"] == pytest.approx(sum(traded), rel=1e-5)
    assert m["turnover"] == pytest.approx(np.mean(traded), rel=1e-5)
    assert result["pooled"]["turnover"] == pytest.approx(np.mean(traded), rel=1e-5)
    assert m["total_return"] == pytest.approx(equity - 1, abs=1e-6)  # equity is float32 (~1e-7 per bar)
    # the target never changes, yet the env re-balanced drift on every bar after the first
    assert m["n_trades"] == 1 and all(x > 0 for x in traded[1:])
    assert m["turnover_total"] > 0.5 + 1e-3


@pytest.fixture(scope="module")
def toy():
    return toy_market(lengths=(400, 300), n_features=2, seed=1)


def test_stochastic_evaluation_is_seeded_and_reproducible(toy):
    params = make_env_params(window_size=8, episode_len=32)
    det, _ = backtest(random_level, None, None, toy, params, ROLE_VAL, 252.0)
    assert det["pooled"]["exposure"] == 0.0  # level 0 = flat
    with pytest.raises(ValueError, match="needs a PRNG key"):
        backtest(random_level, None, None, toy, params, ROLE_VAL, 252.0, deterministic=False)
    runs = [backtest(random_level, None, None, toy, params, ROLE_VAL, 252.0, deterministic=False,
                     key=jax.random.PRNGKey(k))[1] for k in (7, 7, 8)]
    for sym in toy.symbols:
        np.testing.assert_array_equal(runs[0][sym]["position"], runs[1][sym]["position"])
        assert not np.array_equal(runs[0][sym]["position"], runs[2][sym]["position"])
        assert set(np.unique(runs[0][sym]["position"])) == {0.0, 0.5, 1.0}


def test_every_split_shares_one_compiled_walk(toy):
    # The env params' role (static) differs per caller; the walk pins it, so one program serves all.
    before = walk._cache_size()
    for role in (ROLE_TRAIN, ROLE_VAL, ROLE_TEST):
        for params_role in (ROLE_TRAIN, ROLE_VAL, ROLE_TEST):
            params = make_env_params(window_size=8, episode_len=32, role=params_role)
            backtest(half_position, None, None, toy, params, role, 252.0)
    assert walk._cache_size() - before == 1


def test_buy_and_hold_per_symbol_is_reported_by_hand():
    from tbjax.evaluation.report import _split_section

    n = len(CLOSE)
    data = explicit_market(OPEN, CLOSE, [0.01] * n, [1e9] * n, [True] * n,
                           role_ranges=[(0, 0), (0, n), (0, 0)])
    params = make_env_params(window_size=2, episode_len=64)
    result, _ = backtest(half_position, None, None, data, params, ROLE_VAL, 252.0)
    # decisions on bars 1..6 mark returns on bars 2..7: buy-and-hold from close_1 to close_7
    bh = result["baselines"]["buy_and_hold"]["per_symbol"]["HAND"]["total_return"]
    assert bh == pytest.approx(CLOSE[7] / CLOSE[1] - 1, rel=1e-6)
    row = next(line for line in _split_section("val", result, []) if line.startswith("| HAND"))
    assert row.split("|")[-2].strip() == f"{100 * bh:.2f}%"



def test_backtest_says_whether_the_pooled_result_is_real(toy):
    from tbjax.evaluation.metrics import pooled_series
    from tbjax.evaluation.significance import is_it_real

    params = make_env_params(window_size=8, episode_len=32)
    result, series = backtest(random_level, None, None, toy, params, ROLE_VAL, 8760.0,
                              deterministic=False, key=jax.random.PRNGKey(3))
    sig = result["is_it_real"]
    # the pooled strategy series and pooled buy-and-hold on the same bars, rebuilt from the series
    strat = pooled_series({s: (v["time_ms"], v["returns"], v["position"]) for s, v in series.items()})[1]
    bh_in = {}
    for s, v in series.items():
        e = np.concatenate([[1.0], v["buy_and_hold_equity"]])
        bh_in[s] = (v["time_ms"], e[1:] / e[:-1] - 1.0, np.ones(e.size - 1))
    expected = is_it_real(strat, 8760.0, pooled_series(bh_in)[1])
    assert sig["n_bars"] == strat.size == result["pooled"]["n_bars"]
    assert sig["sharpe"] == pytest.approx(result["pooled"]["sharpe"], rel=1e-9)
    assert sig["benchmark_sharpe"] == pytest.approx(result["baselines"]["buy_and_hold"]["sharpe"], rel=1e-6)
    for key in ("psr", "psr_vs_benchmark", "sharpe_ci", "sortino_ci", "max_drawdown_ci"):
        assert sig[key] == pytest.approx(expected[key], rel=1e-6, nan_ok=True), key
    assert sig["reading"] == expected["reading"] and sig["reading"].startswith("PSR ")
