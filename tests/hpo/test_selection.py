"""The study's selection-bias statistics from stored per-trial validation returns."""

import numpy as np
import pytest

from tbjax.evaluation.significance import deflated_sharpe_ratio, probability_of_backtest_overfitting
from tbjax.hpo.selection import selection_bias


def test_dsr_of_the_best_and_pbo_over_the_trials_of_one_length():
    rng = np.random.default_rng(0)
    trials = {n: rng.normal(0.0, 0.01, 400).tolist() for n in range(6)}
    trials[6] = rng.normal(0.0, 0.01, 250).tolist()  # another data set: left out, and said so
    out = selection_bias(trials, best_trial=3)
    kept = [np.asarray(trials[n]) for n in range(6)]
    assert out["n_trials"] == 6 and out["n_bars"] == 400 and out["excluded"] == [6]
    assert out["dsr"] == pytest.approx(deflated_sharpe_ratio(kept[3], [r.mean() / r.std() for r in kept]))
    assert out["pbo"] == pytest.approx(probability_of_backtest_overfitting(np.stack(kept, axis=1), 16)["pbo"])
    # six zero-skill trials: the best one's validation Sharpe is not significant once deflated
    assert out["dsr"] < 0.95 and "not significant" in out["reading"]


def test_one_trial_has_no_pbo_and_nothing_stored_says_so():
    out = selection_bias({0: list(np.linspace(-0.01, 0.012, 100))}, best_trial=0)
    assert out["pbo"] is None and out["dsr"] is not None
    assert selection_bias({}, None)["reading"] == "no finished trial stored its returns"
