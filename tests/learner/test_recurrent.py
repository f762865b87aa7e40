"""Recurrent policies in the fused trainer: the update's replay reproduces the rollout exactly,
and on a memory task (the signal leaves the observation window before the return it predicts)
a GRU reaches the oracle's Sharpe on val while the MLP with the same budget does not."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from env_fixtures import toy_market
from memory_market import memory_env_params, memory_market, oracle_val_sharpe

from tbjax.agent.networks import init_params, policy_log_prob
from tbjax.agent.normalize import init_running_stats, update_running_stats
from tbjax.agent.popart import PopArtStats, denormalize_value
from tbjax.config import load_config
from tbjax.data.market import ROLE_VAL
from tbjax.env.protocol import MarketEnv
from tbjax.errors import InputError
from tbjax.evaluation.backtest import backtest
from tbjax.learner.rollout import rollout
from tbjax.learner.trainer import make_trainer
from tbjax.learner.update import ppo_batch
from tbjax.run.assembly import make_env_params, make_hparams, make_spec


@pytest.mark.parametrize("policy,shared", [("gru", False), ("lstm", False), ("gru", True)])
def test_replay_reproduces_the_rollouts_log_probs_and_values(policy, shared):
    """Episodes end inside the rollout (episode_len 5 < n_steps 12) and the rollout starts from a
    non-zero stored state; the replay of the stored sequences from that state with resets at the episode starts
    gives the rollout's log-probs and values (float32 rounding apart) before any gradient step."""
    data = toy_market()
    env_params = make_env_params(window_size=4, episode_len=5)
    spec = make_spec(n_envs=8, n_steps=12, n_minibatches=2, hidden_sizes=(16,), num_quantiles=8,
                     holdout_size=16, policy=policy, rnn_size=8, shared_torso=shared)
    ctx = make_trainer(spec, MarketEnv(), env_params).context
    hp = make_hparams(env_params)
    params = init_params(ctx.network, jax.random.PRNGKey(0), 4 * 3 + 4)
    obs0, state0 = jax.vmap(MarketEnv().reset, in_axes=(0, None, None))(jax.random.split(jax.random.PRNGKey(1), 8),
                                                                       env_params, data)
    run = jax.jit(partial(rollout, ctx))
    # a first rollout leaves a non-zero state mid-episode; its observations give non-trivial statistics
    traj0, _, _, state1, obs1, hidden1 = run(params, init_running_stats((obs0.shape[-1],)), _popart(), state0, obs0,
                                             jax.random.PRNGKey(2), hp, data, ctx.initial_hidden((8,)))
    stats = update_running_stats(init_running_stats((obs0.shape[-1],)), traj0.obs)
    assert float(jnp.abs(hidden1).max()) > 0.01
    traj, adv, returns, _, _, _ = run(params, stats, _popart(), state1, obs1, jax.random.PRNGKey(3), hp, data, hidden1)
    assert bool(jnp.any(traj.done[:-1]))  # episode starts inside the sequences

    batch = ppo_batch(ctx, traj, adv, returns, stats, _popart(), hidden1)
    logits, q = jax.jit(ctx.replay)(params, batch.obs, batch.hidden, batch.reset)
    log_prob = policy_log_prob(logits, batch.action, ctx.action_mode)
    values = jnp.mean(denormalize_value(_popart(), q, spec.popart_sigma_min), axis=-1)
    np.testing.assert_allclose(np.asarray(log_prob), np.asarray(batch.log_prob), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(values), np.asarray(traj.value), rtol=1e-5, atol=1e-6)


def _popart():
    """Non-trivial PopArt statistics (mu 0.3, sigma 2), the same for the rollout and the replay."""
    return PopArtStats(mean=jnp.float32(0.3), second_moment=jnp.float32(4.09))


SEEDS = (0, 1, 2)


def _val_fractions_of_oracle(policy: str, seeds=SEEDS) -> list[float]:
    """Val Sharpe / the oracle's for one trainer (compiled once) trained on each seed's market."""
    env_params = memory_env_params()
    spec = make_spec(n_envs=64, n_steps=24, n_epochs=4, n_minibatches=4, updates_per_chunk=25, total_updates=50,
                     hidden_sizes=(32,), num_quantiles=8, holdout_size=64, policy=policy, rnn_size=32,
                     lr_schedule="constant")
    trainer = make_trainer(spec, MarketEnv(), env_params)
    hp = make_hparams(env_params, learning_rate=1e-3, gamma=0.9)
    fractions = []
    for seed in seeds:
        data, oracle = memory_market(seed=seed)
        carry = trainer.init(jax.random.PRNGKey(seed), hp, data)
        for _ in range(2):
            carry, _ = trainer.train_chunk(carry, hp, data)
        result, _ = backtest(trainer.policy_apply, carry.params, carry.obs_stats, data, env_params, ROLE_VAL, 8760.0,
                             significance=False)
        fractions.append(result["pooled"]["sharpe"] / oracle_val_sharpe(data, oracle, 8760.0))
    return fractions


