"""Every rule on a setting's value, written once (docs/DESIGN.md, "Where each concept lives").

Two doors take settings and both judge them HERE, so a value is accepted or refused the same way
with the same message whichever door it comes through:

- :func:`validate` checks a loaded :class:`tbjax.config.Config` (``load_config``, every CLI, each
  HPO trial's config);
- the constructors that also take settings directly (tests, benchmarks, notebooks):
  :func:`tbjax.env.market.checked_env_params`, :func:`tbjax.agent.hparams.checked_hparams` (both
  reached through :func:`tbjax.run.assembly.make_env_params` / ``make_hparams`` with the config's
  defaults), :meth:`tbjax.agent.hparams.TrainerSpec.validate`,
  :func:`tbjax.agent.policy.check_action_mode`, :class:`tbjax.data.pipeline.FeaturePipeline`.

Layer 0 (it imports only :mod:`tbjax.errors`), so every layer may import it. Each rule raises one
:class:`~tbjax.errors.InputError` naming the key a user writes (``env.min_position``) and what to
change. Rules that need the data (walk-forward plans, split dates) run where the data is read
(:mod:`tbjax.walkforward.folds`, :mod:`tbjax.data.splits`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from tbjax.errors import InputError

ACTION_MODES = ("discrete", "continuous")
SYMBOL_SAMPLINGS = ("uniform", "length")
POLICIES = ("mlp", "gru", "lstm")  # mlp, or a core of tbjax.agent.recurrent.CELLS after the MLP encoder
LR_SCHEDULES = ("constant", "linear")
PRECISIONS = ("float32", "bfloat16")
BASELINES = ("auto", "flat", "buy_and_hold")  # positions: tbjax.evaluation.deployment.BASELINE_POSITION
PRUNERS = ("successive_halving", "median", "hyperband", "patient", "none")  # built by tbjax.hpo.study.make_pruner
TRAIN_MODES = ("expanding", "rolling")
# tbjax.frontier's Pareto measures: pooled metric keys (tbjax.evaluation.metrics); a tail measure is
# read as a loss (tbjax.evaluation.pareto.tail_loss: var_5 / cvar_5 negated)
FRONTIER_RETURN_METRICS = ("sortino", "sharpe", "total_return", "cagr", "calmar")
FRONTIER_TAIL_METRICS = ("cvar_5", "var_5", "max_drawdown", "volatility")
# hpo.objectives: what a trial can be scored on (its best checkpoint's val backtest; read by
# tbjax.hpo.objectives) and each one's natural direction. objective: the regime objective; cvar /
# var: the per-bar CVaR / VaR 5 % as a LOSS (minus cvar_5 / var_5); the others are pooled metrics.
HPO_OBJECTIVES = {"objective": "maximize", "sortino": "maximize", "sharpe": "maximize", "total_return": "maximize",
                  "cagr": "maximize", "calmar": "maximize", "cvar": "minimize", "var": "minimize",
                  "max_drawdown": "minimize", "volatility": "minimize", "turnover": "minimize"}
OBJECTIVE_DIRECTIONS = ("maximize", "minimize")
MAX_OBJECTIVES = 3  # Optuna's Pareto-front plot draws 2 or 3 objectives
# The longest lookback of any feature: the slow EMA span of MACD, which tbjax.data.features
# computes with THIS constant (defined here, the lowest layer that needs it, for env.window_size).
SLOWEST_INDICATOR_WINDOW = 26


@dataclass(frozen=True)
class Interval:
    """Where a float setting may lie; ``note`` explains the value to a user."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def __contains__(self, v: float) -> bool:
        return (self.low < v or (v == self.low and not self.low_open)) and (
            v < self.high or (v == self.high and not self.high_open))

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"be {'>' if self.low_open else '>='} {self.low:g}"
        return f"lie in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


