"""Rollout: n_steps of (policy, vmapped env step) with frozen statistics, then GAE targets.

Values are the mean of the critic's de-normalised quantiles; VaR_alpha and CVaR_alpha of those
quantiles are kept per step for the CVaR advantage (the non-crossing head's quantiles are ascending
by construction, so they are read without a sort). On truncation the bootstrap is
V(info["final_obs"]); that forward pass runs under a batch-level ``lax.cond(any(truncated))``, so
steps where no env was truncated pay nothing. A recurrent policy carries its state through the
scan and zeroes it where an episode ends (auto-reset). With ``ppo.obs_noise`` / ``ppo.obs_scale`` the
policy acts on (and the update trains on) an augmented market window (learner.augment), and with
``ppo.mirror`` some training episodes are played in the mirrored market (learner.mirror: their
observations, bootstrap observations included, and the levels they trade negated); evaluation
walks do neither. Formulas: docs/ALGORITHMS.md (GAE, CVaR).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tbjax.agent import ppo
from tbjax.agent.distributional import cvar_from_quantiles, value_at_risk
from tbjax.agent.hparams import HParams
from tbjax.agent.networks import policy_sample
from tbjax.agent.popart import PopArtStats, init_popart, update_popart
from tbjax.learner.augment import augment_window, rollout_scales, window_offset
from tbjax.learner.carry import Transition
from tbjax.learner.context import Learner, reset_hidden
from tbjax.learner.mirror import episode_mirrors, mirror_action, mirror_obs, mirror_plan


def rollout(ctx: Learner, params, obs_stats, popart: PopArtStats, env_state, last_obs, key, hp: HParams, data,
            hidden=None):
    """(trajectory, advantages, lambda-returns, env_state, last_obs, hidden) of n_steps x n_envs.

    ``hidden`` is the recurrent state for ``last_obs`` (None for the MLP); it is zeroed where an
    episode ends.
    """
    s = ctx.spec
    vstep = jax.vmap(ctx.env.step, in_axes=(0, 0, 0, None, None))
    offset = window_offset(ctx.network.window_size)  # training-time augmentation (learner.augment)
    scale = rollout_scales(key, s.n_envs, hp.obs_scale)
    plan = mirror_plan(getattr(data, "feature_names", ()), ctx.network.window_size, hp.env, ctx.action_mode)

    def mirrors(env_state):  # which envs' episodes trade in the mirror (learner.mirror); None: no mirror here
        return None if plan is None else episode_mirrors(env_state, hp.mirror)

    def mean_value(obs_hidden, mirrored):  # V of observations, each seen in its episode's world
        obs, h = obs_hidden
        return jnp.mean(ctx.step(params, obs_stats, popart, h, mirror_obs(obs, mirrored, plan))[1], axis=-1)

    def env_step(runner, step_key):
        env_state, obs, h = runner
        key_act, key_env = jax.random.split(step_key)
        mirrored = mirrors(env_state)
        obs = mirror_obs(obs, mirrored, plan)
        obs = augment_window(obs, step_key, scale, hp.obs_noise, offset)  # what the policy acts on and trains on
        logits, q, next_h = ctx.step(params, obs_stats, popart, h, obs)
        action, log_prob = policy_sample(key_act, logits, ctx.action_mode)
        next_obs, env_state, reward, done, info = vstep(jax.random.split(key_env, s.n_envs), env_state,
                                                        mirror_action(action, mirrored, plan), hp.env, data)
        truncated = info["truncated"]
        # V of the pre-reset observation: a recurrent critic reads it with the state it continues
        final_value = jax.lax.cond(jnp.any(truncated), lambda oh: mean_value(oh, mirrored),
                                   lambda oh: jnp.zeros(oh[0].shape[:1], jnp.float32), (info["final_obs"], next_h))
        env_state, next_obs, next_h = ctx.shard_env((env_state, next_obs, reset_hidden(next_h, done)))
        t = Transition(
            obs=obs, action=action, log_prob=log_prob, value=jnp.mean(q, axis=-1),
            final_value=final_value, reward=reward.astype(jnp.float32),
            terminated=info["terminated"], truncated=truncated, done=done,
            var=value_at_risk(q, hp.cvar_alpha, s.non_crossing), cvar=cvar_from_quantiles(q, hp.cvar_alpha, s.non_crossing),
            tradable=info["tradable"], symbol=info["symbol"],
            ep_return=info["episode_return"].astype(jnp.float32),
            ep_length=info["episode_length"].astype(jnp.float32),
            ep_equity=info["final_equity"].astype(jnp.float32))
        return (env_state, next_obs, next_h), t

    (env_state, last_obs, hidden), traj = jax.lax.scan(env_step, (env_state, last_obs, hidden),
                                                       jax.random.split(key, s.n_steps))
    last_value = mean_value((last_obs, hidden), mirrors(env_state))
    next_values = ppo.next_state_values(traj.value, last_value, traj.final_value, traj.truncated)
    advantages, returns = ppo.gae(traj.reward, traj.value, next_values, traj.terminated, traj.done,
                                  hp.gamma, hp.gae_lambda)
    return traj, advantages, returns, env_state, last_obs, hidden


def initial_popart(traj: Transition, hp: HParams) -> PopArtStats:
    """PopArt moments of the initial policy's (gamma*lambda)-discounted reward sums (GAE with V = 0).

    van Hasselt et al. (2016) start from (mu 0, sigma 1) and let beta adapt them; with raw
    trading rewards (log returns of order 1e-3) or a x1000 reward scale that takes thousands
    of updates, each rescaling the critic head by a large factor. Starting from moments of
    returns observed with the untrained critic (which has nothing to preserve yet, so no
    rescale is needed) puts the normalised targets at order 1 from the first update and
    makes training equivariant to the reward scale. Tradable transitions only.
    """
    zeros = jnp.zeros_like(traj.reward)
    _, returns = ppo.gae(traj.reward, zeros, zeros, traj.terminated, traj.done, hp.gamma, hp.gae_lambda)
    return update_popart(init_popart(), returns, traj.tradable, 1.0)
