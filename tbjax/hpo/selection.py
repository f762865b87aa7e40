"""Selection bias of a study: how much of the best trial's validation result the search explains.

Picking the best of many candidates inflates its Sharpe even when none has skill. A search picks
twice: each trial keeps its best evaluation (checkpoint) on the validation bars, then the study
keeps its best trial. Both statistics below count every candidate those picks looked at:

* the Deflated Sharpe Ratio of the best trial (Bailey & López de Prado 2014): PSR of its best
  checkpoint's validation returns against SR0, the Sharpe the best of N zero-skill candidates would
  show, with N = every evaluation of every trial that reached one (each trial's user attr
  ``val_candidates``, one record per objective evaluation) + every configuration that was run but
  never reached an objective (failed or diverged first); V[SR] over the evaluated candidates. Since
  a trial's checkpoints are correlated, N overstates the independent candidates: the deflation errs
  on the strict side.
* the Probability of Backtest Overfitting by CSCV (Bailey, Borwein, López de Prado & Zhu 2015) with
  each trial's own pick replayed inside every split (:mod:`tbjax.evaluation.cscv`).

One column per configuration: trials that ended COMPLETE or PRUNED. A trial failed while its
worker died (its stored returns are written seconds before it is told) and retried is the same
configuration as its retry, so only the retry counts; surplus trials (asked past ``n_trials``) and
infeasible ones (sampled values that break a config rule, never run) are not configurations tried.
A flat candidate (zero variance) has Sharpe 0 in DSR and PBO alike.
"""

from __future__ import annotations

import math

import numpy as np
from optuna.trial import TrialState

from tbjax.evaluation.cscv import block_moments, candidate_sharpe, nested_pbo
from tbjax.evaluation.metrics import pooled_returns
from tbjax.evaluation.significance import CONFIDENCE, expected_max_sharpe, probabilistic_sharpe_ratio
from tbjax.hpo.liveness import SURPLUS_ATTR, retries_of

PBO_BLOCKS = 16  # CSCV blocks: C(16, 8) = 12,870 splits
INFEASIBLE_ATTR = "infeasible"  # user attr of a trial whose sampled values broke a config rule


def val_candidate(update: int, val_series) -> dict:
    """The record a trial keeps for one objective evaluation: its update and the block moments of
    the pooled per-bar validation returns (what DSR and PBO need, 2·16 + 3 numbers)."""
    return {"update": int(update), **block_moments(pooled_returns(val_series), PBO_BLOCKS)}


def study_selection_bias(trials, best_trial: int | None) -> dict:
    """:func:`selection_bias` of a study's trials (Optuna FrozenTrials), by the rules above."""
    columns, candidates, unevaluated = _study_columns(trials)
    return selection_bias(columns, best_trial, candidates, unevaluated)


def front_selection_bias(trials, front: list[int], chosen: str) -> tuple[dict, dict[int, dict]]:
    """A multi-objective study's statistics (PBO and N; no best trial) and, for each Pareto-front
    member, its DSR against the study's N, with the study's PBO and a reading.

    A front member was chosen among the same candidates a best trial is, so the same N counts the
    looks; picking a front (several members) is a milder selection than picking one best, so the
    deflation errs on the strict side again. ``chosen`` says how (the report shows it).
    """
    columns, candidates, unevaluated = _study_columns(trials)
    study = selection_bias(columns, None, candidates, unevaluated)
    each = {}
    for n in front:
        own = {**selection_bias(columns, n, candidates, unevaluated, pbo=False), "pbo": study["pbo"], "chosen": chosen}
        if "dsr_n" in own:  # else no trial stored its returns: the reading says so
            own["reading"] = _reading(own, f"trial {n}'s")
        each[n] = own
    return study, each