_AT_LEAST_0, _ABOVE_0 = Interval(0.0), Interval(0.0, low_open=True)
# Traced learner floats (HParams). Where the old copies disagreed the stricter, config's, rule won:
# every run already went through it. learning_rate 0 or max_grad_norm 0 trains nothing; gamma 0
# leaves nothing to discount (a typo more likely than a choice); clip_eps 0 makes PPO's clipped
# ratio constant and >= 1 removes its lower clip; cvar_alpha 0 divides by zero
# (cvar_weight / cvar_alpha) and 1 is the mean, not a tail; popart_beta 0 freezes the statistics.
PPO_FLOATS = {
    "learning_rate": _ABOVE_0, "lr_min": _AT_LEAST_0, "gamma": Interval(0.0, 1.0, low_open=True),
    "gae_lambda": Interval(0.0, 1.0), "clip_eps": Interval(0.0, 1.0, True, True), "ent_coef": _AT_LEAST_0,
    "vf_coef": _AT_LEAST_0, "max_grad_norm": _ABOVE_0, "cvar_alpha": Interval(0.0, 1.0, True, True),
    "cvar_weight": _AT_LEAST_0, "popart_beta": Interval(0.0, 1.0, low_open=True),
    "weight_decay": Interval(0.0, note=" (0 = plain Adam)"), "obs_noise": Interval(0.0, note=" (0 = off)"),
    "obs_scale": Interval(0.0, note=" (0 = off)"), "mirror": Interval(0.0, 1.0, note=" (a probability; 0 = off)"),
    "huber_kappa": _ABOVE_0, "obs_clip": _ABOVE_0,
}
# The market's and the account's env.* floats. Reward-shaping weights (env.* keys declared
# shaping=True) are not listed: they share ONE rule, SHAPING_WEIGHT (>= 0: the reward subtracts
# weight x quantity, tbjax.env.costs.shaping_penalty; a negative weight would pay the agent for it),
# so a new shaping term needs no rule of its own.
ENV_FLOATS = {
    **{k: _AT_LEAST_0 for k in ("fee_bps", "half_spread_bps", "slippage_k", "impact_coef", "borrow_bps_per_bar")},
    "min_position": Interval(), "max_position": Interval(),
    "equity_floor": Interval(0.0, 1.0, high_open=True, note=" (a fraction of starting equity)"),
    "capital": Interval(0.0, low_open=True, note=" (account size in quote currency)"),
}
SHAPING_WEIGHT = _AT_LEAST_0
FEATURE_FLOATS = {"std_floor": _ABOVE_0, "clip": _ABOVE_0}
PPO_COUNTS = ("n_envs", "n_steps", "n_epochs", "n_minibatches", "num_quantiles", "rnn_size")


def check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def is_number(value: Any) -> bool:
    """A host scalar; arrays (stacked HPO trials, traced values) are the caller's to check."""
    return isinstance(value, Real) and not isinstance(value, bool)


