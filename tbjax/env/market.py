"""The market environment as pure JAX functions of (key, state, action, params, data).

Rules (docs/DESIGN.md invariant 1): the action decided on bar t's close sees observation rows <= t; the
new target position is filled at bar t+1's open with fees, spread, slippage and impact; equity is
marked at bar t+1's close. Reward = log(equity_{t+1} / equity_t) - the shaping penalty
(:func:`tbjax.env.costs.shaping_penalty`: turnover_penalty * turnover), raw (never normalised).
The bar arithmetic (gap -> fill -> intrabar -> borrow) is written out in
:mod:`tbjax.env.costs`, the observation in :mod:`tbjax.env.observation`.

Episodes: a symbol (uniform, or weighted by its row count in the role) and a first decision bar
t0 uniform in [role_start + window_size - 1, role_end - 1 - episode_len], so the window and every
fill bar stay inside the role: a train episode never reads a val/test row. An episode ends
    terminated  when equity_{t+1} < equity_floor,
    truncated   after episode_len decisions, or when the next decision bar t+1 would need a fill
                bar t+2 >= role_end (only reachable from :func:`reset_at`); never both at once.
:func:`step` auto-resets with a ``jnp.where`` select over the state pytree, no per-env branch.

Settings are static (shapes, modes: recompile) or float32 leaves (costs: a new trial reuses the
compiled step, a trial axis can be vmapped), following gymnax's EnvParams and rejax's split.
Callers vmap over envs: ``jax.vmap(step, in_axes=(0, 0, 0, None, None))``.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tbjax.config_rules import (ACTION_MODES, ENV_FLOATS, SYMBOL_SAMPLINGS, Interval, check_choice, check_count,
                                check_float, check_floats, check_position_levels, check_position_range,
                                check_shaping)
from tbjax.data.features import HOURS_PER_WEEK
from tbjax.data.market import ROLE_NAMES, MarketData
from tbjax.env.costs import settle_bar, shaping_penalty
from tbjax.env.observation import (N_ACCOUNT_FEATURES, account_features, assemble_observation, market_window,
                                   scaled_window)
from tbjax.errors import InputError
from tbjax.settings_tree import SettingsTree

# The env's static settings (shapes and modes; a new value compiles a new program), each an env.*
# key declared static() in tbjax/config.py. Its traced settings, float32 leaves by the same names:
# every key of tbjax.config_rules.ENV_FLOATS (market and account floats, each with its rule; units
# in the names, bps = 1e-4 of notional), the reward-shaping weights (env.* keys declared
# shaping=True, read by tbjax.env.costs.shaping_penalty) and ``liquidity_multipliers``.
STATIC_SETTINGS = ("window_size", "episode_len", "action_mode", "position_levels", "symbol_sampling")


class EnvParams(SettingsTree):
    """Market env settings by their env.* names (``params.fee_bps``, ``params.window_size``) plus
    ``liquidity_multipliers`` (traced, [168]) and ``role`` (static). Build with
    :func:`checked_env_params` (validates, converts to f32); with the config's defaults:
    :func:`tbjax.run.assembly.make_env_params`."""

    __slots__ = ()


def _check_multipliers(values, where: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (HOURS_PER_WEEK,):
        raise InputError(f"{where}: liquidity multipliers need {HOURS_PER_WEEK} values (one per hour of "
                         f"week, Monday 00 UTC first), got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
    if bad.size:
        raise InputError(f"{where}: liquidity multiplier at hour {int(bad[0])} is {arr[bad[0]]}; "
                         "every multiplier must be a positive finite number")
    return arr.astype(np.float32)


def _host_float(key: str, value) -> float:
    try:
        return float(value)  # numpy and 0-d device scalars too
    except (TypeError, ValueError):
        check_float(key, value, Interval())  # refuses it with the rule's message
        raise


def checked_env_params(*, shaping: dict, **settings) -> EnvParams:
    """Validate settings and build EnvParams with float32 array leaves.

    Every key of :data:`STATIC_SETTINGS` and of ``tbjax.config_rules.ENV_FLOATS`` must be given
    (``role`` and ``liquidity_multipliers`` are optional: train role, a flat curve), and
    ``shaping``, the reward-shaping weights by name; the defaults and which keys are shaping
    weights are the config's, filled in by :func:`tbjax.run.assembly.make_env_params`. Raises InputError
    (naming the key and the fix) for an unknown or missing key and for any value the env.* rules of
    :mod:`tbjax.config_rules` refuse (the same rules and messages a config gets), or a bad
    liquidity curve. env.window_size >= SLOWEST_INDICATOR_WINDOW is the config's rule, not the env's
    (any window >= 1 works here).
    """
    required = set(STATIC_SETTINGS) | set(ENV_FLOATS)
    known = required | {"role", "liquidity_multipliers"}
    unknown, missing = sorted(set(settings) - known), sorted(required - set(settings))
    if unknown:
        raise InputError(f"unknown env setting(s) {unknown}; known settings: {sorted(known)}")
    if missing:
        raise InputError(f"env settings {missing} are missing; tbjax.run.assembly.make_env_params fills in the "
                         "config's defaults")
    check_choice("env.action_mode", settings["action_mode"], ACTION_MODES)
    check_choice("env.symbol_sampling", settings["symbol_sampling"], SYMBOL_SAMPLINGS)
    role = settings.get("role", 0)
    check_choice("role", role, (0, 1, 2))  # ROLE_TRAIN / ROLE_VAL / ROLE_TEST, set by the caller
    levels = check_position_levels(settings["position_levels"])
    for name in ("window_size", "episode_len"):
        check_count(f"env.{name}", settings[name])
    floats = {name: _host_float(f"env.{name}", settings[name]) for name in ENV_FLOATS}
    check_floats("env", floats, ENV_FLOATS)
    weights = {name: _host_float(f"env.{name}", value) for name, value in shaping.items()}
    check_shaping(weights)
    check_position_range(floats["min_position"], floats["max_position"])
    mult = settings.get("liquidity_multipliers")
    mult = (np.ones(HOURS_PER_WEEK, np.float32) if mult is None
            else _check_multipliers(mult, "env.liquidity_multipliers"))
    traced = {k: jnp.asarray(v, jnp.float32) for k, v in {**floats, **weights}.items()}
    static = {"window_size": int(settings["window_size"]), "episode_len": int(settings["episode_len"]),
              "action_mode": settings["action_mode"], "position_levels": levels,
              "symbol_sampling": settings["symbol_sampling"], "role": int(role)}
    return EnvParams({**traced, "liquidity_multipliers": jnp.asarray(mult, jnp.float32)}, static)


def load_liquidity_multipliers(path) -> np.ndarray:
    """Read a JSON list of 168 positive floats (hour-of-week multipliers, Monday 00 UTC first)."""
    p = Path(path)
    try:
        values = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: liquidity multiplier file not found; give a JSON list of 168 numbers") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}); "
                         "give a JSON list of 168 numbers") from None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in values):
        raise InputError(f"{p}: expected a JSON list of numbers, got {type(values).__name__}")
    return _check_multipliers(values, str(p))


def observation_size(params: EnvParams, data: MarketData) -> int:
    """4 account features plus window_size x n_features market rows (account first)."""
    return params.window_size * data.n_features + N_ACCOUNT_FEATURES


def n_actions(params: EnvParams) -> int:
    """Number of discrete levels, or 1 for a continuous action."""
    return len(params.position_levels) if params.action_mode == "discrete" else 1


def check_data(params: EnvParams, data: MarketData) -> None:
    """Host-side check that every symbol's role holds a full window plus a full episode.

    Sampling a start bar needs role_end - role_start >= window_size + episode_len + 1 rows
    (window rows before the first decision, episode_len decisions, one fill bar after the last).
    """
    need = params.window_size + params.episode_len + 1
    starts = np.asarray(data.role_start)[:, params.role]
    ends = np.asarray(data.role_end)[:, params.role]
    lengths = np.asarray(data.lengths)
    role = ROLE_NAMES[params.role]
    for s in range(data.n_symbols):
        name = data.symbols[s] if s < len(data.symbols) else f"#{s}"
        if not 0 <= starts[s] <= ends[s] <= lengths[s]:
            raise InputError(f"symbol {name!r}: {role} rows [{starts[s]}, {ends[s]}) do not lie inside its "
                             f"{lengths[s]} bars; rebuild the splits")
        have = int(ends[s] - starts[s])
        if have < need:
            raise InputError(
                f"symbol {name!r} has {have} rows in role {role!r} but window_size {params.window_size} + "
                f"episode_len {params.episode_len} + 1 = {need} are needed; lower env.window_size or "
                f"env.episode_len, widen the {role} split, or drop the symbol")


@struct.dataclass
class EnvState:
    """One env's account and clock; PRNG-free (keys come in through :func:`step`)."""

    symbol: jnp.ndarray            # int32 symbol index
    bar: jnp.ndarray               # int32 decision bar t
    position: jnp.ndarray          # f32 fraction of equity held at close_t (after drift)
    equity: jnp.ndarray            # f32, 1.0 at episode start
    peak_equity: jnp.ndarray       # f32 running max of equity in this episode
    entry_equity: jnp.ndarray      # f32 equity at the open where the current position was entered
    bars_in_position: jnp.ndarray  # int32 bars held since entry (0 when flat)
    episode_step: jnp.ndarray      # int32 decisions taken in this episode
    episode_return: jnp.ndarray    # f32 sum of rewards so far


