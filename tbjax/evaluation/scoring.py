"""Scoring a policy with a run's settings: the split backtest, the regime markets, the objective.

The ONE way every caller scores a policy on the run's data (training's validation, HPO trials,
walk-forward folds, ``tbjax.evaluate``, the deployment test): frozen observation statistics, the
config's determinism and evaluation key (:func:`eval_key`), bars pooled across symbols by their
open TIME, and the regime objective (:mod:`tbjax.evaluation.objective`) of the val Sortino and the
synthetic :data:`REGIME_MARKETS`.

``exp`` below is the run's data, a :class:`tbjax.run.experiment.Experiment` (read: its ``cfg``,
``market``, ``bars_per_year``, ``tables`` and ``regimes``); HPO passes a per-trial copy of it.
"""

from __future__ import annotations

import numpy as np

from tbjax.config import Config
from tbjax.data.market import MarketData, ROLE_VAL

# the regime objective's synthetic markets: {objective weight's name: symbol} (built by
# tbjax.run.experiment.regime_market, scored by regime_sortinos)
REGIME_MARKETS = {"choppy": "CHOPPY_FLAT", "trend": "STRONG_TREND"}


def eval_key(cfg: Config, role: int):
    """PRNG key of a stochastic evaluation (``eval.deterministic: false``) of ``role``.

    Derived from ``train.seed`` and the role only, so training, HPO, ``tbjax.evaluate`` and the
    report draw the same actions for the same checkpoint: a stochastic evaluation is seeded and
    reproducible.
    """
    import jax

    return jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), 1000 + int(role))


def backtest_as_configured(cfg: Config, market: MarketData, bars_per_year: float, policy_apply, params, obs_stats,
                           env_params, role: int, time_ms=None, stream: int | None = None, significance: bool = True,
                           n_steps: int | None = None, position0=None):
    """Backtest ``role`` of ``market`` with FROZEN statistics and the config's determinism and key.

    ``stream`` picks the stochastic-evaluation key (default: the role); every evaluation of a run
    (its splits, the regime markets, walk-forward folds) goes through here. ``n_steps``: the walk's
    scan length and ``position0`` the positions held before the first decision
    (:func:`tbjax.evaluation.backtest.backtest`).
    """
    from tbjax.evaluation.backtest import backtest

    det = cfg.eval.deterministic
    key = None if det else eval_key(cfg, role if stream is None else stream)
    return backtest(policy_apply, params, obs_stats, market, env_params, role, bars_per_year, time_ms=time_ms,
                    deterministic=det, key=key, significance=significance, n_steps=n_steps,
                    position0=position0)


def bar_times(tables: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Bar open times (ms) per symbol: what evaluation pools symbols by."""
    return {s: np.asarray(t["open_time"], np.int64) for s, t in tables.items()}


def evaluate_split(exp, policy_apply, params, obs_stats, env_params, role: int = ROLE_VAL):
    """Backtest one split of the run's data with FROZEN statistics: (eval dict, report series).

    The one definition every caller uses (training's validation, HPO trials, ``tbjax.evaluate``):
    bars are pooled across symbols by their open TIME, with the config's determinism and key.
    """
    return backtest_as_configured(exp.cfg, exp.market, exp.bars_per_year, policy_apply, params, obs_stats,
                                  env_params, role, time_ms=bar_times(exp.tables))


def regime_sortinos(cfg: Config, regimes: MarketData | None, bars_per_year: float, policy_apply, params, obs_stats,
                    env_params) -> dict[str, float]:
    """Sortino of the policy on the synthetic CHOPPY_FLAT and STRONG_TREND markets ({} without them).

    Only the Sortinos are read, so the backtest skips its significance statistics.
    """
    if regimes is None:
        return {}
    res, _ = backtest_as_configured(cfg, regimes, bars_per_year, policy_apply, params, obs_stats, env_params,
                                    ROLE_VAL, stream=-1, significance=False)
    return {key: res["per_symbol"][name]["sortino"] for key, name in REGIME_MARKETS.items()}


def objective_of(cfg: Config, split_sortino: float, regime_sortino: dict[str, float]) -> float:
    """The regime objective from a split's pooled Sortino and the regime markets' Sortinos."""
    from tbjax.evaluation.objective import regime_objective

    e = cfg.eval
    return regime_objective(split_sortino, regime_sortino.get("choppy", 0.0), regime_sortino.get("trend", 0.0),
                            e.w_val, e.w_choppy, e.w_trend)


def evaluate_with_objective(exp, policy_apply, params, obs_stats, env_params, role: int = ROLE_VAL):
    """Backtest ``role`` of the run's data with frozen statistics, plus the regime objective.

    Returns (objective, eval dict with "objective" and "regime_sortino", report series). Built
    from :func:`evaluate_split`, :func:`regime_sortinos` and :func:`objective_of`, the pieces HPO
    calls separately (it backtests val at every report and the regime markets less often).
    """
    result, series = evaluate_split(exp, policy_apply, params, obs_stats, env_params, role)
    regime_sortino = regime_sortinos(exp.cfg, exp.regimes, exp.bars_per_year, policy_apply, params, obs_stats,
                                     env_params)
    value = objective_of(exp.cfg, result["pooled"]["sortino"], regime_sortino)
    result["objective"] = value
    result["regime_sortino"] = regime_sortino
    e = exp.cfg.eval
    result["objective_weights"] = {"w_val": e.w_val, "w_choppy": e.w_choppy, "w_trend": e.w_trend}
    return value, result, series