def check_choice(key: str, value: Any, choices: tuple) -> None:
    check(value in choices, f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_count(key: str, value: Any, least: int = 1) -> None:
    check(isinstance(value, Integral) and not isinstance(value, bool) and value >= least,
          f"{key} must be an integer >= {least}, got {value!r}")


def check_float(key: str, value: Any, interval: Interval) -> None:
    check(is_number(value) and math.isfinite(value), f"{key} must be a finite number, got {value!r}")
    check(value in interval, f"{key} must {interval}{interval.note}, got {value}")


def check_floats(section: str, values: Mapping[str, Any], rules: Mapping[str, Interval]) -> None:
    """Every value of ``values`` that ``rules`` names (``section.name`` in messages), except None and
    device arrays (stacked HPO trials, traced values: their caller checks the host values)."""
    for name, interval in rules.items():
        value = values.get(name)
        if value is not None and (is_number(value) or not hasattr(value, "shape")):
            check_float(f"{section}.{name}", value, interval)


def shaping_weights(env_section) -> tuple[str, ...]:
    """The reward-shaping weights of an env section (fields declared ``shaping=True`` in tbjax/config.py),
    read from the dataclass it is, so this layer-0 module needs no import of the config."""
    return tuple(f.name for f in dataclasses.fields(env_section) if f.metadata.get("shaping"))


def check_shaping(values: Mapping[str, Any]) -> None:
    """Every reward-shaping weight of ``values`` by the one rule :data:`SHAPING_WEIGHT`."""
    check_floats("env", values, {name: SHAPING_WEIGHT for name in values})


def check_learning_rates(learning_rate: Any, lr_min: Any) -> None:
    """The linear schedule runs from ppo.learning_rate down to ppo.lr_min, never up."""
    if is_number(learning_rate) and is_number(lr_min):
        check(lr_min <= learning_rate, f"ppo.lr_min must lie in [0, ppo.learning_rate = {learning_rate}] "
              f"(the linear schedule decays to it), got {lr_min}")


def check_position_range(min_position: float, max_position: float) -> None:
    """``<`` (not ``<=``): the continuous action maps [-1, 1] onto [min, max], and the baseline's
    action divides by max - min (tbjax.evaluation.deployment.baseline_action)."""
    check(min_position < max_position, f"env.min_position = {min_position} must be below env.max_position = "
          f"{max_position} (the continuous action maps [-1, 1] onto that range); swap or widen them")


def check_position_levels(levels: Any) -> tuple[float, ...]:
    """env.position_levels as floats: at least TWO finite, sorted, distinct targets (one level leaves
    the discrete policy a single action, nothing to choose; the env used to accept it, config not)."""
    try:
        values = tuple(float(v) for v in levels)
    except (TypeError, ValueError):
        raise InputError(f"env.position_levels = {levels!r} must be a list of numbers, "
                         "e.g. [0.0, 0.5, 1.0] (long-only) or [-1.0, 0.0, 1.0] (long-short)") from None
    check(len(values) >= 2, f"env.position_levels = {list(values)} must hold at least two target positions "
          "(one leaves the policy nothing to choose), e.g. [0.0, 1.0]")
    check(all(math.isfinite(v) for v in values),
          f"env.position_levels = {list(values)} contains a non-finite value; use finite fractions")
    check(all(a < b for a, b in zip(values, values[1:])), f"env.position_levels = {list(values)} must be "
          f"sorted, distinct target positions (ascending, no repeats), e.g. {sorted(set(values))}")
    return values


def symmetric_levels(levels) -> bool:
    """True when every discrete target position's negation is a target too."""
    values = [float(v) for v in levels]
    return all(abs(a + b) <= 1e-9 for a, b in zip(values, reversed(values)))


def mirrored_levels(action_mode: str, levels, min_position: float, max_position: float) -> bool:
    """True when every target position's negation is a target too: what training in the mirrored
    market (``ppo.mirror``, tbjax.learner.mirror) trades for a level chosen there."""
    if action_mode == "discrete":
        return symmetric_levels(levels)
    return abs(float(min_position) + float(max_position)) <= 1e-9


def check_mirror_levels(mirror: float, e) -> None:
    """``ppo.mirror`` > 0 needs levels with a mirror image; ``e`` is the env section (or EnvParams)."""
    if not mirror > 0 or mirrored_levels(e.action_mode, e.position_levels, e.min_position, e.max_position):
        return
    where = (f"env.position_levels = {list(e.position_levels)}" if e.action_mode == "discrete"
             else f"env.min_position = {e.min_position} and env.max_position = {e.max_position}")
    raise InputError(f"ppo.mirror = {mirror} trades each level chosen in the mirrored market negated, but {where} "
                     "has no mirror image (a long-only account cannot short): use levels symmetric around 0, "
                     "e.g. [-1.0, 0.0, 1.0], or set ppo.mirror: 0")


def cvar_floor(num_quantiles: int) -> float:
    """The smallest meaningful ``ppo.cvar_alpha``: the critic's N quantiles carry mass 1/N each, so
    below 1/N both VaR and CVaR are its lowest quantile and alpha would only rescale
    ``ppo.cvar_weight`` (docs/ALGORITHMS.md). The HPO space raises trials to it."""
    return 1.0 / num_quantiles


def check_cvar_alpha(cvar_alpha: float, cvar_weight: float, num_quantiles: int) -> None:
    floor = cvar_floor(num_quantiles)
    check(cvar_weight == 0 or cvar_alpha >= floor,
          f"ppo.cvar_alpha = {cvar_alpha} is below 1/ppo.num_quantiles = 1/{num_quantiles} = {floor:.4g}: the "
          f"critic cannot resolve a thinner tail (VaR and CVaR would both be its lowest quantile); raise "
          f"ppo.cvar_alpha to >= {floor:.4g} or ppo.num_quantiles to >= {math.ceil(1.0 / cvar_alpha)}")


def check_learner_shape(p) -> None:
    """The learner's static ppo.* settings; ``p`` is a PPOConfig or a TrainerSpec (same field names)."""
    for name in PPO_COUNTS:
        check_count(f"ppo.{name}", getattr(p, name))
    check_choice("ppo.policy", p.policy, POLICIES)
    check_choice("ppo.lr_schedule", p.lr_schedule, LR_SCHEDULES)
    check(p.policy == "mlp" or p.n_envs % p.n_minibatches == 0, f"ppo.n_minibatches = {p.n_minibatches} must "
          f"divide ppo.n_envs = {p.n_envs} for a recurrent policy (minibatches are whole env sequences)")
    check((p.n_steps * p.n_envs) % p.n_minibatches == 0,
          f"ppo.n_steps * ppo.n_envs = {p.n_steps * p.n_envs} is not divisible by ppo.n_minibatches = "
          f"{p.n_minibatches}: choose n_minibatches dividing {p.n_steps * p.n_envs} (e.g. a power of two)")
    check(isinstance(p.bar_features, Integral) and p.bar_features >= 0, f"ppo.bar_features must be 0 (flat "
          f"window) or a positive number of codes per bar, got {p.bar_features}")
    check(len(p.hidden_sizes) >= 1 and all(isinstance(h, Integral) and h >= 1 for h in p.hidden_sizes),
          f"ppo.hidden_sizes must be a non-empty list of positive widths, got {list(p.hidden_sizes)}")
    check_floats("ppo", {k: getattr(p, k) for k in ("huber_kappa", "obs_clip")}, PPO_FLOATS)


def hpo_objectives(entries: Any) -> list[tuple[str, str]]:
    """``hpo.objectives`` as (metric, direction) pairs: 1 to MAX_OBJECTIVES distinct metrics of
    HPO_OBJECTIVES, each written ``name`` (its natural direction) or ``name:maximize`` / ``name:minimize``."""
    key, names = "hpo.objectives", ", ".join(HPO_OBJECTIVES)
    check(isinstance(entries, (list, tuple)) and 1 <= len(entries) <= MAX_OBJECTIVES,
          f"{key} must list 1 to {MAX_OBJECTIVES} metrics, e.g. [sortino, cvar] or ['cvar:minimize'], got {entries!r}")
    out = []
    for entry in entries:
        name, _, direction = str(entry).partition(":")
        name, direction = name.strip(), direction.strip() or HPO_OBJECTIVES.get(name.strip(), "")
        check(name in HPO_OBJECTIVES, f"{key}: unknown metric {name!r} in {entry!r}; choose from {names}")
        check(direction in OBJECTIVE_DIRECTIONS,
              f"{key}: {entry!r} has direction {direction!r}; write {name}, {name}:maximize or {name}:minimize")
        out.append((name, direction))
    seen = [n for n, _ in out]
    check(len(set(seen)) == len(seen), f"{key} = {list(entries)} repeats a metric: list each metric once")
    return out


def _validate_walkforward(w) -> None:  # fit to the data: tbjax.walkforward.folds
    check_count("walkforward.folds", w.folds)
    check(w.seeds is None or (isinstance(w.seeds, int) and not isinstance(w.seeds, bool) and w.seeds >= 1),
          f"walkforward.seeds must be null (train.population) or an integer >= 1, got {w.seeds!r}")
    check_choice("walkforward.train_mode", w.train_mode, TRAIN_MODES)
    for n in ("train_bars", "val_bars", "test_bars", "step_bars", "embargo_bars"):  # durations: tbjax.walkforward.folds
        v, least = getattr(w, n), int(n != "embargo_bars")
        check(v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool) and v >= least),
              f"walkforward.{n} must be null, a number of bars >= {least} or a duration like '90d', got {v!r}")


