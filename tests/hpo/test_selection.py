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


def _frozen(number, state, returns=None, candidates=None, **attrs):
    import optuna

    user = dict(attrs.pop("user", {}))
    if returns is not None:
        user["val_returns"] = list(map(float, returns))
    if candidates is not None:
        user["val_candidates"] = candidates
    t = optuna.trial.create_trial(state=state, value=0.0 if state == optuna.trial.TrialState.COMPLETE else None,
                                  user_attrs=user, system_attrs=attrs.pop("system", {}))
    t.number = number
    return t


def test_every_look_counts_once_and_one_column_per_configuration():
    """DSR's N = every evaluation of every evaluated trial + the configurations that failed before
    one; a retried trial is its retry; surplus and infeasible trials were never configurations.
    Checked against an independent computation from the raw candidate returns."""
    from optuna.trial import TrialState

    from tbjax.evaluation.cscv import block_moments
    from tbjax.evaluation.significance import expected_max_sharpe, probabilistic_sharpe_ratio
    from tbjax.hpo.liveness import SURPLUS_ATTR
    from tbjax.hpo.selection import INFEASIBLE_ATTR, PBO_BLOCKS, study_selection_bias

    rng = np.random.default_rng(1)
    raw = {n: [rng.normal(0.0005 * n, 0.01, 320) for _ in range(3)] for n in range(4)}  # 3 evaluations each
    raw[3][1] = np.zeros(320)  # one flat checkpoint: Sharpe 0, counted like any other
    best_eval = {0: 0, 1: 2, 2: 1, 3: 0}
    cands = {n: [{"update": 10 * (i + 1), **block_moments(r, PBO_BLOCKS)} for i, r in enumerate(raw[n])]
             for n in raw}
    trials = [_frozen(n, TrialState.COMPLETE if n != 2 else TrialState.PRUNED, raw[n][best_eval[n]], cands[n])
              for n in range(4)]
    trials += [
        _frozen(4, TrialState.FAIL, raw[0][0], cands[0]),  # killed between storing returns and tell...
        _frozen(5, TrialState.COMPLETE, raw[0][0], cands[0], system={"retry_history": [4], "failed_trial": 4}),
        _frozen(6, TrialState.FAIL, user={"fail_reason": "RuntimeError: out of memory"}),  # tried, never evaluated
        _frozen(7, TrialState.PRUNED, user={"pruned_reason": "non-finite update"}),  # diverged before an objective
        _frozen(8, TrialState.FAIL, user={SURPLUS_ATTR: True}),
        _frozen(9, TrialState.FAIL, user={INFEASIBLE_ATTR: True}),
    ]
    out = study_selection_bias(trials, best_trial=1)
    assert out["n_trials"] == 5 and out["n_candidates"] == 15 and out["unevaluated"] == [6, 7]
    assert out["dsr_n"] == 17  # 5 configurations x 3 evaluations + 2 that failed first

    every = [r for n in (0, 1, 2, 3, 0) for r in raw[n]]
    sharpes = np.array([0.0 if r.std() == 0 else r.mean() / r.std() for r in every])
    expected = probabilistic_sharpe_ratio(raw[1][2], expected_max_sharpe(17, sharpes.var(ddof=1)))
    assert out["dsr"] == pytest.approx(expected, rel=1e-9)
    assert "17 candidates: 15 evaluations of 5 trials and 2 configurations" in out["reading"]
    assert out["pbo"] is not None and 0.0 <= out["pbo"] <= 1.0  # its maths: tests/evaluation/test_cscv.py
