"""Trainer tests with known answers: CVaR changes the chosen action, PopArt makes training
reward-scale equivariant, truncation bootstraps to the closed-form value, no recompile across
hyperparameters, vmap over trials equals separate runs, the NaN guard, the market env smoke run.

Compiled trainers are shared through module-scope fixtures (one compile per trainer).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from known_envs import PhaseCycleEnv, RiskChoiceEnv, make_known_params, phase_cycle_values
from tbjax.env.protocol import MarketEnv
from tbjax.learner.trainer import NonFiniteUpdateError, make_trainer, raise_if_nonfinite
from tbjax.run.assembly import make_env_params, make_hparams, make_spec

RISK_SPEC = make_spec(
    n_envs=256, n_steps=4, n_epochs=4, n_minibatches=4, updates_per_chunk=50, total_updates=100,
    lr_schedule="linear", hidden_sizes=(16,), num_quantiles=16, holdout_size=64)
N_CHUNKS = RISK_SPEC.total_updates // RISK_SPEC.updates_per_chunk
CONST_OBS = jnp.ones((RiskChoiceEnv.obs_dim,), jnp.float32)


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _p_safe(trainer, params):
    logits, _ = trainer.apply(params, CONST_OBS)
    return float(jax.nn.softmax(logits)[0])


@pytest.fixture(scope="module")
def risk():
    """One compiled trainer on the risky-vs-safe bandit, several hyperparameter settings."""
    trainer = make_trainer(RISK_SPEC, RiskChoiceEnv(), make_known_params())
    settings = {
        "neutral": make_hparams(make_known_params(), learning_rate=1e-3, cvar_weight=0.0),
        "cvar": make_hparams(make_known_params(), learning_rate=1e-3, cvar_alpha=0.1, cvar_weight=1.0),
        "clip": make_hparams(make_known_params(), learning_rate=2e-3, clip_eps=0.1),
        "entropy": make_hparams(make_known_params(), learning_rate=5e-4, ent_coef=0.05, cvar_weight=0.5),
        "nan_reward": make_hparams(make_known_params(nan_reward=True)),
        "absurd_lr": make_hparams(make_known_params(), learning_rate=1e38, max_grad_norm=1e30),
    }
    runs = {}
    for name, hp in settings.items():
        carry = trainer.init(jax.random.PRNGKey(0), hp, None)
        init_params, init_obs_stats = _host(carry.params), _host(carry.obs_stats)
        chunks = []
        for _ in range(N_CHUNKS if name in ("neutral", "cvar") else 1):
            carry, metrics = trainer.train_chunk(carry, hp, None)
            chunks.append(_host(metrics))
        runs[name] = {"init_params": init_params, "init_obs_stats": init_obs_stats, "chunks": chunks, "carry": carry,
                      "p_safe": _p_safe(trainer, carry.params)}
    cache_size = trainer.train_chunk._cache_size()
    return {"trainer": trainer, "hp": settings, "runs": runs, "cache_size": cache_size}


def test_risk_neutral_policy_takes_the_risky_arm(risk):
    assert 1.0 - risk["runs"]["neutral"]["p_safe"] >= 0.9


def test_cvar_policy_takes_the_safe_arm(risk):
    assert risk["runs"]["cvar"]["p_safe"] >= 0.9


def test_no_recompile_across_hyperparameters(risk):
    # Six hyperparameter settings (lr, clip, entropy, CVaR weight, env params) and 8 calls.
    assert risk["cache_size"] == 1


def test_episode_statistics_of_one_step_episodes(risk):
    # Every step ends an episode of length 1 whose return is that step's reward.
    m = risk["runs"]["neutral"]["chunks"][0]
    n = RISK_SPEC.n_envs * RISK_SPEC.n_steps
    np.testing.assert_array_equal(m["episode/count"], np.full(RISK_SPEC.updates_per_chunk, n))
    np.testing.assert_array_equal(m["episode/length_mean"], 1.0)
    np.testing.assert_allclose(m["episode/return_mean"], m["reward_mean"], rtol=1e-5, atol=1e-6)
    assert int(risk["runs"]["neutral"]["carry"].episode_count) == n * RISK_SPEC.total_updates
    assert m["lr"].shape == (RISK_SPEC.updates_per_chunk,) and np.ndim(m["popart/holdout_ev"]) == 0
    # Linear decay from 1e-3 over 100 updates: update u applies 1e-3 * (1 - u / 100).
    np.testing.assert_allclose(m["lr"], 1e-3 * (1 - np.arange(50) / 100), rtol=1e-5)


def test_vmap_over_trials_equals_separate_runs(risk):
    trainer, names = risk["trainer"], ["neutral", "cvar", "clip", "entropy"]
    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    hp = jax.tree_util.tree_map(stack, *[risk["hp"][n] for n in names])
    carries = jax.tree_util.tree_map(
        stack, *[trainer.init(jax.random.PRNGKey(0), risk["hp"][n], None) for n in names])
    _, metrics = jax.vmap(trainer.train_chunk, in_axes=(0, 0, None))(carries, hp, None)
    for i, name in enumerate(names):
        separate = risk["runs"][name]["chunks"][0]
        for key in ("loss/value", "loss/policy", "reward_mean", "popart/mu", "ev/raw", "lr"):
            np.testing.assert_allclose(np.asarray(metrics[key])[i], separate[key], rtol=2e-3,
                                       atol=2e-4, err_msg=f"{name} {key}")


def test_nan_reward_is_skipped_and_raised(risk):
    run = risk["runs"]["nan_reward"]
    m = run["chunks"][0]
    np.testing.assert_array_equal(m["nan_guard_count"], np.arange(1, RISK_SPEC.updates_per_chunk + 1))
    # Every update was skipped: the parameters are exactly the initial ones.
    chex.assert_trees_all_equal(_host(run["carry"].params), run["init_params"])
    # ... and so are the observation statistics: a discarded update merges none of its rollout.
    chex.assert_trees_all_equal(_host(run["carry"].obs_stats), run["init_obs_stats"])
    with pytest.raises(NonFiniteUpdateError, match="update 0") as err:
        raise_if_nonfinite(m, update_offset=0)
    assert err.value.metric.startswith("loss/")


def test_absurd_learning_rate_trips_the_guard(risk):
    run = risk["runs"]["absurd_lr"]
    m = run["chunks"][0]
    assert m["nan_guard_count"][-1] >= 1
    params = jax.tree_util.tree_leaves(run["carry"].params)
    assert all(np.all(np.isfinite(np.asarray(p))) for p in params)
    with pytest.raises(NonFiniteUpdateError):
        raise_if_nonfinite(m, update_offset=100)
    raise_if_nonfinite(risk["runs"]["neutral"]["chunks"][-1], update_offset=50)  # healthy: silent


PHASES, GAMMA = 4, 0.9
PHASE_SPEC = make_spec(n_envs=32, n_steps=8, n_epochs=4, n_minibatches=4, updates_per_chunk=60,
                       hidden_sizes=(32,), num_quantiles=8, holdout_size=64, lr_schedule="constant")


@pytest.fixture(scope="module")
def phase():
    """PhaseCycleEnv (time-limit truncation) trained at reward scale 1 and 1000."""
    trainer = make_trainer(PHASE_SPEC, PhaseCycleEnv(PHASES, time_limit=7), make_known_params())
    out = {}
    for scale in (1.0, 1000.0):
        hp = make_hparams(make_known_params(scale), gamma=GAMMA, popart_beta=0.05, learning_rate=1e-3)
        carry = trainer.init(jax.random.PRNGKey(0), hp, None)
        for _ in range(2):
            carry, metrics = trainer.train_chunk(carry, hp, None)
        values = trainer.value_quantiles(carry.params, carry.obs_stats, carry.popart,
                                         jnp.eye(PHASES)).mean(-1)
        out[scale] = {"metrics": _host(metrics), "values": np.asarray(values)}
    return out


def test_truncation_bootstraps_to_the_infinite_horizon_value(phase):
    # Episodes are cut after 7 steps; bootstrapping V(final_obs) on truncation makes the critic
    # learn the never-ending cycle's value sum_k gamma^k r(p + k) (~6.3 here); treating the time
    # limit as a termination would give about 2.6 on average instead.
    np.testing.assert_allclose(phase[1.0]["values"], phase_cycle_values(PHASES, GAMMA), rtol=0.03)


def test_popart_makes_training_reward_scale_equivariant(phase):
    small, large = phase[1.0]["metrics"], phase[1000.0]["metrics"]
    for key in ("loss/value", "ev/raw"):
        a, b = small[key][-10:].mean(), large[key][-10:].mean()
        assert abs(a - b) <= 0.05 * abs(a) + 1e-4, (key, a, b)
    assert small["ev/raw"][-10:].mean() > 0.95
    np.testing.assert_allclose(large["popart/mu"], 1000.0 * small["popart/mu"], rtol=1e-3)
    np.testing.assert_allclose(phase[1000.0]["values"], 1000.0 * phase_cycle_values(PHASES, GAMMA),
                               rtol=0.03)


def test_market_env_smoke_learning():
    market = pytest.importorskip("tbjax.env.market")
    from env_fixtures import toy_market

    data = toy_market(lengths=(400, 300), n_features=3, seed=0)
    env_params = make_env_params(window_size=8, episode_len=16, fee_bps=5.0)
    market.check_data(env_params, data)
    spec = make_spec(n_envs=16, n_steps=16, n_epochs=2, n_minibatches=2, updates_per_chunk=4,
                     hidden_sizes=(16,), num_quantiles=8, holdout_size=64, n_groups=2, lr_schedule="constant")
    trainer = make_trainer(spec, MarketEnv(), env_params)
    hp = make_hparams(env_params)
    carry = trainer.init(jax.random.PRNGKey(1), hp, data)
    carry, m = trainer.train_chunk(carry, hp, data)
    m = _host(m)
    raise_if_nonfinite(m, 0)
    for key in ("loss/policy", "loss/value", "loss/entropy", "grad_norm", "reward_mean",
                "popart/mu", "popart/sigma", "cvar/pred"):
        assert np.all(np.isfinite(m[key])), key
    # 16 envs x 64 steps with 16-step episodes: at least 3 full episodes per env completed.
    assert m["episode/count"].sum() >= 3 * spec.n_envs
    done_updates = m["episode/count"] > 0
    assert np.all(m["episode/length_mean"][done_updates] >= 1)
    assert np.all(m["episode/length_mean"][done_updates] <= env_params.episode_len)
    assert np.all(m["episode/final_equity_mean"][done_updates] > 0)
    assert np.all(np.isfinite(m["episode/return_mean"][done_updates]))
    assert carry.last_obs.shape == (spec.n_envs, market.observation_size(env_params, data))
