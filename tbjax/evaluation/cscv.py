"""PBO over every look a selection took: configurations that each chose among their own checkpoints.

A hyperparameter search picks twice: each trial keeps its best evaluation (checkpoint) on the
validation bars, then the study keeps its best trial. The Probability of Backtest Overfitting by
combinatorially symmetric cross-validation (CSCV; Bailey, Borwein, López de Prado & Zhu 2015, "The
Probability of Backtest Overfitting", Journal of Computational Finance 20(4)) must replay BOTH picks
inside each split, or the in-trial pick — made on the whole window, out-of-sample half included —
leaks into the out-of-sample ranking and biases PBO (for zero-skill trials upward: 0.70 instead of
about 0.5 in tests/evaluation/test_cscv.py; with skill the sign can differ). Here, for each of the
C(S, S/2) splits:

1. each configuration n picks its candidate c_n with the best in-sample (IS) per-bar Sharpe;
2. n* = the configuration whose pick has the best IS Sharpe;
3. ω = the out-of-sample (OOS) rank of n*'s pick among the N configurations' picks (1 = worst,
   ties averaged) / (N + 1); λ = ln(ω / (1 − ω)); PBO = share of splits with λ ≤ 0.

With one candidate per configuration this is the paper's CSCV exactly
(``significance.probability_of_backtest_overfitting``; a test checks the two agree).

Only per-block sums and sums of squares enter a block Sharpe, so a candidate is stored as its
:func:`block_moments` (2 S + 3 numbers, not its T returns): cheap enough to keep for every
evaluation of every trial in the study's storage. One rule for a flat candidate (zero variance,
e.g. a policy that never trades): its Sharpe is 0, in PBO and in DSR alike.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.stats import rankdata

from tbjax.evaluation.metrics import STD_FLOOR


def block_moments(returns, n_blocks: int) -> dict:
    """Moments of one candidate's per-bar returns: over the whole series (``n``, ``sum``, ``sumsq``)
    and over ``n_blocks`` equal consecutive blocks (the first T mod S bars dropped, as CSCV does)."""
    r = np.asarray(returns, dtype=np.float64).ravel()
    t, s = r.size, int(n_blocks)
    size = t // s
    blocks = r[t - size * s:].reshape(s, size)
    return {"n": int(t), "sum": float(r.sum()), "sumsq": float((r ** 2).sum()), "block_size": int(size),
            "block_sum": blocks.sum(axis=1).tolist(), "block_sumsq": (blocks ** 2).sum(axis=1).tolist()}


def flat_as_zero(mean, var):
    """Per-bar Sharpe mean / std (population std); 0 where the std is at or below STD_FLOOR."""
    std = np.sqrt(np.maximum(var, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > STD_FLOOR, mean / std, 0.0)


def candidate_sharpe(m: dict) -> float:
    """Per-bar Sharpe of a candidate from its :func:`block_moments` (flat: 0)."""
    n = m["n"]
    if n < 1:
        return math.nan
    mean = m["sum"] / n
    return float(flat_as_zero(mean, m["sumsq"] / n - mean ** 2))


def nested_pbo(block_sum: np.ndarray, block_sumsq: np.ndarray, block_size: int, groups) -> dict:
    """PBO by CSCV where configuration ``groups[c]`` owns candidate column ``c`` (module docstring).

    ``block_sum`` / ``block_sumsq``: [S, C] per-block sums of the C candidates' returns, blocks of
    ``block_size`` bars. Returns {"pbo", "logits", "n_splits", "n_configurations", "n_candidates",
    "n_blocks"}.

    Raises:
        ValueError: S odd or < 2, blocks under 2 bars, or fewer than 2 configurations.
    """
    b_sum, b_sq = np.asarray(block_sum, np.float64), np.asarray(block_sumsq, np.float64)
    s, c = b_sum.shape
    if s < 2 or s % 2:
        raise ValueError(f"PBO needs an even number of blocks ≥ 2, got {s}")
    if block_size < 2:
        raise ValueError(f"PBO needs blocks of at least 2 bars, got {block_size}")
    labels, owner = np.unique(np.asarray(groups), return_inverse=True)
    if labels.size < 2:
        raise ValueError(f"PBO needs ≥ 2 configurations, got {labels.size}")
    combos = np.array(list(itertools.combinations(range(s), s // 2)))
    is_mask = np.zeros((len(combos), s))
    np.put_along_axis(is_mask, combos, 1.0, axis=1)
    count = block_size * s / 2

    def sharpe(mask):
        mean = mask @ b_sum / count
        return flat_as_zero(mean, mask @ b_sq / count - mean ** 2)

    sr_is, sr_oos = sharpe(is_mask), sharpe(1.0 - is_mask)  # [splits, C]
    rows = np.arange(len(combos))
    pick_is = np.empty((len(combos), labels.size))
    pick_oos = np.empty_like(pick_is)
    for g in range(labels.size):  # 1. each configuration's own in-sample pick
        cols = np.flatnonzero(owner == g)
        pick = cols[np.argmax(sr_is[:, cols], axis=1)]
        pick_is[:, g], pick_oos[:, g] = sr_is[rows, pick], sr_oos[rows, pick]
    best = np.argmax(pick_is, axis=1)  # 2. the study's pick
    rank = rankdata(pick_oos, axis=1)[rows, best]  # 3. where it lands out of sample
    omega = rank / (labels.size + 1.0)
    logits = np.log(omega / (1.0 - omega))
    return {"pbo": float(np.mean(logits <= 0)), "logits": logits, "n_splits": len(combos),
            "n_configurations": int(labels.size), "n_candidates": int(c), "n_blocks": s}
