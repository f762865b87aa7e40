"""Significance of a Sharpe ratio: PSR, MinTRL, DSR's SR0, PBO by CSCV, stationary bootstrap, report.

Each answer is checked against an independent computation in the test: a closed form written out
here, or a Monte-Carlo simulation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from scipy.stats import norm

from tbjax.evaluation.metrics import json_safe
from tbjax.evaluation.report import write_report
from tbjax.evaluation.significance import (
    MIN_ACTIVE_BARS,
    _prob,
    bootstrap_intervals,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    is_it_real,
    min_track_record_length,
    paired_edge,
    percentiles,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_moments,
    stationary_bootstrap_indices,
)


def _normalised(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """x shifted and scaled so its population mean and std are exactly ``mean`` and ``std``."""
    return (x - x.mean()) / x.std() * std + mean


def test_psr_matches_the_normal_closed_form():
    # a series whose third and fourth moments are exactly those of a normal: 0 with weight 2/3 and
    # ±1 with 1/6 each is symmetric (skew 0) with kurtosis (1/3) / (1/3)² = 3; then the PSR is
    # Φ(SR √(T−1) / √(1 + SR²/2))
    x = np.tile([0.0, 0.0, 0.0, 0.0, 1.0, -1.0], 100)
    t = x.size
    sr = 0.08
    r = x / x.std() * 0.01 + sr * 0.01
    got_sr, skew, kurt, n = sharpe_moments(r)
    assert (n, round(got_sr, 12), round(abs(skew), 12), round(kurt, 12)) == (t, sr, 0.0, 3.0)
    expected = norm.cdf(sr * math.sqrt(t - 1) / math.sqrt(1 + sr ** 2 / 2))
    assert probabilistic_sharpe_ratio(r) == pytest.approx(expected, rel=1e-10)
    bench = 0.03
    expected_b = norm.cdf((sr - bench) * math.sqrt(t - 1) / math.sqrt(1 + sr ** 2 / 2))
    assert probabilistic_sharpe_ratio(r, bench) == pytest.approx(expected_b, rel=1e-10)
    # MinTRL: the length at which the same moments give PSR exactly 0.95
    mintrl = min_track_record_length(r, 0.0, 0.95)
    assert mintrl == pytest.approx(1 + (1 + sr ** 2 / 2) * (norm.ppf(0.95) / sr) ** 2, rel=1e-10)
    assert norm.cdf(sr * math.sqrt(mintrl - 1) / math.sqrt(1 + sr ** 2 / 2)) == pytest.approx(0.95)


def test_psr_of_normal_draws_is_near_the_normal_closed_form():
    r = np.random.default_rng(9).normal(0.0005, 0.01, 5000)
    sr = r.mean() / r.std()
    g3, g4 = stats.skew(r), stats.kurtosis(r, fisher=False)
    general = norm.cdf(sr * math.sqrt(r.size - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr ** 2))
    assert probabilistic_sharpe_ratio(r) == pytest.approx(general, rel=1e-9)
    normal = norm.cdf(sr * math.sqrt(r.size - 1) / math.sqrt(1 + sr ** 2 / 2))
    assert probabilistic_sharpe_ratio(r) == pytest.approx(normal, abs=2e-3)


def test_psr_penalises_negative_skew_and_fat_tails():
    rng = np.random.default_rng(3)
    base = rng.normal(size=2000)
    crash = np.where(rng.random(2000) < 0.02, -8.0, 0.3)  # rare large losses: skew < 0, γ4 > 3
    normal_r, skewed_r = _normalised(base, 0.05, 1.0), _normalised(crash, 0.05, 1.0)
    assert sharpe_moments(skewed_r)[1] < -3 and sharpe_moments(skewed_r)[2] > 10
    assert probabilistic_sharpe_ratio(skewed_r) < probabilistic_sharpe_ratio(normal_r)
    assert min_track_record_length(skewed_r) > min_track_record_length(normal_r)


def test_degenerate_series_give_nan_not_errors():
    for r in (np.zeros(0), np.zeros(2), np.full(50, 0.001)):
        assert math.isnan(probabilistic_sharpe_ratio(r))
        ci = bootstrap_intervals(r, 252)
        assert all(math.isnan(v) for v in (*ci["sharpe"], *ci["sortino"]))
        if r.size > 2:  # a constant positive series never draws down
            assert ci["max_drawdown"] == (0.0, 0.0)
        else:
            assert all(math.isnan(v) for v in ci["max_drawdown"])
    losing = np.random.default_rng(0).normal(-0.01, 0.01, 100)
    assert math.isnan(min_track_record_length(losing))  # no track record makes SR < 0 significant
    out = is_it_real(np.full(50, 0.001), 252)
    assert not out["significant"] and "undefined" in out["reading"]
    json.dumps(json_safe(out), allow_nan=False)


def test_expected_max_sharpe_matches_monte_carlo():
    # SR0 of the DSR is the expected maximum Sharpe of N zero-skill trials
    rng = np.random.default_rng(11)
    n_trials, t, reps = 50, 60, 1000
    x = rng.normal(size=(reps, n_trials, t))
    sr = x.mean(axis=2) / x.std(axis=2)
    max_sr = sr.max(axis=1)
    sr0 = expected_max_sharpe(n_trials, float(sr.var(ddof=1)))
    se = max_sr.std(ddof=1) / math.sqrt(reps)
    # the formula is an approximation (≈ 1 % high for N = 50) plus the Monte-Carlo error
    assert abs(sr0 - max_sr.mean()) < 4 * se + 0.02 * max_sr.mean()
    assert expected_max_sharpe(1, 0.1) == 0.0


def test_deflated_sharpe_falls_with_the_number_of_trials():
    rng = np.random.default_rng(5)
    chosen = rng.normal(0.05, 1.0, 1000)
    few = np.concatenate([[sharpe_moments(chosen)[0]], rng.normal(0, 0.03, 4)])
    many = np.concatenate([[sharpe_moments(chosen)[0]], rng.normal(0, 0.03, 999)])
    dsr_few, dsr_many = deflated_sharpe_ratio(chosen, few), deflated_sharpe_ratio(chosen, many)
    assert dsr_many < dsr_few < probabilistic_sharpe_ratio(chosen)


def test_pbo_separates_overfitting_from_a_planted_edge():
    rng = np.random.default_rng(7)
    noise = [probability_of_backtest_overfitting(rng.normal(0, 0.01, (480, 12)), 8)["pbo"]
             for _ in range(20)]
    # zero-skill trials: the IS winner lands OOS like any other trial, PBO ≈ 0.5 on average
    assert 0.3 < np.mean(noise) < 0.7
    # trials with the same full-sample mean: any in-sample edge is paid back out of sample -> 1
    demeaned = rng.normal(0, 0.01, (480, 12))
    demeaned -= demeaned.mean(axis=0)
    out = probability_of_backtest_overfitting(demeaned, 8)
    assert out["pbo"] > 0.9 and out["n_splits"] == math.comb(8, 4) and out["logits"].shape == (70,)
    edge = rng.normal(0, 0.01, (480, 12))
    edge[:, 4] += 0.004
    assert probability_of_backtest_overfitting(edge, 8)["pbo"] < 0.1
    with pytest.raises(ValueError):
        probability_of_backtest_overfitting(edge, 7)


def test_stationary_bootstrap_blocks_have_the_mean_length():
    idx = stationary_bootstrap_indices(1000, 50, 8.0, np.random.default_rng(0))
    assert idx.shape == (50, 1000) and idx.min() >= 0 and idx.max() < 1000
    continues = (idx[:, 1:] - idx[:, :-1]) % 1000 == 1
    assert 1 - continues.mean() == pytest.approx(1 / 8, abs=0.01)  # new block with probability 1/L


def test_bootstrap_interval_covers_the_true_sharpe():
    t, mu, sd, n_year = 250, 0.001, 0.01, 252
    true_sharpe = mu / sd * math.sqrt(n_year)
    hits = 0
    for seed in range(200):
        r = np.random.default_rng(1000 + seed).normal(mu, sd, t)
        lo, hi = bootstrap_intervals(r, n_year, level=0.9, n_resamples=400, seed=seed)["sharpe"]
        hits += lo <= true_sharpe <= hi
    assert hits / 200 >= 0.85
    a = bootstrap_intervals(r, n_year, seed=1)
    assert a == bootstrap_intervals(r, n_year, seed=1)  # seeded: repeatable
    assert a["max_drawdown"][0] <= a["max_drawdown"][1] and a["sortino"][0] < a["sortino"][1]


def test_is_it_real_reads_noise_and_a_real_edge():
    rng = np.random.default_rng(2)
    bh = rng.normal(0.0, 0.01, 3000)
    noise = is_it_real(rng.normal(0.0, 0.01, 3000) - 0.0002, 8760, bh)
    assert not noise["significant"] and noise["reading"].startswith(f"PSR {noise['psr']:.2f}: not significant at 95 %")
    edge = is_it_real(rng.normal(0.002, 0.01, 3000), 8760, bh)
    assert edge["significant"] and edge["psr"] > 0.99 and edge["psr_vs_benchmark"] > 0.99
    assert "significant at 95 %" in edge["reading"] and "beats buy-and-hold" in edge["reading"]
    lo, hi = edge["sharpe_ci"]
    assert lo < edge["sharpe"] < hi
    assert edge["min_track_record_bars"] < 3000
    json.dumps(json_safe(edge), allow_nan=False)
    # a PSR just under the confidence is never rounded up to it in the sentence
    assert _prob(0.9498, 0.95) == "0.9498" and _prob(0.62, 0.95) == "0.62" and _prob(0.951, 0.95) == "0.95"


def test_beating_buy_and_hold_is_a_paired_test_of_the_difference():
    """The strategy is buy-and-hold plus a small, steady edge. Comparing its Sharpe with B&H's
    Sharpe taken as a known constant sees two nearly equal Sharpes (PSR near 0.5); the paired test
    sees the per-bar difference, which is almost always positive (PSR near 1)."""
    from scipy.stats import norm

    rng = np.random.default_rng(7)
    bh = rng.normal(0.0002, 0.01, 2000)
    strat = bh + rng.normal(0.0001, 0.0005, 2000)
    out = is_it_real(strat, 8760, bh)
    a = strat - bh  # the PSR closed form of the active return, written out
    sr, d = a.mean() / a.std(), a - a.mean()
    g3, g4 = np.mean(d ** 3) / a.var() ** 1.5, np.mean(d ** 4) / a.var() ** 2
    expected = norm.cdf(sr * math.sqrt(a.size - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr ** 2))
    assert out["psr_vs_benchmark"] == pytest.approx(expected, rel=1e-9) and expected > 0.99
    unpaired = probabilistic_sharpe_ratio(strat, bh.mean() / bh.std())  # the old, known-threshold reading
    assert 0.3 < unpaired < 0.8
    assert "paired test on the same bars" in out["reading"] and "beats buy-and-hold" in out["reading"]
    assert math.isfinite(out["min_track_record_bars_vs_benchmark"]) and out["min_track_record_bars_vs_benchmark"] < 2000


def test_a_strategy_that_is_its_benchmark_but_for_a_few_bars_has_no_paired_test():
    """Folds that all hold buy-and-hold, entered once, stitch to buy-and-hold but for the entry bar, and
    the two series differ elsewhere only by float32 rounding (1e-8 here). One bar says nothing either
    way: no PSR (NaN, not a "beats" or a "does not beat" that the rounding would decide), and the
    reading says why. With MIN_ACTIVE_BARS real differences the paired test is back."""
    rng = np.random.default_rng(3)
    bh = rng.normal(0.0005, 0.01, 1000)
    strat = bh + rng.normal(0.0, 1e-8, 1000)
    strat[0] += 0.002  # the one real difference
    out, edge = is_it_real(strat, 252, bh), paired_edge(strat, bh)
    assert math.isnan(out["psr_vs_benchmark"]) and math.isnan(edge["psr"])
    assert out["active_bars_vs_benchmark"] == edge["active_bars"] == 1
    assert "differs from buy-and-hold's on 1 bar only, too few for a paired test" in out["reading"]
    strat[1:MIN_ACTIVE_BARS] += 0.002
    out = is_it_real(strat, 252, bh)
    assert out["active_bars_vs_benchmark"] == MIN_ACTIVE_BARS and math.isfinite(out["psr_vs_benchmark"])
    assert "paired test on the same bars" in out["reading"]


def test_report_shows_the_is_it_real_table(tmp_path):
    rng = np.random.default_rng(4)
    r = rng.normal(0.0, 0.01, 200)
    series = {"AAA": {"time_ms": 1_704_067_200_000 + 3_600_000 * np.arange(200), "equity": np.cumprod(1 + r),
                      "buy_and_hold_equity": np.cumprod(1 + r), "position": np.ones(200), "returns": r}}
    sig = is_it_real(r, 8760, r)
    ev = json_safe({"pooled": {"sharpe": sig["sharpe"]}, "is_it_real": sig})
    text = write_report(tmp_path, {"val": ev}, {"val": series}, []).read_text()
    section = text.split("## Split: val")[1]
    assert "Is it real?" in section and "| PSR vs Sharpe 0 |" in section
    assert f"**Reading:** {sig['reading']}" in section
    assert "max drawdown 90 % interval" in section and "is_it_real." not in section


def _reference_sortino_interval(r: np.ndarray, n_year: float, level: float, n_resamples: int, seed: int):
    """The Sortino bootstrap written out resample by resample: the same stationary-bootstrap
    indices, each resample's annualised Sortino from its own losses (+inf when it has none), and
    NumPy's linear percentiles with +inf stood in for by 1e300 (an end beyond 1e250 IS +inf)."""
    idx = stationary_bootstrap_indices(r.size, n_resamples, r.size ** (1 / 3), np.random.default_rng(seed))
    values = []
    for row in r[idx]:
        losses = row[row < 0]
        values.append(math.inf if losses.size == 0 else row.mean() / math.sqrt(np.sum(losses ** 2) / row.size))
    values = np.asarray(values) * math.sqrt(n_year)
    ends = np.quantile(np.where(np.isinf(values), 1e300, values), [(1 - level) / 2, (1 + level) / 2])
    return [math.inf if e > 1e250 else float(e) for e in ends], float(np.mean(np.isinf(values)))


