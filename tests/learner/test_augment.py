"""Training-time augmentation (tbjax.learner.augment): the draws have the documented distribution,
the account values and window-less envs are never touched, 0 / 0 is the identity, and a training
run's rollouts really act on (and store) the jittered window: the observation statistics the
learner accumulates grow by exactly sigma^2 on the window columns."""

import jax
import jax.numpy as jnp
import numpy as np

from tbjax.env.observation import N_ACCOUNT_FEATURES
from tbjax.learner.augment import augment_window, rollout_scales, window_offset
from tbjax.learner.trainer import make_trainer
from tbjax.run.assembly import make_env_params, make_hparams, make_spec

KEY = jax.random.PRNGKey(3)


def _obs(n=512, dim=4 + 40):
    return jax.random.normal(jax.random.PRNGKey(11), (n, dim), jnp.float32)


def test_off_is_the_identity_and_windowless_envs_are_never_touched():
    obs = _obs()
    ones = jnp.ones((obs.shape[0], 1), jnp.float32)
    np.testing.assert_array_equal(augment_window(obs, KEY, ones, jnp.float32(0.0), 4), obs)
    np.testing.assert_array_equal(augment_window(obs, KEY, ones * 2.0, jnp.float32(1.0), None), obs)
    assert window_offset(0) is None and window_offset(8) == N_ACCOUNT_FEATURES


def test_jitter_is_gaussian_with_the_configured_sigma_on_the_window_only():
    obs, sigma = _obs(n=2048), 0.5
    out = np.asarray(augment_window(obs, KEY, jnp.ones((obs.shape[0], 1)), jnp.float32(sigma), N_ACCOUNT_FEATURES))
    np.testing.assert_array_equal(out[:, :N_ACCOUNT_FEATURES], np.asarray(obs)[:, :N_ACCOUNT_FEATURES])
    noise = (out - np.asarray(obs))[:, N_ACCOUNT_FEATURES:].ravel()  # 81,920 draws
    assert abs(noise.mean()) < 0.01  # standard error 0.5 / sqrt(81920) = 0.0017
    assert abs(noise.std() / sigma - 1.0) < 0.01
    kurtosis = np.mean(((noise - noise.mean()) / noise.std()) ** 4)
    assert abs(kurtosis - 3.0) < 0.1  # Gaussian, not uniform (1.8)


def test_magnitude_scaling_is_one_log_uniform_factor_per_env():
    s, n = 0.3, 8192
    scales = np.asarray(rollout_scales(KEY, n, jnp.float32(s)))[:, 0]
    logs = np.log(scales)
    assert logs.min() >= -s - 1e-6 and logs.max() <= s + 1e-6
    assert abs(logs.mean()) < 0.01 and abs(logs.var() / (s * s / 3.0) - 1.0) < 0.05  # U(-s, s): var s^2/3
    obs = _obs(n=n)
    out = np.asarray(augment_window(obs, KEY, jnp.asarray(scales)[:, None], jnp.float32(0.0), N_ACCOUNT_FEATURES))
    np.testing.assert_allclose(out[:, N_ACCOUNT_FEATURES:], np.asarray(obs)[:, N_ACCOUNT_FEATURES:] * scales[:, None],
                               rtol=1e-6)
    np.testing.assert_array_equal(out[:, :N_ACCOUNT_FEATURES], np.asarray(obs)[:, :N_ACCOUNT_FEATURES])
    np.testing.assert_array_equal(rollout_scales(KEY, 16, jnp.float32(0.0)), np.ones((16, 1), np.float32))


def test_training_rollouts_act_on_the_jittered_window():
    """The running observation variance of the window columns is the plain run's plus sigma^2.

    The market window is exogenous (the bars an env visits depend on its keys, not on its
    actions), so both runs see the same windows and only the jitter separates their statistics.
    """
    from env_fixtures import toy_market
    from tbjax.agent.normalize import running_variance
    from tbjax.env.protocol import MarketEnv

    data = toy_market(lengths=(400, 300), n_features=3, seed=0)
    env_params = make_env_params(window_size=8, episode_len=16, fee_bps=5.0, equity_floor=0.0)
    spec = make_spec(n_envs=64, n_steps=16, n_epochs=1, n_minibatches=2, updates_per_chunk=4,
                     hidden_sizes=(8,), num_quantiles=8, holdout_size=64, n_groups=2, lr_schedule="constant")
    trainer = make_trainer(spec, MarketEnv(), env_params)
    sigma = 0.5
    variances = {}
    for name, hp in {"plain": make_hparams(env_params), "jitter": make_hparams(env_params, obs_noise=sigma)}.items():
        carry = trainer.init(jax.random.PRNGKey(1), hp, data)
        carry, _ = trainer.train_chunk(carry, hp, data)
        variances[name] = np.asarray(running_variance(carry.obs_stats))[N_ACCOUNT_FEATURES:]
    gap = variances["jitter"] - variances["plain"]
    # 4 updates x 64 envs x 16 steps + the init's statistics-free holdout: ~4,096 draws per column
    np.testing.assert_allclose(gap.mean(), sigma ** 2, rtol=0.05)
    assert np.all(np.abs(gap - sigma ** 2) < 0.06)
    assert trainer.train_chunk._cache_size() == 1  # a new obs_noise value never recompiles
