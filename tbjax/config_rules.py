"""Config rules: ranges and cross-field checks of a loaded :class:`tbjax.config.Config`.

Each rule raises one :class:`~tbjax.errors.InputError` naming the key a user writes and what to
change. Rules that need the data (walk-forward plans, split dates) run where the data is read
(:mod:`tbjax.run.folds`, :mod:`tbjax.data.splits`).
"""

from __future__ import annotations

import math

from tbjax.errors import InputError

SLOWEST_INDICATOR_WINDOW = 26  # MACD slow EMA; tbjax.data.features.SLOWEST_WINDOW must agree

def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _validate_walkforward(w) -> None:  # fit to the data: tbjax.run.folds
    _check(w.folds >= 1, f"walkforward.folds must be >= 1, got {w.folds}")
    _check(w.train_mode in ("expanding", "rolling"), f"walkforward.train_mode must be 'expanding' or 'rolling', got '{w.train_mode}'")
    for n in ("train_bars", "val_bars", "test_bars", "step_bars", "embargo_bars"):  # durations: tbjax.run.folds
        v, least = getattr(w, n), int(n != "embargo_bars")
        _check(v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool) and v >= least),
               f"walkforward.{n} must be null, a number of bars >= {least} or a duration like '90d', got {v!r}")


def _validate_ppo(p) -> None:
    for name in ("n_envs", "n_steps", "n_epochs", "n_minibatches", "num_quantiles", "rnn_size"):
        _check(getattr(p, name) >= 1, f"ppo.{name} must be >= 1, got {getattr(p, name)}")
    _check(p.policy in ("mlp", "gru", "lstm"), f"ppo.policy must be 'mlp', 'gru' or 'lstm', got '{p.policy}'")
    _check(p.policy == "mlp" or p.n_envs % p.n_minibatches == 0, f"ppo.n_minibatches = {p.n_minibatches} must divide "
           f"ppo.n_envs = {p.n_envs} for a recurrent policy (minibatches are whole env sequences)")
    _check(p.bar_features >= 0, f"ppo.bar_features must be 0 (flat window) or a positive number of codes "
           f"per bar, got {p.bar_features}")
    _check(len(p.hidden_sizes) >= 1 and all(h >= 1 for h in p.hidden_sizes),
           f"ppo.hidden_sizes must be a non-empty list of positive widths, got {p.hidden_sizes}")
    _check((p.n_steps * p.n_envs) % p.n_minibatches == 0,
           f"ppo.n_steps * ppo.n_envs = {p.n_steps * p.n_envs} is not divisible by ppo.n_minibatches = "
           f"{p.n_minibatches}: choose n_minibatches dividing {p.n_steps * p.n_envs} (e.g. a power of two)")
    _check(p.learning_rate > 0, f"ppo.learning_rate must be > 0, got {p.learning_rate}")
    _check(0 <= p.lr_min <= p.learning_rate, f"ppo.lr_min must lie in [0, learning_rate], got {p.lr_min}")
    _check(p.lr_schedule in ("constant", "linear"), f"ppo.lr_schedule must be 'constant' or 'linear', got '{p.lr_schedule}'")
    _check(0 < p.gamma <= 1, f"ppo.gamma must lie in (0, 1], got {p.gamma}")
    _check(0 <= p.gae_lambda <= 1, f"ppo.gae_lambda must lie in [0, 1], got {p.gae_lambda}")
    _check(0 < p.clip_eps < 1, f"ppo.clip_eps must lie in (0, 1), got {p.clip_eps}")
    _check(p.ent_coef >= 0 and p.vf_coef >= 0, "ppo.ent_coef and ppo.vf_coef must be >= 0")
    _check(p.max_grad_norm > 0, f"ppo.max_grad_norm must be > 0, got {p.max_grad_norm}")
    _check(0 < p.cvar_alpha < 1, f"ppo.cvar_alpha must lie in (0, 1), got {p.cvar_alpha}")
    _check(p.cvar_weight >= 0, f"ppo.cvar_weight must be >= 0, got {p.cvar_weight}")
    # With N quantiles the critic's tail has mass 1/N per quantile: below alpha = 1/N both VaR and
    # CVaR are the lowest quantile, so alpha would only rescale ppo.cvar_weight (docs/ALGORITHMS.md).
    _check(p.cvar_weight == 0 or p.cvar_alpha >= 1.0 / p.num_quantiles,
           f"ppo.cvar_alpha = {p.cvar_alpha} is below 1/ppo.num_quantiles = 1/{p.num_quantiles} = "
           f"{1.0 / p.num_quantiles:.4g}: the critic cannot resolve a thinner tail (VaR and CVaR would both be "
           f"its lowest quantile); raise ppo.cvar_alpha to >= {1.0 / p.num_quantiles:.4g} or ppo.num_quantiles "
           f"to >= {math.ceil(1.0 / p.cvar_alpha)}")
    _check(0 < p.popart_beta <= 1, f"ppo.popart_beta must lie in (0, 1], got {p.popart_beta}")
    _check(p.weight_decay >= 0, f"ppo.weight_decay must be >= 0 (0 = plain Adam), got {p.weight_decay}")
    _check(p.huber_kappa > 0 and p.obs_clip > 0, "ppo.huber_kappa and ppo.obs_clip must be > 0")