def test_gru_remembers_a_signal_older_than_the_window_and_the_mlp_cannot():
    """Cue 7 bars before the go bar, window 4; 50 updates of 64 x 24 steps each, seeds 0-2.

    The claim is about the mean over three seeds: one seed's outcome is a single draw of a noisy
    training run and moves with float32 rounding (the hand-written recurrent VJP computes the same
    gradients in another summation order: seed 0 went from 0.92 to 0.44 of the oracle and seed 2
    from 0.80 to 0.39, while seeds 1 and 3-6 stayed between 0.66 and 0.97; the autodiff version
    had its own failing seed, 6 at 0.14)."""
    gru, mlp = _val_fractions_of_oracle("gru"), _val_fractions_of_oracle("mlp")
    assert np.mean(gru) >= 0.5, f"GRU reached {np.round(gru, 2)} of the oracle's val Sharpe"
    assert np.mean(mlp) <= 0.25, f"MLP reached {np.round(mlp, 2)} of the oracle's val Sharpe"


@pytest.mark.parametrize("override,key", [
    ("ppo.policy=transformer", "ppo.policy"),
    ("ppo.rnn_size=0", "ppo.rnn_size"),
])
def test_bad_recurrent_settings_name_the_key(override, key):
    with pytest.raises(InputError, match=key):
        load_config(None, [override])


def test_recurrent_minibatches_must_divide_the_envs():
    with pytest.raises(InputError, match="ppo.n_minibatches"):
        load_config(None, ["ppo.policy=gru", "ppo.n_envs=6", "ppo.n_minibatches=4", "ppo.n_steps=64"])
    load_config(None, ["ppo.policy=mlp", "ppo.n_envs=6", "ppo.n_minibatches=4", "ppo.n_steps=64"])


def test_hpo_batched_program_runs_a_gru_like_separate_trials():
    """HPO's batched path (vmapped init and train_chunk over stacked HParams) carries each trial's
    own recurrent state: two trials in one program match the same trials run one by one."""
    from tbjax.hpo.program import program_for, stack_trees

    data = toy_market()
    env_params = make_env_params(window_size=4, episode_len=10)
    spec = make_spec(n_envs=8, n_steps=12, n_epochs=1, n_minibatches=2, updates_per_chunk=2, hidden_sizes=(16,),
                     num_quantiles=8, holdout_size=16, policy="gru", rnn_size=8)
    trainer = make_trainer(spec, MarketEnv(), env_params)
    hps = [make_hparams(env_params, learning_rate=lr) for lr in (1e-3, 3e-3)]
    program = program_for(trainer, 2)
    carry = program.start(jax.random.PRNGKey(0), stack_trees(hps), data)
    carry, metrics = program.advance(carry, stack_trees(hps), [True, True], data)
    assert carry.hidden.shape == (2, 8, 16) and float(jnp.abs(carry.hidden).max()) > 0
    for i, hp in enumerate(hps):
        alone, alone_metrics = trainer.train_chunk(trainer.init(jax.random.PRNGKey(0), hp, data), hp, data)
        for key in ("loss/value", "loss/policy", "reward_mean", "approx_kl"):
            np.testing.assert_allclose(np.asarray(metrics[key])[i], np.asarray(alone_metrics[key]), rtol=2e-3,
                                       atol=2e-5, err_msg=key)
        np.testing.assert_allclose(np.asarray(carry.hidden[i]), np.asarray(alone.hidden), rtol=1e-3, atol=1e-4)


def test_recurrent_holdout_ev_reads_the_current_networks_own_states():
    """popart/holdout_ev after training equals the EV of values the current network computes by
    stepping through the holdout sequences from the zero state (resets at their episode starts),
    not values read from the initial network's states."""
    from tbjax.agent.diagnostics import explained_variance

    data = toy_market()
    env_params = make_env_params(window_size=4, episode_len=5)
    spec = make_spec(n_envs=8, n_steps=12, n_epochs=2, n_minibatches=2, updates_per_chunk=4, hidden_sizes=(16,),
                     num_quantiles=8, holdout_size=32, policy="gru", rnn_size=8, lr_schedule="constant")
    trainer = make_trainer(spec, MarketEnv(), env_params)
    hp = make_hparams(env_params, learning_rate=3e-2)
    carry0 = trainer.init(jax.random.PRNGKey(0), hp, data)
    params0 = jax.tree_util.tree_map(jnp.array, carry0.params)
    carry, metrics = trainer.train_chunk(carry0, hp, data)
    ctx = trainer.context
    obs, reset = np.asarray(carry.holdout_obs), np.asarray(carry.holdout_reset)
    assert obs.ndim == 3 and reset[1:].any()  # whole sequences with episode starts inside

    def values_from_states_of(state_params):
        """Values of the current critic, each read from the state ``state_params`` reached there."""
        hidden, values = ctx.initial_hidden(obs.shape[1:2]), []
        for t in range(obs.shape[0]):
            hidden = jnp.where(jnp.asarray(reset[t])[:, None], 0.0, hidden)
            q = ctx.step(carry.params, carry.obs_stats, carry.popart, hidden, jnp.asarray(obs[t]))[1]
            values.append(jnp.mean(q, axis=-1))
            hidden = ctx.step(state_params, carry.obs_stats, carry.popart, hidden, jnp.asarray(obs[t]))[2]
        return jnp.stack(values)

    def ev(values):
        return float(explained_variance(carry.holdout_returns, values, carry.holdout_mask))

    own, initial = ev(values_from_states_of(carry.params)), ev(values_from_states_of(params0))
    assert abs(own - initial) > 1e-3  # the states matter
    np.testing.assert_allclose(float(metrics["popart/holdout_ev"]), own, rtol=1e-4, atol=1e-5)