def reset_at(params: EnvParams, data: MarketData, symbol, bar) -> EnvState:
    """A fresh account on ``symbol`` deciding first at ``bar`` (episode starts use it).

    ``bar`` is clipped to [role_start + window_size - 1, role_end - 2] of ``params.role`` so the
    window and the first fill bar stay inside the role.
    """
    symbol = jnp.asarray(symbol, jnp.int32)
    lo = data.role_start[symbol, params.role] + (params.window_size - 1)
    hi = data.role_end[symbol, params.role] - 2
    return fresh_account(symbol, jnp.clip(jnp.asarray(bar, jnp.int32), lo, hi))


def fresh_account(symbol, bar, position=0.0) -> EnvState:
    """Equity 1 on ``symbol`` deciding first at ``bar``, holding ``position`` (no clipping).

    The evaluation walk computes its first bar on the host from the split and calls this
    directly, so its compiled program does not depend on which role it walks.
    """
    one, zero_i = jnp.float32(1.0), jnp.int32(0)
    return EnvState(symbol=jnp.asarray(symbol, jnp.int32), bar=jnp.asarray(bar, jnp.int32),
                    position=jnp.asarray(position, jnp.float32), equity=one, peak_equity=one,
                    entry_equity=one, bars_in_position=zero_i, episode_step=zero_i,
                    episode_return=jnp.float32(0.0))


