"""THE acting loop of evaluation: a policy walks a split bar by bar with frozen statistics.

The val/test backtest (tbjax.evaluation.backtest) and ``load_policy(...).target_positions``
(tbjax.api) both call :func:`walk`, so a policy acts the same way in both; actions come from the
trainer's ``policy_apply``, the same acting function whose sampled form drives the training
rollout.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from tbjax.data.market import scaled_once
from tbjax.env import market as market_env

CHAINS = 2  # recurrent state chains of the walk (chain_schedule)


def chain_schedule(i, episode_len: int):
    """(reset [CHAINS] bool, acting chain) at decision ``i`` of a split, for a recurrent policy.

    Training acts from states 0 .. episode_len - 1 steps old (every episode starts at zero), so
    the walk never carries one state through a whole split: two chains of the core read every bar,
    chain k restarting from zero at the decisions i = m * b with m % 2 == k, b = episode_len // 2;
    the chain restarted longer ago acts. The state acting at decision i is therefore the core run
    from zero over decisions max(0, (i // b - 1) * b) .. i: b .. 2b - 1 steps old after the first b
    decisions (a burn-in of at least b bars, never a cold start inside the split). episode_len 1:
    every decision from zero, as in training.
    """
    b = episode_len // 2
    if b == 0:
        return jnp.ones((CHAINS,), bool), 0
    m = i // b
    return (i % b == 0) & (jnp.arange(CHAINS) == m % 2), (m + 1) % 2


def _stepper(policy_apply):
    """(step, initial state) of an acting function: the trainer's ``Acting`` carries a recurrent
    state through ``.step`` (one row per chain); a plain
    ``policy_apply(params, obs_stats, obs, deterministic, key)`` is stateless (state None)."""
    if hasattr(policy_apply, "step"):
        hidden0 = policy_apply.initial_hidden((1,))
        if hidden0 is None:
            return policy_apply.step, None
        # one state per chain on a leading axis, whatever its layout (an ensemble stacks members)
        return policy_apply.step, jax.tree_util.tree_map(lambda h: jnp.broadcast_to(h, (CHAINS, *h.shape)), hidden0)

    def stateless(params, obs_stats, hidden, obs, deterministic, key=None):
        return policy_apply(params, obs_stats, obs, deterministic, key=key), hidden

    return stateless, None


@partial(jax.jit, static_argnames=("policy_apply", "n_steps", "deterministic"))
def walk(policy_apply, params, obs_stats, env_params, market, start, n_valid, position0, key, n_steps: int,
         deterministic: bool):
    """THE acting loop of evaluation: every symbol from ``start[s]`` for ``n_valid[s]`` decisions.

    Used by the val/test backtest and by ``load_policy(...).target_positions``, so a policy acts
    the same way in both. Per decision bar t: ``observe`` (account features + window) → policy with
    FROZEN ``obs_stats`` → ``market_step`` (fill at t+1's open with every cost, mark at t+1's
    close). Steps past ``n_valid[s]`` keep the state and are marked invalid; ``n_steps`` (static)
    is the scan length. The account starts flat-equity at ``position0[s]``; a recurrent policy acts
    at each bar from the state of its core run from zero over a window of at most
    ``env_params.episode_len`` bars ending there (:func:`chain_schedule`), as in training.

    The walk never reads ``env_params.role`` to place itself (``start`` comes from the host; the
    out-of-rows truncation flag is ignored), so callers pin the role to one value and val, test
    and the regime markets share one compiled program.

    ``key`` seeds sampled actions when ``deterministic`` is False (one stream per symbol, folded
    with the step index); a deterministic walk ignores it.

    Returns per [symbol, step]: equity, target (the position the action asks for), turnover (the
    fraction of equity the env traded, drift rebalancing included), tradable (the fill bar was
    tradable and the step valid) and valid; and per symbol ``last_position``, the position the
    account holds after its last valid decision (drifted with the price), which a walk of the
    bars that follow starts from when it continues this one (walk-forward's stitch).
    """

    step, hidden0 = _stepper(policy_apply)
    market = scaled_once(market)  # once, outside the scan: each step then copies a scaled window

    def one_symbol(sym, t0, n_sym, p0):
        state = (market_env.fresh_account(sym, t0, p0), hidden0)
        sym_key = jax.random.fold_in(key, sym)

        def body(state, i):
            account, hidden = state
            obs = market_env.observe(account, env_params, market)
            step_key = None if deterministic else jax.random.fold_in(sym_key, i)
            if hidden is None:  # the MLP: stateless, one row
                action, hidden = step(params, obs_stats, hidden, obs[None], deterministic, key=step_key)
                action = action[0]
            else:  # every chain reads the bar's observation; the one restarted longer ago acts
                reset, acting = chain_schedule(i, env_params.episode_len)
                hidden = jax.tree_util.tree_map(
                    lambda h: jnp.where(reset.reshape((CHAINS,) + (1,) * (h.ndim - 1)), 0.0, h), hidden)
                action, hidden = jax.vmap(lambda h: step(params, obs_stats, h, obs[None], deterministic,
                                                         key=step_key))(hidden)
                action = action[acting, 0]
            new_account, _, _, _, info = market_env.market_step(account, action, env_params, market)
            valid = i < n_sym
            state = jax.tree_util.tree_map(lambda a, b: jnp.where(valid, a, b), (new_account, hidden), state)
            out = dict(equity=info["equity"], target=market_env.target_position(action, env_params),
                       turnover=jnp.where(valid, info["turnover"], 0.0), tradable=info["tradable"] & valid,
                       valid=valid)
            return state, out

        (account, _), outs = jax.lax.scan(body, state, jnp.arange(n_steps))
        return {**outs, "last_position": account.position}

    return jax.vmap(one_symbol)(jnp.arange(market.n_symbols), start, n_valid, position0)


def held_positions(target: np.ndarray, tradable: np.ndarray, initial: float = 0.0) -> np.ndarray:
    """Position held over each bar: the target where its fill bar was tradable, else the last one.

    On a non-tradable fill bar the env ignores the action and keeps the old position, so the
    held series forward-fills the last tradable target (``initial`` before the first).
    """
    target = np.asarray(target, np.float64)
    last = np.maximum.accumulate(np.where(tradable, np.arange(len(target)), -1))
    return np.where(last >= 0, target[np.maximum(last, 0)], float(initial))


WALK_ROLE = 0  # the role pinned in the walk's env params (see ``walk``)
