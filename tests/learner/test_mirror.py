"""Training in the mirrored market (tbjax.learner.mirror, ``ppo.mirror``).

* The parity table is the features' own: every feature computed on mirrored bars (each price
  p -> K/p, high <-> low, takers' buys <-> sells) is the plain one negated (parity -1) or kept
  (+1): exactly where the formula is odd or even in log price (log returns, the taker share around
  1/2, the volatilities), to within a tenth of its size where it is so to first order (trend, MACD,
  RSI around 50, ATR).
* An episode is mirrored with probability ``ppo.mirror``, and stays so from its first bar to its last.
* A rollout with ``ppo.mirror`` 1 acts on the plain rollout's windows with the odd columns negated
  (the windows are exogenous: the same keys visit the same bars), and the env trades the level the
  agent chose negated, so the position the agent sees next always has the sign of the level it
  chose (it would have the opposite sign if only the observation were mirrored).
* Rules: long-only levels and features of unknown parity are refused with the key to change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tbjax.config import load_config
from tbjax.data.features import MIRROR_PARITY, compute_features
from tbjax.env.observation import N_ACCOUNT_FEATURES, POSITION_INDEX
from tbjax.errors import InputError
from tbjax.learner.mirror import check_mirror_features, episode_mirrors, mirror_action, mirror_plan

EXACT = {"logret_1", "logret_5", "logret_20", "taker_buy_ratio", "taker_buy_ratio_mom5", "parkinson_vol20",
         "garman_klass_vol20", "realized_vol20", "volume_z20", "how_sin", "how_cos", "dow_sin", "dow_cos"}


def _bars(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]]) * np.exp(rng.normal(0.0, 0.002, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.004, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.004, n)))
    volume = rng.uniform(100.0, 1000.0, n)
    return {"open_time": 1_577_836_800_000 + 3_600_000 * np.arange(n, dtype=np.int64), "open": open_, "high": high,
            "low": low, "close": close, "volume": volume, "taker_buy_base": volume * rng.uniform(0.3, 0.7, n)}


def _mirrored(bars, k=1e4):
    return {**bars, "open": k / bars["open"], "high": k / bars["low"], "low": k / bars["high"],
            "close": k / bars["close"], "taker_buy_base": bars["volume"] - bars["taker_buy_base"]}


def test_the_parity_table_is_how_each_feature_answers_mirrored_bars():
    bars = _bars()
    plain, mirror = compute_features(bars), compute_features(_mirrored(bars))
    assert set(plain) <= set(MIRROR_PARITY)
    for name, f in plain.items():
        parity, centre = MIRROR_PARITY[name], {"rsi14": 50.0, "taker_buy_ratio": 0.5}.get(name, 0.0)
        ok = np.isfinite(f) & np.isfinite(mirror[name])
        f, m = f[ok].astype(np.float64) - centre, mirror[name][ok].astype(np.float64) - centre
        if name in EXACT:
            np.testing.assert_allclose(m, parity * f, rtol=2e-4, atol=2e-6, err_msg=name)
        else:  # ma20_ratio, the MACD lines, RSI and atr14_rel: odd / even to first order in the log price.
            # Off by under a tenth of the feature's own size on average; the other parity would be off by 2.
            assert np.mean(np.abs(m - parity * f)) < 0.1 * np.mean(np.abs(f)), name


class _Levels:
    position_levels = (-1.0, -0.5, 0.0, 0.5, 1.0)


def test_the_plan_negates_the_odd_columns_and_the_position_and_maps_each_level_to_its_negation():
    names = ("logret_1_z", "realized_vol20_z", "taker_buy_ratio_z")
    plan = mirror_plan(names, 3, _Levels, "discrete")
    assert plan.signs.shape == (N_ACCOUNT_FEATURES + 3 * 3,)
    np.testing.assert_array_equal(plan.signs[:N_ACCOUNT_FEATURES], [-1.0, 1.0, 1.0, 1.0])  # position first
    np.testing.assert_array_equal(plan.signs[N_ACCOUNT_FEATURES:], [-1.0, 1.0, -1.0] * 3)
    levels = np.asarray(_Levels.position_levels)
    np.testing.assert_array_equal(levels[plan.action_map], -levels)
    flags = jnp.asarray([True, False, True])
    np.testing.assert_array_equal(mirror_action(jnp.asarray([0, 0, 3]), flags, plan), [4, 0, 1])
    cont = mirror_plan(names, 3, _Levels, "continuous")
    np.testing.assert_allclose(mirror_action(jnp.asarray([[0.3], [0.3]]), flags[:2], cont), [[-0.3], [0.3]])

    class LongOnly:
        position_levels = (0.0, 0.5, 1.0)

    assert mirror_plan(names, 3, LongOnly, "discrete") is None
    assert mirror_plan(("my_signal_z",), 3, _Levels, "discrete") is None
    assert mirror_plan(names, 0, _Levels, "discrete") is None


def test_an_episode_is_mirrored_with_the_configured_probability_from_its_first_bar_to_its_last():
    from types import SimpleNamespace

    symbol, start = np.meshgrid(np.arange(4), np.arange(50_000), indexing="ij")
    symbol, start = jnp.asarray(symbol.ravel(), jnp.int32), jnp.asarray(start.ravel(), jnp.int32)
    for p in (0.25, 0.5):
        flags = np.asarray(episode_mirrors(SimpleNamespace(symbol=symbol, bar=start, episode_step=0 * start), p))
        assert abs(flags.mean() - p) < 0.005  # 200,000 episodes: standard error 0.001
        assert abs(np.mean(flags[1:] == flags[:-1]) - (p * p + (1 - p) ** 2)) < 0.005  # neighbours independent
        later = SimpleNamespace(symbol=symbol, bar=start + 37, episode_step=0 * start + 37)  # 37 steps on
        np.testing.assert_array_equal(episode_mirrors(later, p), flags)
    assert not np.any(episode_mirrors(SimpleNamespace(symbol=symbol, bar=start, episode_step=0 * start), 0.0))


def test_a_mirrored_rollout_sees_the_mirrored_window_and_trades_the_level_it_chose():
    from functools import partial

    from env_fixtures import toy_market
    from tbjax.agent.normalize import init_running_stats
    from tbjax.agent.popart import init_popart
    from tbjax.env.protocol import MarketEnv
    from tbjax.learner.rollout import rollout
    from tbjax.env.protocol import prepared
    from tbjax.learner.trainer import make_trainer
    from tbjax.run.assembly import make_env_params, make_hparams, make_spec

    names = ["logret_1_z", "realized_vol20_z", "taker_buy_ratio_z"]
    data = toy_market(lengths=(400, 300), n_features=3, seed=0, non_tradable_frac=0.0).replace(feature_names=tuple(names))
    env_params = make_env_params(window_size=4, episode_len=16, fee_bps=5.0, equity_floor=0.0,
                                 position_levels=(-1.0, 0.0, 1.0))
    spec = make_spec(n_envs=32, n_steps=48, n_epochs=1, n_minibatches=2, updates_per_chunk=1,
                     hidden_sizes=(8,), num_quantiles=8, holdout_size=32, n_groups=2, lr_schedule="constant")
    trainer = make_trainer(spec, MarketEnv(), env_params)
    ctx, data = trainer.context, prepared(MarketEnv(), data)
    carry = trainer.init(jax.random.PRNGKey(1), make_hparams(env_params), data)
    stats = init_running_stats((carry.last_obs.shape[-1],))
    plan = mirror_plan(names, 4, env_params, "discrete")
    levels = np.asarray(env_params.position_levels)
    trajs = {}
    for mirror in (0.0, 1.0):
        run = jax.jit(partial(rollout, ctx))
        trajs[mirror] = run(carry.params, stats, init_popart(), carry.env_state, carry.last_obs, jax.random.PRNGKey(5),
                            make_hparams(env_params, mirror=mirror), data)[0]
    plain, mirrored = trajs[0.0], trajs[1.0]
    window = slice(N_ACCOUNT_FEATURES, None)
    np.testing.assert_array_equal(np.asarray(mirrored.obs)[..., window],
                                  np.asarray(plain.obs)[..., window] * plan.signs[window])
    assert not np.array_equal(np.asarray(mirrored.action), np.asarray(plain.action))  # it acted on another input
    for traj in (plain, mirrored):
        chose = levels[np.asarray(traj.action)[:-1]]
        seen = np.asarray(traj.obs)[1:, :, POSITION_INDEX]  # the position the agent sees at the next step
        kept = ~np.asarray(traj.done)[:-1]  # an auto-reset starts the next step flat
        assert kept.sum() > 1000 and (np.abs(chose[kept]) > 0).sum() > 500
        np.testing.assert_array_equal(np.sign(seen[kept]), np.sign(chose[kept]))


def test_mirror_needs_levels_with_a_mirror_image_and_features_of_known_parity():
    with pytest.raises(InputError, match=r"ppo.mirror = 0.5 .* env.position_levels = \[0.0, 0.5, 1.0\]"):
        load_config(None, ["ppo.mirror=0.5", "env.position_levels=[0.0, 0.5, 1.0]"])
    with pytest.raises(InputError, match=r"env.min_position = 0.0 and env.max_position = 1.0"):
        load_config(None, ["ppo.mirror=0.5", "env.action_mode=continuous", "env.min_position=0.0",
                           "env.max_position=1.0"])
    with pytest.raises(InputError, match=r"ppo.mirror must lie in \[0, 1\]"):
        load_config(None, ["ppo.mirror=1.5", "env.position_levels=[-1.0, 0.0, 1.0]"])
    assert load_config(None, ["ppo.mirror=0.5", "env.position_levels=[-1.0, 0.0, 1.0]"]).ppo.mirror == 0.5
    with pytest.raises(InputError, match="'my_signal' is not one of tbjax's features.*features.columns"):
        check_mirror_features(0.5, ("logret_1_z", "my_signal_z"))
    check_mirror_features(0.0, ("my_signal_z",))  # off: any feature goes
