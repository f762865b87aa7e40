"""PBO by CSCV with each configuration's own checkpoint pick replayed in every split
(tbjax.evaluation.cscv), against a brute-force reference on the raw returns and the paper's CSCV."""

import itertools

import numpy as np
import pytest
from scipy.stats import rankdata

from tbjax.evaluation.cscv import block_moments, candidate_sharpe, nested_pbo
from tbjax.evaluation.significance import probability_of_backtest_overfitting


def _sharpe(x):
    sd = x.std()
    return 0.0 if sd <= 1e-12 else x.mean() / sd


def reference_nested_pbo(returns: np.ndarray, s: int) -> float:
    """Brute force on raw returns [T, N configurations, E candidates each]."""
    t, n, e = returns.shape
    size = t // s
    r = returns[t - size * s:].reshape(s, size, n, e)
    below = []
    for is_blocks in itertools.combinations(range(s), s // 2):
        oos_blocks = [b for b in range(s) if b not in is_blocks]
        ins, outs = r[list(is_blocks)].reshape(-1, n, e), r[oos_blocks].reshape(-1, n, e)
        picks = [int(np.argmax([_sharpe(ins[:, k, c]) for c in range(e)])) for k in range(n)]
        is_sr = [_sharpe(ins[:, k, picks[k]]) for k in range(n)]
        oos_sr = [_sharpe(outs[:, k, picks[k]]) for k in range(n)]
        best = int(np.argmax(is_sr))
        omega = rankdata(oos_sr)[best] / (n + 1)
        below.append(np.log(omega / (1 - omega)) <= 0)
    return float(np.mean(below))


def _as_blocks(returns: np.ndarray, s: int):
    t, n, e = returns.shape
    moments = [block_moments(returns[:, k, c], s) for k in range(n) for c in range(e)]
    owner = [k for k in range(n) for _ in range(e)]
    return (np.array([m["block_sum"] for m in moments]).T, np.array([m["block_sumsq"] for m in moments]).T,
            moments[0]["block_size"], owner)


def test_block_moments_by_hand():
    m = block_moments([9.0, 1.0, 2.0, 3.0, 4.0], 2)  # T mod S = 1 bar dropped from the front, for the blocks
    assert m == {"n": 5, "sum": 19.0, "sumsq": 111.0, "block_size": 2, "block_sum": [3.0, 7.0],
                 "block_sumsq": [5.0, 25.0]}
    r = np.array([0.01, -0.02, 0.03, 0.0, 0.005])
    assert candidate_sharpe(block_moments(r, 2)) == pytest.approx(r.mean() / r.std())
    assert candidate_sharpe(block_moments(np.zeros(40), 4)) == 0.0  # flat: Sharpe 0, one rule with PBO


def test_nested_pbo_equals_a_brute_force_reference():
    rng = np.random.default_rng(3)
    returns = rng.normal(0.0, 0.01, (96, 5, 3)) + rng.normal(0, 0.002, (1, 5, 3))
    assert nested_pbo(*_as_blocks(returns, 6))["pbo"] == pytest.approx(reference_nested_pbo(returns, 6))


def test_one_candidate_each_is_the_papers_cscv():
    rng = np.random.default_rng(4)
    m = rng.normal(0.0, 0.01, (480, 7))
    nested = nested_pbo(*_as_blocks(m[:, :, None], 8))
    plain = probability_of_backtest_overfitting(m, 8)
    assert nested["pbo"] == pytest.approx(plain["pbo"]) and np.allclose(nested["logits"], plain["logits"])
    assert nested["n_configurations"] == 7 and nested["n_candidates"] == 7


def test_picking_checkpoints_on_the_whole_window_biases_pbo_and_replaying_the_pick_does_not():
    """Zero-skill configurations with 8 checkpoints each: PBO's fair value for noise is 0.5. Storing
    only each trial's whole-window best checkpoint lets the in-trial pick see the out-of-sample
    halves: a trial whose in-sample half carried its whole-window lead has, by that pick, a weaker
    out-of-sample half, so the in-sample best lands low out of sample too often (PBO reads high for
    noise; with skill the bias can go either way). Replaying the pick inside each split removes it."""
    rng = np.random.default_rng(5)
    fair, leaked = [], []
    for _ in range(24):
        returns = rng.normal(0.0, 0.01, (320, 6, 8))
        fair.append(nested_pbo(*_as_blocks(returns, 8))["pbo"])
        whole = np.argmax([[_sharpe(returns[:, k, c]) for c in range(8)] for k in range(6)], axis=1)
        chosen = np.stack([returns[:, k, whole[k]] for k in range(6)], axis=1)
        leaked.append(probability_of_backtest_overfitting(chosen, 8)["pbo"])
    assert 0.4 <= np.mean(fair) <= 0.6
    assert np.mean(leaked) > np.mean(fair) + 0.1