def _sample_start(bits, params: EnvParams, data: MarketData):
    """Symbol and first decision bar from two uint32 random words.

    Integers come from ``bits % n``: the modulo bias is below n / 2**32, negligible for symbol
    counts and bar ranges far below 2**32.
    """
    starts = data.role_start[:, params.role]
    ends = data.role_end[:, params.role]
    if params.symbol_sampling == "length":
        weights = (ends - starts).astype(jnp.float32)
        cdf = jnp.cumsum(weights) / jnp.sum(weights)
        u = (bits[0] >> 8).astype(jnp.float32) * jnp.float32(2.0 ** -24)
        symbol = jnp.minimum(jnp.sum(cdf <= u), data.n_symbols - 1).astype(jnp.int32)
    else:
        symbol = (bits[0] % jnp.uint32(data.n_symbols)).astype(jnp.int32)
    lo = starts[symbol] + (params.window_size - 1)
    hi = ends[symbol] - 1 - params.episode_len
    span = jnp.maximum(hi - lo + 1, 1).astype(jnp.uint32)
    bar = lo + (bits[1] % span).astype(jnp.int32)
    return symbol, bar


def reset(key, params: EnvParams, data: MarketData):
    """Sample a start (see module docstring) and return (obs, state)."""
    symbol, bar = _sample_start(jax.random.bits(key, (2,), jnp.uint32), params, data)
    state = reset_at(params, data, symbol, bar)
    return observe(state, params, data), state


def observe(state: EnvState, params: EnvParams, data: MarketData) -> jnp.ndarray:
    """float32 [4 + window_size * F]: account values then the window (:mod:`tbjax.env.observation`).

    The window is z-scored here only when the caller did not scale the market once first
    (:func:`tbjax.data.market.scaled_once`, what every compiled program of tbjax does).
    """
    window = market_window(data.features, state.symbol, state.bar, params.window_size)
    if not data.features_scaled:
        window = scaled_window(window, data.scaling)
    account = account_features(state.position, state.equity, state.entry_equity, state.peak_equity,
                               state.bars_in_position, params.episode_len)
    return assemble_observation(account, window)