def test_percentiles_with_an_infinite_top_by_hand():
    # 4 values: the 0.5 percentile sits halfway between 2 and 3; the 0.9 one 70 % of the way from
    # 3 to +inf, so it is +inf (np.quantile says NaN there)
    assert percentiles(np.array([3.0, 1.0, math.inf, 2.0]), [0.0, 0.5, 0.9, 1.0]) == (1.0, 2.5, math.inf, math.inf)
    assert percentiles(np.array([math.nan, 1.0, 2.0]), [0.25]) == (1.25,)  # NaN is left out
    assert all(math.isnan(v) for v in percentiles(np.array([math.nan]), [0.1, 0.9]))


def test_sortino_interval_counts_resamples_without_a_loss_as_unbounded(tmp_path):
    r = np.full(40, 0.01)
    r[7] = -0.02  # one losing bar in 40: about a third of the resamples never draw it
    ci = bootstrap_intervals(r, 252, level=0.9, n_resamples=500, seed=0)
    (lo, hi), share = _reference_sortino_interval(r, 252, 0.9, 500, 0)
    assert hi == math.inf == ci["sortino"][1]  # dropping those resamples gave a finite top
    assert 0.2 < share == ci["sortino_no_loss_share"] < 0.5
    assert ci["sortino"][0] == pytest.approx(lo, rel=1e-12) and math.isfinite(lo)
    # the sample's own Sortino: 0.37 / 40 per bar over sqrt(0.0004 / 40), annualised: inside
    assert ci["sortino"][0] < (0.37 / 40) / math.sqrt(0.0004 / 40) * math.sqrt(252) < ci["sortino"][1]
    # JSON writes +inf as null, the share tells it from "undefined", the report says "unbounded"
    sig = is_it_real(r, 252, r)
    doc = json.loads(json.dumps(json_safe(sig), allow_nan=False))
    assert doc["sortino_ci"][1] is None and doc["sortino_no_loss_share"] > 0.2
    text = write_report(tmp_path, {"val": {"pooled": {}, "is_it_real": doc}}, {"val": {}}, []).read_text()
    low = f"{doc['sortino_ci'][0]:.2f}"
    assert f"| Sortino 90 % interval | [{low}, unbounded] ({100 * doc['sortino_no_loss_share']:.1f} % of resamples" in text
    # a series that never loses has no Sortino at all, so neither has its interval
    assert all(math.isnan(v) for v in bootstrap_intervals(np.full(40, 0.01), 252)["sortino"])


def test_sortino_interval_top_covers_the_true_sortino_when_losses_are_rare():
    # per-bar returns N(2, 1): a loss on 2.3 % of bars, so in 60 bars many resamples hold none.
    # True per-bar Sortino mu / sqrt(E[min(X, 0)^2]) with E[min(X, 0)^2] = (mu^2 + s^2) Phi(-mu/s)
    # - mu s phi(mu/s) (integrate x^2 over the normal's negative half). The 90 % interval's top must
    # miss it at most 5 % of the time; leaving out the loss-free resamples missed it on 10 %.
    mu, s, t = 2.0, 1.0, 60
    true = mu / math.sqrt((mu ** 2 + s ** 2) * norm.cdf(-mu / s) - mu * s * norm.pdf(mu / s))
    above = tried = 0
    for seed in range(300):
        r = np.random.default_rng(7000 + seed).normal(mu, s, t)
        if not (r < 0).any():  # no loss in the sample: no Sortino, nothing to cover
            continue
        tried += 1
        above += true > bootstrap_intervals(r, 1.0, level=0.9, n_resamples=200, seed=seed)["sortino"][1]
    assert tried > 200 and above / tried <= 0.05
