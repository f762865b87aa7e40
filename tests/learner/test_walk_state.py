"""The evaluation walk's recurrent state: a GRU acts at decision i from the core run from the zero
state over the decisions max(0, (i // b - 1) * b) .. i of the split, b = episode_len // 2 (so
from states 0 .. episode_len - 1 steps old, as in training's episodes, and never a cold one after
the first b decisions); the MLP walk is the plain acting loop."""

import jax
import jax.numpy as jnp
import numpy as np
from env_fixtures import toy_market

from tbjax.agent.networks import init_params
from tbjax.agent.normalize import init_running_stats, update_running_stats
from tbjax.data.market import ROLE_VAL, scaled_once
from tbjax.env import market
from tbjax.env.protocol import MarketEnv
from tbjax.evaluation.backtest import split_walk
from tbjax.learner.trainer import make_trainer
from tbjax.learner.walk import WALK_ROLE, walk
from tbjax.run.assembly import make_env_params, make_spec

EPISODE = 8


def _walked(policy: str, action_mode: str, data):
    """(trainer, params, stats, env params, start, n, walk outputs) of an untrained policy on val."""
    env_params = make_env_params(window_size=4, episode_len=EPISODE, action_mode=action_mode).replace(
        role=WALK_ROLE)
    spec = make_spec(n_envs=2, n_steps=8, n_minibatches=1, hidden_sizes=(8,), num_quantiles=4, holdout_size=8,
                     policy=policy, rnn_size=4)
    trainer = make_trainer(spec, MarketEnv(), env_params)
    obs_dim = 4 + 4 * data.n_features
    params = init_params(trainer.context.network, jax.random.PRNGKey(3), obs_dim)
    if action_mode == "continuous":  # a larger policy head, so the action shows small state differences
        head = params["params"]["policy_mean"]
        params = {"params": {**params["params"], "policy_mean": {**head, "kernel": 100.0 * head["kernel"]}}}
    stats = update_running_stats(init_running_stats((obs_dim,)),
                                 jax.random.normal(jax.random.PRNGKey(4), (64, obs_dim)) * 2.0 + 0.5)
    start, n = split_walk(data, ROLE_VAL, 4)
    outs = walk(trainer.policy_apply, params, stats, env_params, data, jnp.asarray(start), jnp.asarray(n),
                jnp.zeros(data.n_symbols, jnp.float32), jax.random.PRNGKey(0), int(n.max()), True)
    return trainer, params, stats, env_params, start, n, jax.tree_util.tree_map(np.asarray, outs)


def _observations(env_params, data, sym, t0, n):
    """The walk's observations of one symbol when no bar is tradable (the account never moves, so
    they do not depend on the actions)."""
    scaled, account, obs = scaled_once(data), market.fresh_account(sym, t0, 0.0), []
    for _ in range(n):
        obs.append(market.observe(account, env_params, scaled))
        account = market.market_step(account, jnp.float32(0.0), env_params, scaled)[0]
    return obs


def test_a_recurrent_walk_acts_from_the_core_run_from_zero_over_its_window():
    data = toy_market(lengths=(150, 120), n_features=2, role_fracs=(0.2, 0.6, 0.2), non_tradable_frac=1.0)
    trainer, params, stats, env_params, start, n, outs = _walked("gru", "continuous", data)
    step = jax.jit(trainer.policy_apply.step, static_argnames="deterministic")
    b = EPISODE // 2
    for sym in range(data.n_symbols):
        obs = _observations(env_params, data, sym, int(start[sym]), int(n[sym]))
        expected, carried, hidden = [], [], trainer.policy_apply.initial_hidden((1,))
        for i in range(len(obs)):
            h = trainer.policy_apply.initial_hidden((1,))
            for j in range(max(0, (i // b - 1) * b), i + 1):  # the window, from the zero state
                action, h = step(params, stats, h, obs[j][None], True)
            expected.append(float(market.target_position(action[0], env_params)))
            action, hidden = step(params, stats, hidden, obs[i][None], True)  # one state through the split
            carried.append(float(market.target_position(action[0], env_params)))
        got = outs["target"][sym, :n[sym]]
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
        # the window matters: one state carried through the split acts differently
        assert np.max(np.abs(np.asarray(carried) - np.asarray(expected))) > 1e-3


def test_the_mlp_walk_is_the_plain_acting_loop():
    """Bit for bit: every decision's target and equity are those of a loop of observe -> the
    policy's own call -> market_step with frozen statistics."""
    data = toy_market(lengths=(150, 120), n_features=2, role_fracs=(0.2, 0.6, 0.2), seed=3)
    trainer, params, stats, env_params, start, n, outs = _walked("mlp", "discrete", data)
    act = jax.jit(lambda o: trainer.policy_apply(params, stats, o[None])[0])
    scaled = scaled_once(data)
    for sym in range(data.n_symbols):
        account, targets, equity = market.fresh_account(sym, int(start[sym]), 0.0), [], []
        for _ in range(int(n[sym])):
            action = act(market.observe(account, env_params, scaled))
            account, _, _, _, info = market.market_step(account, action, env_params, scaled)
            targets.append(float(market.target_position(action, env_params)))
            equity.append(float(info["equity"]))
        assert len(set(targets)) > 1
        np.testing.assert_array_equal(outs["target"][sym, :n[sym]], np.float32(targets))
        np.testing.assert_allclose(outs["equity"][sym, :n[sym]], np.float32(equity), rtol=1e-6)