def target_position(action, params: EnvParams) -> jnp.ndarray:
    """Discrete: position_levels[action]. Continuous: [-1, 1] -> [min_position, max_position]."""
    if params.action_mode == "discrete":
        levels = jnp.asarray(params.position_levels, jnp.float32)
        return levels[jnp.clip(jnp.asarray(action, jnp.int32).reshape(()), 0, len(levels) - 1)]
    a = jnp.clip(jnp.asarray(action, jnp.float32).reshape(()), -1.0, 1.0)
    return params.min_position + (a + 1.0) * 0.5 * (params.max_position - params.min_position)


def market_step(state: EnvState, action, params: EnvParams, data: MarketData):
    """Advance one bar without auto-reset: (state, reward, terminated, truncated, info).

    Entry bookkeeping: a fill that opens from flat or flips the sign starts a new position
    (entry_equity = equity at that open, bars_in_position = 1); adding or trimming keeps the
    entry and counts one more bar; ending flat sets bars_in_position = 0 and entry = equity.
    """
    s, t = state.symbol, state.bar
    nxt = t + 1
    row = s * data.close.shape[1] + t  # flat [S*T] index: 1-D gathers are the cheap kind on CPU

    def at(field, offset):
        return field.reshape(-1).at[row + offset].get(mode="clip")

    tradable = at(data.tradable, 1)
    target = target_position(action, params)
    bar = settle_bar(state.position, target, state.equity, tradable, at(data.close, 0),
                     at(data.open, 1), at(data.close, 1), at(data.volatility, 0), at(data.volume, 1),
                     params.liquidity_multipliers.at[at(data.hour_of_week, 1)].get(mode="clip"), params)

    reward = bar.log_return - shaping_penalty(bar, params)
    flat = bar.position_filled == 0.0
    new_entry = tradable & ~flat & (jnp.sign(bar.position_filled) != jnp.sign(bar.position_open))
    entry_equity = jnp.where(flat, bar.equity, jnp.where(new_entry, bar.equity_open, state.entry_equity))
    bars_in_position = jnp.where(flat, 0, jnp.where(new_entry, 1, state.bars_in_position + 1))
    episode_step = state.episode_step + 1
    episode_return = state.episode_return + reward

    terminated = bar.equity < params.equity_floor
    out_of_rows = nxt + 2 > data.role_end[s, params.role]
    truncated = ((episode_step >= params.episode_len) | out_of_rows) & ~terminated
    new_state = EnvState(symbol=s, bar=nxt, position=bar.position, equity=bar.equity,
                         peak_equity=jnp.maximum(state.peak_equity, bar.equity),
                         entry_equity=entry_equity, bars_in_position=bars_in_position.astype(jnp.int32),
                         episode_step=episode_step, episode_return=episode_return)
    info = {
        "symbol": s, "bar": t, "gross_log_return": bar.gross_log_return, "cost": bar.cost,
        "turnover": bar.turnover, "tradable": tradable, "equity": bar.equity,
        "terminated": terminated, "truncated": truncated, "episode_return": episode_return,
        "episode_length": episode_step, "final_equity": bar.equity,
    }
    return new_state, reward, terminated, truncated, info


def step(key, state: EnvState, action, params: EnvParams, data: MarketData, return_final_obs: bool = True):
    """market_step, then auto-reset finished envs: (obs, state, reward, done, info).

    info["symbol"], ["bar"] describe the decision just taken (before any reset);
    episode_return, episode_length and final_equity are meaningful where done.
    The auto-reset draws its symbol and start bar with ``jax.random.bits(key)``, like
    :func:`reset`, so any key works, ``PRNGKey(i)`` per env included. (An earlier version read the
    key's raw words to save a hash per step; a raw ``PRNGKey(i)`` has words (0, i), which sent
    every auto-reset to symbol 0.)
    ``return_final_obs`` (static Python flag; bind it with functools.partial before vmap) adds
    info["final_obs"], the observation of the pre-reset state so a trainer can bootstrap
    V(final_obs) on truncation. It costs a second window gather per step and, if a rollout keeps
    it, another [n_steps, n_envs, obs_size] float32 buffer.
    """
    next_state, reward, terminated, truncated, info = market_step(state, action, params, data)
    done = terminated | truncated
    symbol, bar = _sample_start(jax.random.bits(key, (2,), jnp.uint32), params, data)
    fresh = reset_at(params, data, symbol, bar)
    state = jax.tree_util.tree_map(lambda f, n: jnp.where(done, f, n), fresh, next_state)
    if return_final_obs:
        info["final_obs"] = observe(next_state, params, data)
    return observe(state, params, data), state, reward, done, info
