"""Answers the JAX market env must give: hand-computed accounts, no lookahead, role boundaries,
determinism, auto-reset and bad-input messages."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from env_fixtures import explicit_market, toy_market
from tbjax.data.market import ROLE_TRAIN, ROLE_VAL
from tbjax.env import market
from tbjax.errors import InputError
from tbjax.run.assembly import make_env_params


@pytest.fixture(scope="module")
def data():
    return toy_market(lengths=(400, 300), n_features=3, seed=0)


# ------------------------------------------------------------------ hand-computed accounting
HAND_BARS = dict(  # bar:      0      1      2      3      4      5
    open_=[100.0, 101.0, 103.0, 100.0, 97.0, 100.0],
    close=[100.0, 102.0, 101.0, 98.0, 99.0, 101.0],
    volatility=[0.01, 0.02, 0.01, 0.01, 0.01, 0.01],
    volume=[1000.0, 1000.0, 2000.0, 500.0, 0.0, 1000.0],
    tradable=[True, True, True, True, False, True],
)


def test_hand_computed_costs_buy_trim_flip_untradable_borrow():
    data = explicit_market(**HAND_BARS)
    mult = np.ones(168)
    mult[0] = 2.0  # every hand bar is hour-of-week 0: spread and slippage doubled
    params = make_env_params(
        window_size=1, episode_len=10, position_levels=(-1.0, 0.0, 0.5, 1.0), fee_bps=10.0,
        half_spread_bps=5.0, slippage_k=0.1, impact_coef=0.01, borrow_bps_per_bar=20.0,
        turnover_penalty=0.001, capital=1e4, equity_floor=0.1, liquidity_multipliers=mult)
    # actions: buy 1.0, trim to 0.5, flip to -1.0, go flat (bar 4 untradable: ignored), short -1.0
    actions = [3, 2, 0, 1, 0]

    def rate(vol, turnover, equity_open, volume, open_price):
        participation = turnover * equity_open * 1e4 / (volume * open_price)
        return 10e-4 + 2.0 * (5e-4 + 0.1 * vol) + 0.01 * math.sqrt(participation)

    # step 0: flat -> long 1.0 at open 101, mark at 102
    e0 = 1.0
    tc0 = 1.0 * rate(0.01, 1.0, 1.0, 1000.0, 101.0)
    e1 = e0 * (1 - tc0) * (1 + 1.0 * (102 - 101) / 101)
    p1 = 1.0
    # step 1: gap 102 -> 103 on 1.0, trim to 0.5, intrabar 103 -> 101
    g = (103 - 102) / 102
    eo = e1 * (1 + g)
    tc1 = 0.5 * rate(0.02, 0.5, eo, 2000.0, 103.0)
    r = (101 - 103) / 103
    e2 = eo * (1 - tc1) * (1 + 0.5 * r)
    p2 = 0.5 * (1 + r) / (1 + 0.5 * r)
    # step 2: gap 101 -> 100 drifts p2, flip to -1.0, intrabar 100 -> 98, borrow on the short
    g = (100 - 101) / 101
    eo = e2 * (1 + p2 * g)
    p_open = p2 * (1 + g) / (1 + p2 * g)
    turn2 = abs(-1.0 - p_open)
    tc2 = turn2 * rate(0.01, turn2, eo, 500.0, 100.0)
    r = (98 - 100) / 100
    p3 = -1.0 * (1 + r) / (1 - r)
    b2 = 20e-4 * -p3
    e3 = eo * (1 - tc2) * (1 - r) * (1 - b2)
    entry_short = eo
    # step 3: bar 4 untradable -> hold the drifted short, no trading cost, still borrow
    g = (97 - 98) / 98
    eo = e3 * (1 + p3 * g)
    p_open = p3 * (1 + g) / (1 + p3 * g)
    r = (99 - 97) / 97
    p4 = p_open * (1 + r) / (1 + p_open * r)
    b3 = 20e-4 * -p4
    e4 = eo * (1 + p_open * r) * (1 - b3)
    # step 4: rebalance the drifted short back to -1.0 at open 100, intrabar 100 -> 101, borrow
    g = (100 - 99) / 99
    eo = e4 * (1 + p4 * g)
    p_open = p4 * (1 + g) / (1 + p4 * g)
    turn4 = abs(-1.0 - p_open)
    tc4 = turn4 * rate(0.01, turn4, eo, 1000.0, 100.0)
    r = (101 - 100) / 100
    p5 = -1.0 * (1 + r) / (1 - r)
    b4 = 20e-4 * -p5
    e5 = eo * (1 - tc4) * (1 - r) * (1 - b4)

    equities = [e1, e2, e3, e4, e5]
    turnovers = [1.0, 0.5, turn2, 0.0, turn4]
    costs = [tc0, tc1, tc2 + b2 - tc2 * b2, b3, tc4 + b4 - tc4 * b4]
    positions = [p1, p2, p3, p4, p5]
    prev = [e0] + equities[:-1]

    state = market.reset_at(params, data, 0, 0)
    step = jax.jit(market.market_step)
    for k, action in enumerate(actions):
        state, reward, terminated, truncated, info = step(state, jnp.int32(action), params, data)
        np.testing.assert_allclose(float(info["equity"]), equities[k], rtol=1e-5, err_msg=f"equity {k}")
        np.testing.assert_allclose(float(state.position), positions[k], rtol=1e-5, err_msg=f"position {k}")
        np.testing.assert_allclose(float(info["turnover"]), turnovers[k], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(info["cost"]), costs[k], rtol=1e-5, err_msg=f"cost {k}")
        expected_reward = math.log(equities[k] / prev[k]) - 0.001 * turnovers[k]
        np.testing.assert_allclose(float(reward), expected_reward, rtol=1e-5, atol=2e-7)
        assert bool(info["tradable"]) == (k != 3)
        assert not bool(terminated)
        assert bool(truncated) == (k == 4)  # decision at bar 5 would need a fill bar 6: end of rows
    # [account, window]: short entered at step 2's open and held 3 bars; the window is bar 5's row
    obs = market.observe(state, params, data)
    np.testing.assert_allclose(np.asarray(obs), [p5, math.log(e5 / entry_short), 3 / 10, 1 - e5 / e1, 5.0],
                               rtol=1e-5, atol=1e-6)


def test_equity_floor_terminates_not_truncates():
    data = explicit_market(open_=[100, 100, 60, 60], close=[100, 100, 60, 60], volatility=[0.0] * 4,
                           volume=[1e6] * 4, tradable=[True] * 4)
    params = make_env_params(window_size=1, episode_len=10, fee_bps=0.0, half_spread_bps=0.0,
                             slippage_k=0.0, impact_coef=0.0, equity_floor=0.7)
    state = market.reset_at(params, data, 0, 0)
    state, _, terminated, truncated, _ = market.market_step(state, 2, params, data)  # long 1.0 at 100
    assert not bool(terminated) and not bool(truncated)
    state, reward, terminated, truncated, info = market.market_step(state, 2, params, data)  # gap to 60
    np.testing.assert_allclose(float(info["equity"]), 0.6, rtol=1e-6)
    np.testing.assert_allclose(float(reward), math.log(0.6), rtol=1e-6)
    assert bool(terminated) and not bool(truncated)


def test_continuous_action_maps_linearly_and_clips():
    params = make_env_params(action_mode="continuous", min_position=-0.5, max_position=1.5)
    got = [float(market.target_position(jnp.float32(a), params)) for a in (-1.0, 0.0, 0.5, 1.0, 3.0, -7.0)]
    np.testing.assert_allclose(got, [-0.5, 0.5, 1.0, 1.5, 1.5, -0.5], rtol=1e-6)
    assert market.n_actions(params) == 1 and market.n_actions(make_env_params()) == 3


# ------------------------------------------------------------------ no lookahead
def test_perturbing_bars_after_t_leaves_the_past_unchanged(data):
    params = make_env_params(window_size=8, episode_len=64, position_levels=(-1.0, 0.0, 1.0),
                             borrow_bps_per_bar=5.0)
    start, cut, n_steps = 50, 80, 40  # decisions at bars 50..89; rows > cut are perturbed
    actions = np.random.default_rng(0).integers(0, 3, n_steps)

    def run(d):
        state, out = market.reset_at(params, d, 0, start), []
        for a in actions:
            obs = market.observe(state, params, d)
            state, reward, *_ = market.market_step(state, jnp.int32(a), params, d)
            out.append((np.asarray(obs), float(reward)))
        return out

    rng = np.random.default_rng(1)
    later = np.arange(data.open.shape[1]) > cut

    def bump(x, scale):
        noise = rng.uniform(1 - scale, 1 + scale, x.shape).astype(np.float32)
        mask = later.reshape((1, -1) + (1,) * (x.ndim - 2))
        return jnp.asarray(np.where(mask, np.asarray(x) * noise, np.asarray(x)))

    perturbed = data.replace(open=bump(data.open, 0.05), close=bump(data.close, 0.05),
                             volume=bump(data.volume, 0.5), volatility=bump(data.volatility, 0.5),
                             features=bump(data.features, 0.5) + jnp.asarray(later[None, :, None] * 3.0))
    base, moved = run(data), run(perturbed)
    for k in range(n_steps):
        t = start + k
        if t <= cut:  # observation at decision bar t uses rows <= t
            np.testing.assert_array_equal(base[k][0], moved[k][0])
        if t + 1 <= cut:  # reward of the decision at t is marked at bar t+1
            assert base[k][1] == moved[k][1]
    # the perturbation has teeth: the first reward marked on a changed bar differs
    assert base[cut - start][1] != moved[cut - start][1]
    assert not np.array_equal(base[cut - start + 1][0], moved[cut - start + 1][0])


# ------------------------------------------------------------------ role boundaries
@pytest.mark.parametrize("role", [ROLE_TRAIN, ROLE_VAL])
def test_episodes_never_touch_rows_outside_their_role(data, role):
    window, n_envs, n_steps = 8, 512, 2000
    params = make_env_params(window_size=window, episode_len=32, role=role, symbol_sampling="length",
                             position_levels=(-1.0, 0.0, 1.0), impact_coef=0.0, equity_floor=0.8)
    market.check_data(params, data)
    vstep = jax.vmap(functools.partial(market.step, return_final_obs=False), in_axes=(0, 0, 0, None, None))

    @jax.jit
    def rollout(key):
        _, states = jax.vmap(market.reset, in_axes=(0, None, None))(jax.random.split(key, n_envs), params, data)

        def body(carry, _):
            key, states = carry
            key, k_act, k_env = jax.random.split(key, 3)
            actions = jax.random.randint(k_act, (n_envs,), 0, 3)
            _, states, _, done, info = vstep(jax.random.split(k_env, n_envs), states, actions, params, data)
            return (key, states), (info["symbol"], info["bar"], done)

        return jax.lax.scan(body, (key, states), None, n_steps)[1]

    symbol, bar, done = map(np.asarray, rollout(jax.random.PRNGKey(role)))
    starts = np.asarray(data.role_start)[:, role][symbol]
    ends = np.asarray(data.role_end)[:, role][symbol]
    first_window_row, fill_row = bar - (window - 1), bar + 1
    assert (first_window_row >= starts).all() and (fill_row < ends).all()
    # the sampled range is exactly the allowed one: both edges are reached
    assert (first_window_row == starts).any() and (fill_row == ends - 1).any()
    assert done.sum() > 10 * n_envs


# ------------------------------------------------------------------ determinism, auto-reset
def test_same_key_same_trajectory_and_vmap_equals_loop(data):
    params = make_env_params(window_size=8, episode_len=16, action_mode="continuous",
                             min_position=-1.0, max_position=1.0, borrow_bps_per_bar=3.0)
    n_envs, n_steps = 4, 40
    keys = jax.random.split(jax.random.PRNGKey(3), n_steps * n_envs + n_envs).reshape(n_steps + 1, n_envs, 2)
    actions = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (n_steps, n_envs, 1)), jnp.float32)

    def trajectory(step_fn, reset_fn, reset_keys, step_keys, acts):
        _, state = reset_fn(reset_keys, params, data)

        def body(state, xs):
            obs, state, reward, done, _ = step_fn(xs[0], state, xs[1], params, data)
            return state, (obs, reward, done)
        return jax.lax.scan(body, state, (step_keys, acts))[1]

    batched = jax.jit(functools.partial(trajectory, jax.vmap(market.step, in_axes=(0, 0, 0, None, None)),
                                        jax.vmap(market.reset, in_axes=(0, None, None))))
    single = jax.jit(functools.partial(trajectory, market.step, market.reset))
    first = jax.tree_util.tree_map(np.asarray, batched(keys[0], keys[1:], actions))
    second = jax.tree_util.tree_map(np.asarray, batched(keys[0], keys[1:], actions))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    for e in range(n_envs):
        obs, reward, done = single(keys[0, e], keys[1:, e], actions[:, e])
        # vmapped and scalar code may round log(equity / entry) differently by an f32 ulp of 1.0
        np.testing.assert_allclose(np.asarray(obs), first[0][:, e], rtol=1e-6, atol=5e-7)
        np.testing.assert_allclose(np.asarray(reward), first[1][:, e], rtol=1e-6, atol=5e-7)
        np.testing.assert_array_equal(np.asarray(done), first[2][:, e])
    assert first[2].sum() >= n_envs * 2  # several auto-resets were exercised


def test_auto_reset_returns_fresh_state_and_final_obs(data):
    # no shaping: episode_return sums the rewards, which then equal the log equity changes
    params = make_env_params(window_size=8, episode_len=3, fee_bps=5.0, slippage_k=0.05, impact_coef=0.01,
                             turnover_penalty=0.0)
    state = market.reset_at(params, data, 1, 100)
    key = jax.random.PRNGKey(9)
    for k in range(3):
        pre = state
        obs, state, reward, done, info = market.step(key, state, 2, params, data)
    assert bool(done) and bool(info["truncated"]) and int(info["episode_length"]) == 3
    next_state, *_ = market.market_step(pre, 2, params, data)
    np.testing.assert_array_equal(np.asarray(info["final_obs"]), np.asarray(market.observe(next_state, params, data)))
    assert float(state.equity) == 1.0 and int(state.episode_step) == 0 and float(state.position) == 0.0
    np.testing.assert_array_equal(np.asarray(obs), np.asarray(market.observe(state, params, data)))
    np.testing.assert_allclose(float(info["final_equity"]), float(next_state.equity))
    np.testing.assert_allclose(float(info["episode_return"]), math.log(float(next_state.equity)), rtol=1e-5)


def test_auto_reset_with_raw_per_env_keys_reaches_every_symbol(data):
    # A caller passing PRNGKey(i) per env (raw keys, words (0, i)) must get uniform auto-resets,
    # not symbol 0 for every env.
    n = 4000
    params = make_env_params(window_size=8, episode_len=1)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(n))
    states = jax.vmap(lambda s: market.reset_at(params, data, 0, 100 + s % 50))(jnp.arange(n))
    actions = jnp.zeros(n, jnp.int32)
    _, new, _, done, _ = jax.jit(jax.vmap(market.step, in_axes=(0, 0, 0, None, None)))(keys, states, actions, params, data)
    assert bool(np.all(np.asarray(done)))
    share = float(np.mean(np.asarray(new.symbol) == 1))
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / n), share


def test_length_weighted_sampling_matches_row_counts(data):
    n = 20000
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    for sampling, p0 in (("length", 240 / (240 + 180)), ("uniform", 0.5)):
        params = make_env_params(window_size=8, episode_len=32, symbol_sampling=sampling)
        _, states = jax.jit(jax.vmap(market.reset, in_axes=(0, None, None)))(keys, params, data)
        share = float(np.mean(np.asarray(states.symbol) == 0))
        assert abs(share - p0) < 4 * math.sqrt(p0 * (1 - p0) / n), (sampling, share)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, fragment", [
    (dict(position_levels=()), "at least two"),
    (dict(position_levels=(1.0,)), "at least two"),
    (dict(position_levels=(0.0, 1.0, 0.5)), "sorted"),
    (dict(position_levels=(0.0, 0.0, 1.0)), "sorted"),
    (dict(position_levels=(0.0, float("nan"))), "non-finite"),
    (dict(action_mode="box"), "action_mode"),
    (dict(symbol_sampling="volume"), "symbol_sampling"),
    (dict(fee_bps=-1.0), "fee_bps"),
    (dict(min_position=1.0, max_position=-1.0), "min_position"),
    (dict(liquidity_multipliers=np.ones(24)), "168"),
    (dict(window=32), "unknown"),
])
def test_bad_settings_raise_input_error(kwargs, fragment):
    with pytest.raises(InputError, match=fragment):
        make_env_params(**kwargs)


def test_short_role_names_symbol_and_role(data):
    params = make_env_params(window_size=16, episode_len=60, role=ROLE_VAL)
    with pytest.raises(InputError, match=r"symbol 'SYM1' has 60 rows in role 'val' .* 77 are needed"):
        market.check_data(params, data)


def test_liquidity_file_is_validated(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps([1.0] * 100 + [1.5] * 68))
    assert market.load_liquidity_multipliers(good)[100] == np.float32(1.5)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1.0] * 167 + [0.0]))
    with pytest.raises(InputError, match="hour 167"):
        market.load_liquidity_multipliers(bad)
    with pytest.raises(InputError, match="not found"):
        market.load_liquidity_multipliers(tmp_path / "missing.json")


def test_throughput_benchmark_quick_run_writes_results(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "env_throughput.py"
    spec = importlib.util.spec_from_file_location("env_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "env_throughput.json"
    module.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert isinstance(result["device"], str) and result["results"][0]["n_envs"] == 64
    assert all(r["tbjax_steps_per_s"] > 0 and r["gym_steps_per_s"] > 0 for r in result["results"])
