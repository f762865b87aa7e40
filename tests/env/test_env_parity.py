"""The JAX env and its NumPy/Gymnasium twin are two independent codings of the same rules:
driven with the same starts and actions they must give the same transitions (float32, rtol 1e-5)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from env_fixtures import toy_market
from tbjax.env import market
from tbjax.env.gym import MarketGymEnv
from tbjax.run.assembly import make_env_params

N_STEPS = 1200
COSTS = dict(fee_bps=4.0, half_spread_bps=2.0, slippage_k=0.05, impact_coef=0.005, borrow_bps_per_bar=10.0,
             turnover_penalty=0.002, capital=1e3, equity_floor=0.8)


@pytest.fixture(scope="module")
def data():
    # 2 symbols of different length, 2 % vol so some episodes hit the equity floor, 5 % untradable bars
    return toy_market(lengths=(400, 300), n_features=3, seed=3, vol=0.02, non_tradable_frac=0.05)


def liquidity_curve():
    return 1.0 + 0.5 * np.sin(np.arange(168) / 168 * 2 * np.pi)


def jax_rollout(params, data, actions, seed):
    """Scan the auto-resetting JAX step; record what the twin must reproduce."""
    step = functools.partial(market.step, return_final_obs=True)
    obs0, state0 = market.reset(jax.random.PRNGKey(seed), params, data)

    def body(carry, xs):
        state = carry
        key, action = xs
        obs, state, reward, done, info = step(key, state, action, params, data)
        return state, (obs, reward, done, info, state.symbol, state.bar)

    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(actions))
    _, traj = jax.jit(lambda s, k, a: jax.lax.scan(body, s, (k, a)))(state0, keys, actions)
    return obs0, state0, jax.tree_util.tree_map(np.asarray, traj)


def twin_rollout(env, first_start, actions, next_starts, dones):
    """Step the twin with the same actions; restart it where the JAX env auto-reset."""
    obs0, _ = env.reset(seed=0, options=first_start)
    rows = []
    for i, action in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        assert done == bool(dones[i]), f"step {i}: twin done={done}, jax done={bool(dones[i])}"
        final_obs = obs
        if done:
            obs, _ = env.reset(options={"symbol": next_starts[0][i], "bar": next_starts[1][i]})
        rows.append((obs, reward, terminated, truncated, info, final_obs))
    return obs0, rows


@pytest.mark.parametrize("mode", ["discrete", "continuous"])
def test_jax_and_gym_twin_agree_step_by_step(data, mode):
    if mode == "discrete":
        params = make_env_params(window_size=8, episode_len=64, position_levels=(-1.0, -0.5, 0.0, 0.5, 1.0),
                                 liquidity_multipliers=liquidity_curve(), **COSTS)
        actions = np.random.default_rng(1).integers(0, 5, N_STEPS).astype(np.int32)
    else:
        params = make_env_params(window_size=8, episode_len=64, action_mode="continuous",
                                 min_position=-1.0, max_position=1.5, symbol_sampling="length",
                                 liquidity_multipliers=liquidity_curve(), **COSTS)
        actions = np.random.default_rng(2).uniform(-1.3, 1.3, (N_STEPS, 1)).astype(np.float32)
    obs0, state0, (obs, reward, done, info, next_sym, next_bar) = jax_rollout(params, data, jnp.asarray(actions), 7)

    env = MarketGymEnv(data, params)
    start = {"symbol": int(state0.symbol), "bar": int(state0.bar)}
    twin_obs0, rows = twin_rollout(env, start, actions, (next_sym, next_bar), done)

    # the run covers what it claims: several episodes, floor terminations, truncations, untradable fills
    assert done.sum() >= 10 and info["terminated"].sum() >= 1 and info["truncated"].sum() >= 5
    assert (~info["tradable"]).sum() >= 10 and (info["cost"] > 0).sum() >= N_STEPS // 2

    np.testing.assert_allclose(twin_obs0, np.asarray(obs0), rtol=1e-5)
    np.testing.assert_allclose(np.stack([r[0] for r in rows]), obs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack([r[5] for r in rows]), info["final_obs"], rtol=1e-5, atol=1e-6)
    # rewards are log growth near zero: rtol 1e-5 plus an absolute floor of 1e-7 (~f32 eps) for
    # rewards that cancel to ~0
    np.testing.assert_allclose(np.array([r[1] for r in rows]), reward, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.array([r[2] for r in rows]), info["terminated"])
    np.testing.assert_array_equal(np.array([r[3] for r in rows]), info["truncated"])
    for key in ("equity", "final_equity", "turnover", "cost", "gross_log_return", "episode_return"):
        np.testing.assert_allclose(np.array([r[4][key] for r in rows]), info[key], rtol=1e-5, atol=1e-7,
                                   err_msg=key)
    for key in ("symbol", "bar", "tradable", "episode_length"):
        np.testing.assert_array_equal(np.array([r[4][key] for r in rows]), info[key], err_msg=key)
    assert set(rows[0][4]) == set(info)


def test_gym_twin_passes_gymnasium_checker_and_samples_inside_role(data):
    params = make_env_params(window_size=8, episode_len=32, role=1)
    env = MarketGymEnv(data, params)
    check_env(env, skip_render_check=True)
    starts = np.asarray(data.role_start)[:, 1]
    ends = np.asarray(data.role_end)[:, 1]
    env.reset(seed=5)
    for _ in range(200):
        _, info = env.reset()
        s, t = info["symbol"], info["bar"]
        assert starts[s] + 7 <= t <= ends[s] - 1 - 32