def _study_columns(trials) -> tuple[dict, dict, list]:
    """(trial -> best-checkpoint val returns, trial -> val_candidates, unevaluated trials) by the rules above."""
    retried = set(retries_of(trials).values())
    columns, candidates, unevaluated = {}, {}, []
    for t in trials:
        if t.number in retried or t.user_attrs.get(SURPLUS_ATTR) or t.user_attrs.get(INFEASIBLE_ATTR):
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "val_returns" in t.user_attrs:
            columns[t.number] = t.user_attrs["val_returns"]
            if t.user_attrs.get("val_candidates"):
                candidates[t.number] = t.user_attrs["val_candidates"]
        elif t.state in (TrialState.FAIL, TrialState.PRUNED):
            unevaluated.append(t.number)
    return columns, candidates, unevaluated


def selection_bias(trial_returns: dict[int, list[float]], best_trial: int | None,
                   candidates: dict[int, list[dict]] | None = None, unevaluated: list[int] = (),
                   pbo: bool = True) -> dict:
    """DSR of ``best_trial`` and PBO over the configurations (trial number -> best-checkpoint val returns).

    ``candidates``: trial -> the :func:`val_candidate` records of every evaluation it chose among
    (a trial without is its best checkpoint alone); ``unevaluated``: configurations run that never
    reached an objective (in DSR's N only). Trials whose series length differs from the majority's
    (another data set) are left out and listed. Undefined statistics are None with the reason;
    ``pbo=False`` skips PBO (the CSCV pass, the costly part) for a caller that has it.
    """
    lengths = [len(r) for r in trial_returns.values()]
    if not lengths:
        return {"n_trials": 0, "dsr": None, "pbo": None, "reading": "no finished trial stored its returns"}
    common = max(set(lengths), key=lengths.count)
    looks = {n: (candidates or {}).get(n) or [block_moments(r, PBO_BLOCKS)] for n, r in trial_returns.items()}
    kept = {n: np.asarray(r, np.float64) for n, r in trial_returns.items()
            if len(r) == common and all(c["n"] == common for c in looks[n])}
    pool = [c for n in kept for c in looks[n]]
    out = {"n_trials": len(kept), "n_candidates": len(pool), "n_unevaluated": len(unevaluated),
           "unevaluated": sorted(unevaluated), "n_bars": common, "excluded": sorted(set(trial_returns) - set(kept)),
           "dsr": None, "pbo": None, "pbo_blocks": PBO_BLOCKS}
    out["dsr_n"] = out["n_candidates"] + out["n_unevaluated"]
    if best_trial in kept:
        sharpes = np.array([candidate_sharpe(c) for c in pool])
        var = float(sharpes.var(ddof=1)) if sharpes.size > 1 else 0.0
        dsr = probabilistic_sharpe_ratio(kept[best_trial], expected_max_sharpe(out["dsr_n"], var))
        out["dsr"] = dsr if math.isfinite(dsr) else None
    if pbo and len(kept) >= 2 and common >= 2 * PBO_BLOCKS:
        owner = [n for n in kept for _ in looks[n]]
        out["pbo"] = nested_pbo(np.array([c["block_sum"] for c in pool]).T, np.array([c["block_sumsq"] for c in pool]).T,
                                pool[0]["block_size"], owner)["pbo"]
    out["reading"] = _reading(out)
    return out


def _reading(out: dict, whose: str = "the best trial's") -> str:
    looks = (f"{out['dsr_n']} candidates: {out['n_candidates']} evaluations of {out['n_trials']} trials"
             + (f" and {out['n_unevaluated']} configurations that failed before any" if out["n_unevaluated"] else ""))
    parts = []
    if out["dsr"] is not None:
        verdict = "significant" if out["dsr"] >= CONFIDENCE else "not significant"
        parts.append(f"DSR {out['dsr']:.2f} over {looks}: {whose} validation Sharpe "
                     f"is {verdict} at {CONFIDENCE:.0%} once the search is accounted for")
    if out["pbo"] is not None:
        parts.append(f"PBO {out['pbo']:.2f}: the in-sample best trial (each trial picking its checkpoint in "
                     f"sample too) falls below the median out of sample in {out['pbo']:.0%} of CSCV splits")
    return "; ".join(parts) if parts else "too few trials or bars for DSR / PBO"