def _validate_env(e) -> None:
    check(e.window_size >= SLOWEST_INDICATOR_WINDOW,
          f"env.window_size = {e.window_size} is below the slowest indicator window "
          f"({SLOWEST_INDICATOR_WINDOW} bars, MACD's slow EMA): set env.window_size >= {SLOWEST_INDICATOR_WINDOW}")
    check_count("env.episode_len", e.episode_len)
    check_choice("env.action_mode", e.action_mode, ACTION_MODES)
    check_choice("env.symbol_sampling", e.symbol_sampling, SYMBOL_SAMPLINGS)
    check_position_levels(e.position_levels)
    check_floats("env", vars(e), ENV_FLOATS)
    check_shaping({name: getattr(e, name) for name in shaping_weights(e)})
    check_position_range(e.min_position, e.max_position)


def _validate_frontier(f) -> None:  # the grid's points are checked as configs by tbjax.run.frontier
    for name in ("cvar_weight", "cvar_alpha", "turnover_penalty"):
        values = getattr(f, name)
        check(values is None or (isinstance(values, (list, tuple)) and len(values) >= 1),
              f"frontier.{name} must be a non-empty list of values{'' if name == 'cvar_weight' else ' or null'}, "
              f"got {values!r}")
        check(values is None or len(set(values)) == len(values),
              f"frontier.{name} = {list(values or [])} repeats a value: list each value once")
    check_count("frontier.seeds", f.seeds)
    check_choice("frontier.return_metric", f.return_metric, FRONTIER_RETURN_METRICS)
    check_choice("frontier.tail_metric", f.tail_metric, FRONTIER_TAIL_METRICS)