def validate(cfg) -> None:
    """Ranges and cross-field rules, each with a message that says what to change."""
    e, t, ev = cfg.env, cfg.train, cfg.eval
    _validate_ppo(cfg.ppo)

    _check(e.window_size >= SLOWEST_INDICATOR_WINDOW,
           f"env.window_size = {e.window_size} is below the slowest indicator window "
           f"({SLOWEST_INDICATOR_WINDOW} bars, MACD's slow EMA): set env.window_size >= {SLOWEST_INDICATOR_WINDOW}")
    _check(e.episode_len >= 1, f"env.episode_len must be >= 1, got {e.episode_len}")
    _check(e.action_mode in ("discrete", "continuous"), f"env.action_mode must be 'discrete' or 'continuous', got '{e.action_mode}'")
    levels = e.position_levels
    _check(len(levels) >= 2 and all(math.isfinite(v) for v in levels) and list(levels) == sorted(set(levels)),
           f"env.position_levels must be at least two finite, sorted, distinct target positions, got {levels}")
    _check(e.min_position < e.max_position, f"env.min_position must be < env.max_position, got {e.min_position} >= {e.max_position}")
    _check(e.symbol_sampling in ("uniform", "length"), f"env.symbol_sampling must be 'uniform' or 'length', got '{e.symbol_sampling}'")
    for name in ("fee_bps", "half_spread_bps", "slippage_k", "impact_coef", "borrow_bps_per_bar", "turnover_penalty"):
        _check(getattr(e, name) >= 0, f"env.{name} must be >= 0, got {getattr(e, name)}")
    _check(0 <= e.equity_floor < 1, f"env.equity_floor must lie in [0, 1) (a fraction of starting equity), got {e.equity_floor}")
    _check(e.capital > 0, f"env.capital must be > 0, got {e.capital}")

    _check(t.total_env_steps >= 1 and t.updates_per_chunk >= 1 and t.eval_every >= 1,
           "train.total_env_steps, train.updates_per_chunk and train.eval_every must be >= 1")
    _check(t.population >= 1, f"train.population must be >= 1, got {t.population}")
    _check(t.ensemble_top_k is None or 1 <= t.ensemble_top_k <= t.population,
           f"train.ensemble_top_k must be null or in [1, train.population = {t.population}], got {t.ensemble_top_k}")
    _check(t.population_jitter >= 0, f"train.population_jitter must be >= 0, got {t.population_jitter}")
    _check(t.precision in ("float32", "bfloat16"), f"train.precision must be 'float32' or 'bfloat16', got '{t.precision}'")
    _check(min(ev.w_val, ev.w_choppy, ev.w_trend) >= 0, "eval.w_val, eval.w_choppy and eval.w_trend must be >= 0")
    _check(ev.regime_bars >= 200, f"eval.regime_bars must be >= 200, got {ev.regime_bars}")
    _check(ev.baseline in ("auto", "flat", "buy_and_hold"),
           f"eval.baseline must be 'auto', 'flat' or 'buy_and_hold', got '{ev.baseline}'")
    _check(0 <= ev.edge_confidence <= 1, f"eval.edge_confidence must lie in [0, 1] (0: always deploy the agent; "
           f"0.95: only with 95 % confidence that it beats the baseline on val), got {ev.edge_confidence}")
    _check(t.patience >= 0, f"train.patience must be >= 0 (0 = never stop early), got {t.patience}")
    if cfg.data.embargo_bars is not None:
        _check(cfg.data.embargo_bars >= 0, f"data.embargo_bars must be >= 0, got {cfg.data.embargo_bars}")
    if cfg.data.bars_per_year is not None:
        _check(cfg.data.bars_per_year > 0, f"data.bars_per_year must be > 0, got {cfg.data.bars_per_year}")
    _validate_walkforward(cfg.walkforward)
    _check(cfg.hpo.batch >= 1 and cfg.hpo.n_trials >= 1, "hpo.batch and hpo.n_trials must be >= 1")
    _check(cfg.hpo.pruner in ("successive_halving", "median", "hyperband", "patient", "none"),
           f"hpo.pruner must be one of successive_halving, median, hyperband, patient, none; got '{cfg.hpo.pruner}'")
