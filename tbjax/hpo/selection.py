"""Selection bias of a study: how much of the best trial's validation result the search explains.

Picking the best of N trials inflates its Sharpe even when no trial has skill. Two statistics of
tbjax/evaluation/significance.py answer it from what every finished trial stored (its best
checkpoint's pooled per-bar validation returns, user attr ``val_returns``; all trials walk the
same validation bars):

* the Deflated Sharpe Ratio of the best trial (Bailey & López de Prado 2014): PSR of its
  validation returns against the Sharpe the best of N zero-skill trials would show;
* the Probability of Backtest Overfitting by CSCV (Bailey, Borwein, López de Prado & Zhu 2015)
  over the trials' return matrix: how often the in-sample best trial is below the median out of
  sample.
"""

from __future__ import annotations

import math

import numpy as np

from tbjax.evaluation.significance import (CONFIDENCE, deflated_sharpe_ratio, probability_of_backtest_overfitting,
                                          sharpe_moments)

PBO_BLOCKS = 16  # CSCV blocks: C(16, 8) = 12,870 splits


def selection_bias(trial_returns: dict[int, list[float]], best_trial: int | None) -> dict:
    """DSR of ``best_trial`` and PBO over all trials (trial number -> pooled val returns).

    Trials whose series length differs from the majority's (another data set) are left out and
    counted. Undefined statistics are None with the reason.
    """
    lengths = [len(r) for r in trial_returns.values()]
    if not lengths:
        return {"n_trials": 0, "dsr": None, "pbo": None, "reading": "no finished trial stored its returns"}
    common = max(set(lengths), key=lengths.count)
    kept = {n: np.asarray(r, np.float64) for n, r in trial_returns.items() if len(r) == common}
    out = {"n_trials": len(kept), "n_bars": common, "excluded": sorted(set(trial_returns) - set(kept)),
           "dsr": None, "pbo": None, "pbo_blocks": PBO_BLOCKS}
    if best_trial in kept:
        dsr = deflated_sharpe_ratio(kept[best_trial], [sharpe_moments(r)[0] for r in kept.values()])
        out["dsr"] = dsr if math.isfinite(dsr) else None
    if len(kept) >= 2 and common >= 2 * PBO_BLOCKS:
        out["pbo"] = probability_of_backtest_overfitting(np.stack(list(kept.values()), axis=1), PBO_BLOCKS)["pbo"]
    out["reading"] = _reading(out)
    return out


def _reading(out: dict) -> str:
    parts = []
    if out["dsr"] is not None:
        verdict = "significant" if out["dsr"] >= CONFIDENCE else "not significant"
        parts.append(f"DSR {out['dsr']:.2f} over {out['n_trials']} trials: the best trial's validation Sharpe "
                     f"is {verdict} at {CONFIDENCE:.0%} once the search is accounted for")
    if out["pbo"] is not None:
        parts.append(f"PBO {out['pbo']:.2f}: the in-sample best trial falls below the median out of sample in "
                     f"{out['pbo']:.0%} of CSCV splits")
    return "; ".join(parts) if parts else "too few trials or bars for DSR / PBO"