def validate(cfg) -> None:
    """Ranges and cross-field rules, each with a message that says what to change.

    ``env.window_size`` >= SLOWEST_INDICATOR_WINDOW is the config's own rule (the agent sees at least
    the slowest indicator's span of the data's features); the env alone accepts any window >= 1,
    which the tests' and benchmarks' indicator-free markets use.
    """
    p, t, ev = cfg.ppo, cfg.train, cfg.eval
    check_learner_shape(p)
    check_floats("ppo", vars(p), PPO_FLOATS)
    check_learning_rates(p.learning_rate, p.lr_min)
    check_cvar_alpha(p.cvar_alpha, p.cvar_weight, p.num_quantiles)
    _validate_env(cfg.env)
    check_mirror_levels(p.mirror, cfg.env)
    check_floats("features", vars(cfg.features), FEATURE_FLOATS)

    for name in ("total_env_steps", "updates_per_chunk", "eval_every", "population"):
        check_count(f"train.{name}", getattr(t, name))
    check(t.ensemble_top_k is None or 1 <= t.ensemble_top_k <= t.population,
          f"train.ensemble_top_k must be null or in [1, train.population = {t.population}], got {t.ensemble_top_k}")
    check(t.population_jitter >= 0, f"train.population_jitter must be >= 0, got {t.population_jitter}")
    check_choice("train.precision", t.precision, PRECISIONS)
    check(t.patience >= 0, f"train.patience must be >= 0 (0 = never stop early), got {t.patience}")
    check(min(ev.w_val, ev.w_choppy, ev.w_trend) >= 0, "eval.w_val, eval.w_choppy and eval.w_trend must be >= 0")
    check(ev.regime_bars >= 200, f"eval.regime_bars must be >= 200, got {ev.regime_bars}")
    check_choice("eval.baseline", ev.baseline, BASELINES)
    check(0 <= ev.edge_confidence <= 1, f"eval.edge_confidence must lie in [0, 1] (0: always deploy the agent; "
          f"0.95: only with 95 % confidence that it beats the baseline on val), got {ev.edge_confidence}")
    check(isinstance(ev.edge_deflation, bool), f"eval.edge_deflation must be true or false, got {ev.edge_deflation!r}")
    if cfg.data.embargo_bars is not None:
        check(cfg.data.embargo_bars >= 0, f"data.embargo_bars must be >= 0, got {cfg.data.embargo_bars}")
    if cfg.data.bars_per_year is not None:
        check(cfg.data.bars_per_year > 0, f"data.bars_per_year must be > 0, got {cfg.data.bars_per_year}")
    _validate_walkforward(cfg.walkforward)
    _validate_frontier(cfg.frontier)
    for name in ("batch", "n_trials", "objective_every"):  # objective_every: a modulus in tbjax.hpo.runner
        check_count(f"hpo.{name}", getattr(cfg.hpo, name))
    check(cfg.hpo.timeout is None or cfg.hpo.timeout > 0, f"hpo.timeout must be null or > 0 seconds, got {cfg.hpo.timeout}")
    check_choice("hpo.pruner", cfg.hpo.pruner, PRUNERS)
    hpo_objectives(cfg.hpo.objectives)
