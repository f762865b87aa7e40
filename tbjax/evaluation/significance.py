"""Is the result real? Significance of a strategy's Sharpe ratio (NumPy/SciPy, float64, host side).

A backtest Sharpe ratio is an estimate from T bars; a short, skewed or fat-tailed record, or the
best of many tried configurations, can show a high Sharpe by luck. This module says how likely
that is (formulas also in docs/ALGORITHMS.md, "Significance"). Conventions: r_t per-bar simple
returns, T bars, SR = mean(r) / std(r) PER BAR (population std, as ``metrics.risk_metrics``; the
annualised Sharpe is SR·sqrt(N)), γ3 = m3 / m2^1.5 skewness, γ4 = m4 / m2² kurtosis (non-excess,
3 for a normal), Φ the standard normal CDF.

* Probabilistic Sharpe Ratio, Bailey & López de Prado (2012), "The Sharpe Ratio Efficient
  Frontier", Journal of Risk 15(2):
      PSR(SR*) = Φ( (SR − SR*) √(T − 1) / √(1 − γ3 SR + (γ4 − 1)/4 SR²) )
  the probability that the true Sharpe exceeds the threshold SR* (treated as known), and the
  Minimum Track Record Length for confidence α (bars):
      MinTRL = 1 + (1 − γ3 SR + (γ4 − 1)/4 SR²) (Φ⁻¹(α) / (SR − SR*))²     (NaN when SR ≤ SR*).
* Deflated Sharpe Ratio, Bailey & López de Prado (2014), "The Deflated Sharpe Ratio: Correcting for
  Selection Bias, Backtest Overfitting and Non-Normality", Journal of Portfolio Management 40(5):
      DSR = PSR(SR0),  SR0 = √V[SR_n] ((1 − γ) Φ⁻¹(1 − 1/N) + γ Φ⁻¹(1 − 1/(N e)))
  with V[SR_n] the variance of the N trials' Sharpe ratios and γ ≈ 0.5772 (Euler–Mascheroni):
  SR0 approximates the expected maximum Sharpe of N zero-skill trials.
* Probability of Backtest Overfitting by combinatorially symmetric cross-validation, Bailey,
  Borwein, López de Prado & Zhu (2015), "The Probability of Backtest Overfitting", Journal of
  Computational Finance 20(4): see ``probability_of_backtest_overfitting``.
* Stationary bootstrap, Politis & Romano (1994), "The Stationary Bootstrap", JASA 89(428): blocks
  of geometric length (mean L) from uniform random starts, wrapping around the end; percentile
  confidence intervals of Sharpe, Sortino and max drawdown (``bootstrap_intervals``).

Undefined values are NaN (JSON null), as in ``metrics``; nothing here raises on a degenerate
(empty, constant) series. One value may be +inf: the upper (or both) ends of the Sortino interval,
when enough resamples hold no losing bar (see ``bootstrap_intervals``); JSON writes it as null and
``sortino_no_loss_share`` > 0 tells that null from an undefined one.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.stats import norm, rankdata

from tbjax.evaluation.metrics import STD_FLOOR

EULER_GAMMA = 0.5772156649015329
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 500
BOOTSTRAP_LEVEL = 0.90
BOOTSTRAP_SEED = 0
CHUNK_ELEMENTS = 2_000_000  # resamples × bars held in memory at once (16 MB per float64 array)
MIN_BARS = 3
# The paired test needs bars where the strategy and its benchmark really differ. Below MATERIAL_ACTIVE
# (a hundredth of a basis point of equity per bar) two accounts holding the same position differ by
# float32 rounding only; with fewer than MIN_ACTIVE_BARS material differences the active return's
# skew and kurtosis are not estimable (one differing bar gives a kurtosis of about T) and the PSR's
# normal approximation says nothing. A strategy that is its benchmark but for a few bars (a
# walk-forward of folds that all hold buy-and-hold, entered once) has no testable edge either way.
MATERIAL_ACTIVE = 1e-6
MIN_ACTIVE_BARS = 30


def sharpe_moments(returns: np.ndarray) -> tuple[float, float, float, int]:
    """(per-bar SR, skewness γ3, kurtosis γ4 non-excess, T) with population moments; NaN when undefined."""
    r = np.asarray(returns, dtype=np.float64).ravel()
    t = r.size
    if t < MIN_BARS:
        return math.nan, math.nan, math.nan, t
    d = r - r.mean()
    m2 = float(np.mean(d ** 2))
    if math.sqrt(m2) <= STD_FLOOR:
        return math.nan, math.nan, math.nan, t
    return float(r.mean()) / math.sqrt(m2), float(np.mean(d ** 3)) / m2 ** 1.5, float(np.mean(d ** 4)) / m2 ** 2, t


def active_return(strategy: np.ndarray, benchmark: np.ndarray) -> np.ndarray:
    """a_t = r_t − b_t per bar, float64."""
    return np.asarray(strategy, np.float64).ravel() - np.asarray(benchmark, np.float64).ravel()


def active_moments(a: np.ndarray) -> tuple[tuple[float, float, float, int], int]:
    """(:func:`sharpe_moments` of the active return ``a`` (:func:`active_return`), the number of bars
    where it is material): the moments are NaN when fewer than MIN_ACTIVE_BARS bars differ by
    MATERIAL_ACTIVE or more (see there)."""
    n_active = int(np.sum(np.abs(a) >= MATERIAL_ACTIVE))
    if n_active < MIN_ACTIVE_BARS:
        return (math.nan, math.nan, math.nan, int(a.size)), n_active
    return sharpe_moments(a), n_active


def _sr_variance_factor(sr: float, skew: float, kurt: float) -> float:
    """1 − γ3 SR + (γ4 − 1)/4 SR²: T − 1 times the variance of the SR estimate (≥ 0 in theory)."""
    return 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr ** 2


def probabilistic_sharpe_ratio(returns: np.ndarray, sr_benchmark: float = 0.0) -> float:
    """PSR(SR*) of Bailey & López de Prado (2012); ``sr_benchmark`` is SR* PER BAR. NaN if undefined."""
    sr, skew, kurt, t = sharpe_moments(returns)
    return psr_from_moments(sr, skew, kurt, t, sr_benchmark)


def psr_from_moments(sr: float, skew: float, kurt: float, t: int, sr_benchmark: float) -> float:
    """PSR from the moments of ``sharpe_moments`` (see the module docstring)."""
    v = _sr_variance_factor(sr, skew, kurt)
    if not (math.isfinite(v) and v > 0 and math.isfinite(sr_benchmark)):
        return math.nan
    return float(norm.cdf((sr - sr_benchmark) * math.sqrt(t - 1) / math.sqrt(v)))


def min_track_record_length(returns: np.ndarray, sr_benchmark: float = 0.0,
                            confidence: float = CONFIDENCE) -> float:
    """Minimum Track Record Length (bars) for PSR(SR*) ≥ ``confidence``; NaN when SR ≤ SR*."""
    sr, skew, kurt, _ = sharpe_moments(returns)
    return mintrl_from_moments(sr, skew, kurt, sr_benchmark, confidence)


def mintrl_from_moments(sr: float, skew: float, kurt: float, sr_benchmark: float, confidence: float) -> float:
    """MinTRL = 1 + (1 − γ3 SR + (γ4 − 1)/4 SR²) (Φ⁻¹(α) / (SR − SR*))²; NaN when SR ≤ SR*."""
    v = _sr_variance_factor(sr, skew, kurt)
    if not (math.isfinite(v) and v > 0 and math.isfinite(sr_benchmark) and sr > sr_benchmark):
        return math.nan
    return float(1.0 + v * (norm.ppf(confidence) / (sr - sr_benchmark)) ** 2)


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """SR0 of the DSR: √V ((1 − γ) Φ⁻¹(1 − 1/N) + γ Φ⁻¹(1 − 1/(N e))); 0 for a single trial."""
    n = int(n_trials)
    if n < 1 or not (math.isfinite(sharpe_variance) and sharpe_variance >= 0):
        return math.nan
    if n == 1:
        return 0.0
    z = (1.0 - EULER_GAMMA) * norm.ppf(1.0 - 1.0 / n) + EULER_GAMMA * norm.ppf(1.0 - 1.0 / (n * math.e))
    return float(math.sqrt(sharpe_variance) * z)


def deflated_sharpe_ratio(returns: np.ndarray, trial_sharpes: np.ndarray) -> float:
    """DSR (Bailey & López de Prado 2014): PSR of the chosen ``returns`` against SR0.

    ``trial_sharpes``: the PER-BAR Sharpe ratios of all N trials tried (the chosen one included);
    their variance (ddof = 1) is V[SR_n].
    """
    s = np.asarray(trial_sharpes, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if s.size == 0:
        return math.nan
    var = float(s.var(ddof=1)) if s.size > 1 else 0.0
    return probabilistic_sharpe_ratio(returns, expected_max_sharpe(s.size, var))


def probability_of_backtest_overfitting(trial_returns: np.ndarray, n_blocks: int = 16) -> dict:
    """PBO by CSCV (Bailey, Borwein, López de Prado & Zhu 2015) from a [T, N] matrix of N trials.

    The T rows are cut into ``n_blocks`` = S equal consecutive blocks (the first T mod S rows are
    dropped). For each of the C(S, S/2) ways to pick S/2 blocks as in-sample (IS; the rest is
    out-of-sample, OOS): n* = the trial with the best IS per-bar Sharpe, ω = its OOS rank among the
    N trials (1 = worst, ties averaged) divided by N + 1, logit λ = ln(ω / (1 − ω)).
    PBO = share of splits with λ ≤ 0 (the IS-best trial is at or below the OOS median).

    Returns: {"pbo", "logits" (one per split), "n_splits", "n_trials", "n_blocks"}.

    Raises:
        ValueError: S odd or < 2, fewer than 2 trials, or fewer than 2 bars per block.
    """
    m = np.asarray(trial_returns, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError(f"PBO needs a [T, N] matrix with N ≥ 2 trials, got shape {m.shape}")
    s = int(n_blocks)
    if s < 2 or s % 2:
        raise ValueError(f"PBO needs an even number of blocks ≥ 2, got {s}")
    t, n = m.shape
    size = t // s
    if size < 2:
        raise ValueError(f"PBO: {t} bars cannot make {s} blocks of at least 2 bars")
    blocks = m[t - size * s:].reshape(s, size, n)
    b_sum, b_sq = blocks.sum(axis=1), (blocks ** 2).sum(axis=1)  # [S, N]
    combos = np.array(list(itertools.combinations(range(s), s // 2)))
    is_mask = np.zeros((len(combos), s))
    np.put_along_axis(is_mask, combos, 1.0, axis=1)
    count = size * s / 2

    def sharpe(mask: np.ndarray) -> np.ndarray:
        mean = mask @ b_sum / count
        var = np.maximum(mask @ b_sq / count - mean ** 2, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.sqrt(var) > STD_FLOOR, mean / np.sqrt(var), 0.0)

    sr_is, sr_oos = sharpe(is_mask), sharpe(1.0 - is_mask)
    best = np.argmax(sr_is, axis=1)
    rank = rankdata(sr_oos, axis=1)[np.arange(len(combos)), best]
    omega = rank / (n + 1.0)
    logits = np.log(omega / (1.0 - omega))
    return {"pbo": float(np.mean(logits <= 0)), "logits": logits, "n_splits": len(combos),
            "n_trials": int(n), "n_blocks": s}


def default_block_length(n_bars: int) -> float:
    """Mean block length L = T^(1/3) (at least 1), a common rule for the stationary bootstrap."""
    return max(1.0, float(n_bars) ** (1.0 / 3.0))


def stationary_bootstrap_indices(n_bars: int, n_resamples: int, mean_block: float,
                                 rng: np.random.Generator) -> np.ndarray:
    """[B, T] indices of the stationary bootstrap (Politis & Romano 1994).

    Each resample starts a new block at position 0 and, independently, at each later position
    with probability p = 1/L; a block starts at a uniform random bar and continues bar by bar,
    wrapping from the last bar to the first.
    """
    t = int(n_bars)
    p = 1.0 / max(float(mean_block), 1.0)
    new_block = rng.random((n_resamples, t)) < p
    new_block[:, 0] = True
    starts = rng.integers(0, t, size=(n_resamples, t))
    pos = np.arange(t)
    last_start = np.maximum.accumulate(np.where(new_block, pos, 0), axis=1)
    return (np.take_along_axis(starts, last_start, axis=1) + pos - last_start) % t


def _resample_stats(x: np.ndarray, bars_per_year: float) -> np.ndarray:
    """[B, 3] annualised Sharpe, annualised Sortino and max drawdown of each row of ``x`` [B, T].

    A row without a losing bar and with a positive mean has no downside to divide by: its Sortino
    is +inf (the limit as the losses shrink to 0), not undefined; only an all-zero row is NaN.
    """
    mean, std = x.mean(axis=1), x.std(axis=1)
    downside = np.sqrt(np.mean(np.minimum(x, 0.0) ** 2, axis=1))
    root_n = math.sqrt(bars_per_year)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = np.where(std > STD_FLOOR, mean / std * root_n, np.nan)
        no_loss = np.where(mean > 0.0, np.inf, np.nan)
        sortino = np.where(downside > STD_FLOOR, mean / downside * root_n, no_loss)
        equity = np.cumprod(1.0 + x, axis=1)
        peak = np.maximum(np.maximum.accumulate(equity, axis=1), 1.0)  # E_0 = 1 is a peak too
        mdd = np.max(1.0 - equity / peak, axis=1)
    return np.stack([sharpe, sortino, np.maximum(mdd, 0.0)], axis=1)


def percentiles(values: np.ndarray, q) -> tuple[float, ...]:
    """Linearly interpolated percentiles of the non-NaN ``values``, +inf included (type 7 of
    Hyndman & Fan 1996, "Sample Quantiles in Statistical Packages", Am. Stat. 50(4); NumPy's
    default): a percentile that interpolates toward a +inf order statistic is +inf, where
    ``np.quantile`` gives NaN (inf − inf). NaN when no value is left."""
    v = np.sort(np.asarray(values, np.float64)[~np.isnan(values)])
    if v.size == 0:
        return tuple(math.nan for _ in q)
    out = []
    for p in q:
        h = (v.size - 1) * float(p)
        lo, hi = int(math.floor(h)), int(math.ceil(h))
        w, a, b = h - lo, float(v[lo]), float(v[hi])
        out.append(a if w == 0.0 or a == b else (math.inf if math.isinf(b) else a + w * (b - a)))
    return tuple(out)


def bootstrap_intervals(returns: np.ndarray, bars_per_year: float, level: float = BOOTSTRAP_LEVEL,
                        n_resamples: int = BOOTSTRAP_RESAMPLES, mean_block: float | None = None,
                        seed: int = BOOTSTRAP_SEED) -> dict:
    """Percentile intervals (low, high) at ``level`` of Sharpe, Sortino (both annualised with
    ``bars_per_year``) and max drawdown, from ``n_resamples`` stationary-bootstrap resamples.

    ``mean_block`` defaults to T^(1/3); ``seed`` seeds a NumPy Generator, so the result repeats.
    Resamples where a statistic is undefined (NaN) are left out of its interval; (NaN, NaN) when
    fewer than ``MIN_BARS`` bars or no resample defines it. A resample without a losing bar has
    Sortino +inf and counts as the largest value: leaving it out (as tbjax once did) kept exactly
    the resamples that drew the losses and pulled both ends down, the upper most. So the upper end
    is +inf ("unbounded") when more than about (1 − level)/2 of the resamples miss every loss. A
    series with no losing bar at all has no Sortino, and its interval is (NaN, NaN). Also returns
    ``sortino_no_loss_share``, the share of resamples at +inf (NaN when the series has no loss).
    """
    r = np.asarray(returns, dtype=np.float64).ravel()
    keys = ("sharpe", "sortino", "max_drawdown")
    if r.size < MIN_BARS:
        return {**{k: (math.nan, math.nan) for k in keys}, "sortino_no_loss_share": math.nan}
    rng = np.random.default_rng(seed)
    block = default_block_length(r.size) if mean_block is None else float(mean_block)
    per_chunk = max(1, CHUNK_ELEMENTS // r.size)
    stats = []
    for lo in range(0, n_resamples, per_chunk):
        idx = stationary_bootstrap_indices(r.size, min(per_chunk, n_resamples - lo), block, rng)
        stats.append(_resample_stats(r[idx], bars_per_year))
    all_stats = np.concatenate(stats)
    has_loss = math.sqrt(np.mean(np.minimum(r, 0.0) ** 2)) > STD_FLOOR
    if not has_loss:  # no loss to resample: the series has no Sortino, nor does its interval
        all_stats[:, 1] = np.nan
    q = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    out = {k: percentiles(all_stats[:, j], q) for j, k in enumerate(keys)}
    out["sortino_no_loss_share"] = float(np.mean(np.isposinf(all_stats[:, 1]))) if has_loss else math.nan
    return out


def _prob(p: float, confidence: float) -> str:
    """p with 2 decimals, or 4 where rounding would put it on the other side of ``confidence``."""
    text = f"{p:.2f}"
    return text if (float(text) >= confidence) == (p >= confidence) else f"{p:.4f}"


def _reading(psr: float, psr_bh: float, mintrl: float, bars_per_year: float, confidence: float,
             n_active: int | None = None) -> str:
    """The one-sentence plain reading of ``is_it_real``."""
    pct = f"{100 * confidence:g} %"
    if not math.isfinite(psr):
        return f"PSR undefined (too few bars or no variation): cannot tell whether the Sharpe is real at {pct}."
    if psr >= confidence:
        head = f"PSR {_prob(psr, confidence)}: significant at {pct} (true Sharpe > 0)"
    elif math.isfinite(mintrl):
        head = (f"PSR {_prob(psr, confidence)}: not significant at {pct}, the Sharpe may be luck "
                f"(about {mintrl:,.0f} bars, {mintrl / bars_per_year:.2f} years, of such a record would be needed)")
    else:
        head = f"PSR {_prob(psr, confidence)}: not significant at {pct}, the Sharpe is not above 0"
    if math.isfinite(psr_bh):
        verdict = "beats" if psr_bh >= confidence else "does not reliably beat"
        head += (f"; paired test on the same bars, PSR {_prob(psr_bh, confidence)} that its mean return "
                 f"exceeds buy-and-hold's: {verdict} buy-and-hold")
    elif n_active is not None and n_active < MIN_ACTIVE_BARS:
        head += (f"; its return differs from buy-and-hold's on {n_active} bar{'' if n_active == 1 else 's'} only, "
                 "too few for a paired test: it is buy-and-hold")
    return head + "."


def is_it_real(returns: np.ndarray, bars_per_year: float, benchmark_returns: np.ndarray | None = None,
               confidence: float = CONFIDENCE, level: float = BOOTSTRAP_LEVEL,
               n_resamples: int = BOOTSTRAP_RESAMPLES, mean_block: float | None = None,
               seed: int = BOOTSTRAP_SEED) -> dict:
    """Whether a strategy's per-bar ``returns`` show a real edge, as one JSON-ready dict.

    Keys: ``n_bars``; ``sharpe`` (annualised) and ``sharpe_per_bar``, ``skew``, ``kurtosis``;
    ``psr`` = PSR(0); ``benchmark_sharpe`` (annualised Sharpe of ``benchmark_returns``, e.g.
    buy-and-hold on the same bars) and ``psr_vs_benchmark``, the PAIRED test: PSR(0) of the per-bar
    active return r_t − b_t (:func:`paired_edge`; the benchmark's own noise and its correlation
    with the strategy are in it, nothing is treated as known); ``min_track_record_bars`` /
    ``_years`` for PSR(0) ≥ ``confidence`` and ``min_track_record_bars_vs_benchmark`` (of the
    active return; NaN with fewer than MIN_ACTIVE_BARS material differences, whose count is
    ``active_bars_vs_benchmark``); ``significant`` (PSR(0) ≥ confidence);
    ``sharpe_ci``, ``sortino_ci``, ``max_drawdown_ci`` = [low, high] stationary-bootstrap
    intervals at ``level`` (a Sortino end may be +inf: unbounded) and ``sortino_no_loss_share``,
    the share of resamples without a losing bar; ``bootstrap`` (its settings); ``reading``, one
    plain sentence. NaN where undefined (no benchmark, too few bars, zero variance, no loss).
    """
    sr, skew, kurt, t = sharpe_moments(returns)
    sr_bh = sharpe_moments(benchmark_returns)[0] if benchmark_returns is not None else math.nan
    paired = (np.size(benchmark_returns) == np.size(returns)) if benchmark_returns is not None else False
    active, n_active = (active_moments(active_return(returns, benchmark_returns)) if paired
                        else ((math.nan,) * 3 + (t,), None))
    psr0 = psr_from_moments(sr, skew, kurt, t, 0.0)
    psr_bh = psr_from_moments(*active, 0.0)
    mintrl = mintrl_from_moments(sr, skew, kurt, 0.0, confidence)
    block = default_block_length(t) if mean_block is None else float(mean_block)
    ci = bootstrap_intervals(returns, bars_per_year, level, n_resamples, block, seed)
    root_n = math.sqrt(bars_per_year)
    return {
        "n_bars": float(t), "confidence": confidence,
        "sharpe": sr * root_n, "sharpe_per_bar": sr, "skew": skew, "kurtosis": kurt,
        "psr": psr0, "benchmark_sharpe": sr_bh * root_n, "psr_vs_benchmark": psr_bh,
        "min_track_record_bars": mintrl, "min_track_record_years": mintrl / bars_per_year,
        "min_track_record_bars_vs_benchmark": mintrl_from_moments(*active[:3], 0.0, confidence),
        "active_bars_vs_benchmark": n_active,
        "significant": bool(math.isfinite(psr0) and psr0 >= confidence),
        "sharpe_ci": list(ci["sharpe"]), "sortino_ci": list(ci["sortino"]),
        "sortino_no_loss_share": ci["sortino_no_loss_share"], "max_drawdown_ci": list(ci["max_drawdown"]),
        "bootstrap": {"method": "stationary (Politis & Romano 1994), percentile", "level": level,
                      "n_resamples": n_resamples, "mean_block": block, "seed": seed},
        "reading": _reading(psr0, psr_bh, mintrl, bars_per_year, confidence, n_active),
    }


def paired_edge(strategy: np.ndarray, benchmark: np.ndarray) -> dict:
    """Is the strategy better than a benchmark traded over the SAME bars? A paired test.

    The active return a_t = r_t − b_t (per bar, the same timestamps) carries both series' noise
    and their correlation, so its PSR against 0 (Bailey & López de Prado 2012, with a_t's own skew
    and kurtosis) is the probability that the strategy's true mean return exceeds the benchmark's:
    unlike comparing two Sharpe ratios, nothing about the benchmark is treated as known. A
    strategy identical to its benchmark, or different on fewer than MIN_ACTIVE_BARS bars
    (:func:`active_moments`), has no testable active return (PSR NaN: no evidence of an edge).

    Returns {"psr", "active_sharpe" (per bar), "active_skew", "active_kurtosis", "mean_active_return"
    (per bar), "n_bars", "active_bars"}: the moments let a caller take the PSR against another
    threshold (the deflated deployment test, tbjax.evaluation.deployment).
    """
    a = active_return(strategy, benchmark)
    (sr, skew, kurt, t), n_active = active_moments(a)
    return {"psr": psr_from_moments(sr, skew, kurt, t, 0.0), "active_sharpe": sr, "active_skew": skew,
            "active_kurtosis": kurt, "mean_active_return": float(a.mean()) if a.size else math.nan, "n_bars": int(a.size),
            "active_bars": n_active}
