"""The feature z-score is applied where observations are built, by one float32 transform: the JAX
env's window (scaled per window, or from the market scaled once per program), the Gymnasium twin's
window and ``FeaturePipeline.transform`` give bit-identical numbers, and those numbers are the
hand-computed z-scores (NaN → 0, a dead column → 0, clip)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tbjax.data.bars import market_from_tables
from tbjax.data.market import fold_view, scaled_once, stack_folds
from tbjax.data.pipeline import FeaturePipeline
from tbjax.env import market
from tbjax.env.gym import MarketGymEnv
from tbjax.run.assembly import make_env_params

N, WINDOW, TRAIN = 120, 5, 60
COLUMNS = ["trend", "gappy", "late"]


def tables():
    t = np.arange(N, dtype=np.float64)
    close = 100.0 + np.sin(t / 7.0)
    gappy = np.cos(t / 3.0) * 4.0
    gappy[[3, 70, 90]] = np.nan  # an undefined value on a train row and on later rows
    late = np.where(t < TRAIN, np.nan, t)  # no finite train value: scales to 0 everywhere
    table = {"open_time": (t * 3_600_000).astype(np.int64), "open": close, "high": close + 0.5,
             "low": close - 0.5, "close": close, "volume": np.full(N, 10.0), "tradable": np.ones(N, bool),
             "trend": t * 0.5, "gappy": gappy, "late": late}
    return {"ONE": table}


@pytest.fixture(scope="module")
def setup():
    tabs = tables()
    pipe = FeaturePipeline(COLUMNS, clip=1.5).fit(list(tabs.values()), [np.arange(N) < TRAIN])
    data = market_from_tables(pipe, tabs, {"ONE": [(0, TRAIN), (TRAIN, 90), (90, N)]}, COLUMNS)
    return tabs, pipe, data


def hand_z(tabs):
    table = tabs["ONE"]
    out = []
    for c in COLUMNS:
        x = np.asarray(table[c], np.float64)
        train = x[:TRAIN][np.isfinite(x[:TRAIN])]
        if not len(train):
            out.append(np.zeros(N))
            continue
        z = (x - train.mean()) / train.std()
        out.append(np.clip(np.where(np.isfinite(z), z, 0.0), -1.5, 1.5))
    return np.stack(out, 1)


def test_transform_is_the_hand_z_score(setup):
    tabs, pipe, _ = setup
    out = pipe.transform(tabs["ONE"])
    z = np.stack([out[f"{c}_z"] for c in COLUMNS], 1)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, hand_z(tabs), rtol=1e-6, atol=1e-6)
    assert np.all(z[:, 2] == 0) and np.abs(z).max() == pytest.approx(1.5)


@pytest.mark.parametrize("role,bar", [(0, WINDOW - 1), (0, 40), (1, 75), (2, 100)])
def test_env_twin_and_transform_see_the_same_float32_window(setup, role, bar):
    tabs, pipe, data = setup
    out = pipe.transform(tabs["ONE"])
    expected = np.stack([out[f"{c}_z"] for c in COLUMNS], 1)[bar - WINDOW + 1:bar + 1].reshape(-1)
    params = make_env_params(window_size=WINDOW, episode_len=8, role=role)
    state = market.fresh_account(0, bar)
    env_obs = np.asarray(jax.jit(market.observe)(state, params, data))
    once = jax.jit(lambda s, p, d: market.observe(s, p, scaled_once(d)))(state, params, data)
    np.testing.assert_array_equal(np.asarray(once), env_obs)
    twin = MarketGymEnv(data, params)
    twin_obs, _ = twin.reset(seed=0, options={"symbol": 0, "bar": bar})
    np.testing.assert_array_equal(env_obs[4:], expected)
    np.testing.assert_array_equal(twin_obs[4:], expected)
    assert np.asarray(data.features).dtype == np.float32 and np.isnan(np.asarray(data.features)).any()  # raw


def test_stacked_folds_observe_each_folds_scaling_on_one_copy(setup):
    """vmap over two fold views of one market: each fold's window is z-scored by its own statistics."""
    tabs, pipe, data = setup
    other = FeaturePipeline(COLUMNS, clip=1.5).fit(list(tabs.values()), [np.arange(N) < 90])
    views = [data, fold_view(data, other.scaling(), [[(0, 90), (90, 100), (100, N)]])]
    stacked, axes = stack_folds(views)
    assert stacked.features is data.features and stacked.scaling.shift.shape == (2, len(COLUMNS))
    params = make_env_params(window_size=WINDOW, episode_len=8, role=2)
    state = market.fresh_account(0, 110)
    obs = jax.jit(jax.vmap(lambda d: market.observe(state, params, d), in_axes=(axes,)))(stacked)
    once = jax.jit(jax.vmap(lambda d: market.observe(state, params, scaled_once(d)), in_axes=(axes,)))(stacked)
    np.testing.assert_array_equal(np.asarray(once), np.asarray(obs))
    for k, p in enumerate((pipe, other)):
        out = p.transform(tabs["ONE"])
        want = np.stack([out[f"{c}_z"] for c in COLUMNS], 1)[110 - WINDOW + 1:111].reshape(-1)
        np.testing.assert_array_equal(np.asarray(obs[k, 4:]), want)
    assert not np.array_equal(np.asarray(obs[0]), np.asarray(obs[1]))
    with pytest.raises(ValueError, match="shared field"):
        stack_folds([data, data.replace(close=jnp.array(data.close))])
