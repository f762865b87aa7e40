"""One update of the fused loop: rollout → observation statistics → PopArt → CVaR advantage → PPO.

1. rollout with the CURRENT statistics (learner.rollout);
2. the rollout's raw observations (tradable or not) are merged into the RunningStats (Chan et al.
   1979), which the NEXT rollout uses; this update trains on observations normalised with the
   old statistics, exactly as the rollout saw them;
3. PopArt (van Hasselt et al. 2016): the lambda-returns G_t update the stats with their mean over
   tradable transitions (step popart_beta); the critic's last affine map is rescaled
   (networks.critic_head_path()) so unnormalised outputs do not move; the critic trains on G_t
   normalised with the NEW stats. Adam's moments are left as they are;
4. CVaR shaping of the policy advantage (ppo.cvar_policy_advantage), then n_epochs x
   n_minibatches SGD steps as nested scans (ppo.ppo_update); a recurrent policy's minibatches are
   slices of the env axis that the core replays from the rollout's stored state (ppo_batch);
5. the guard (learner.carry): a non-finite step discards the whole update.
Formulas: docs/ALGORITHMS.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tbjax.agent import ppo
from tbjax.agent.diagnostics import explained_variance, grouped_explained_variance
from tbjax.agent.hparams import HParams
from tbjax.agent.networks import critic_head_path
from tbjax.agent.normalize import normalize_obs, update_running_stats
from tbjax.agent.popart import normalize_value, popart_rescale, popart_sigma, update_popart
from tbjax.learner.carry import TrainCarry, Transition, all_finite, select
from tbjax.learner.context import Learner
from tbjax.learner.rollout import rollout

EV_EMA_DECAY = 0.9  # ev/ema = 0.9 * ev/ema + 0.1 * ev/weighted (first finite value starts it)


def _replace_at(tree: dict, path: tuple[str, ...], value):
    """Copy of nested dict ``tree`` with ``tree[path]`` replaced (params are plain dicts)."""
    if not path:
        return value
    return {**tree, path[0]: _replace_at(tree[path[0]], path[1:], value)}


def rescale_critic_head(ctx: Learner, params, old_popart, new_popart):
    """PopArt's output-preserving rescale of the critic's last affine map."""
    path = critic_head_path()
    head = params["params"]
    for name in path:
        head = head[name]
    kernel, bias = popart_rescale(head["kernel"], head["bias"], old_popart, new_popart, ctx.spec.popart_sigma_min)
    return _replace_at(params, ("params",) + path, {**head, "kernel": kernel, "bias": bias})


def _masked_episode_mean(x, done):
    n = jnp.sum(done)
    return jnp.where(n > 0, jnp.sum(jnp.where(done, x, 0.0)) / jnp.maximum(n, 1), jnp.nan)


def update_metrics(ctx: Learner, carry: TrainCarry, traj: Transition, returns, popart, losses, lr, ok, guard_count):
    """One value per metric for this update (reduced inside the scan; no host callbacks)."""
    s = ctx.spec
    ev = grouped_explained_variance(returns, traj.value, traj.symbol, s.n_groups, traj.tradable)
    ev_w = ev["ev_weighted"]
    ev_ema = jnp.where(jnp.isfinite(ev_w),
                       jnp.where(jnp.isnan(carry.ev_ema), ev_w, EV_EMA_DECAY * carry.ev_ema + (1 - EV_EMA_DECAY) * ev_w),
                       carry.ev_ema)
    done = traj.done
    return ev_ema, {
        **losses, "lr": lr,
        "ev/raw": explained_variance(returns, traj.value, traj.tradable),
        "ev/mean": ev["ev_mean"], "ev/weighted": ev_w, "ev/median": ev["ev_median"], "ev/ema": ev_ema,
        "popart/mu": popart.mean, "popart/sigma": popart_sigma(popart, s.popart_sigma_min),
        "cvar/pred": jnp.mean(traj.cvar),
        "episode/return_mean": _masked_episode_mean(traj.ep_return, done),
        "episode/length_mean": _masked_episode_mean(traj.ep_length, done),
        "episode/final_equity_mean": _masked_episode_mean(traj.ep_equity, done),
        "episode/count": jnp.sum(done).astype(jnp.float32),
        "nan_guard_count": guard_count, "nan_guard_skipped": (~ok).astype(jnp.int32),
        "reward_mean": jnp.mean(traj.reward),
    }


def ppo_batch(ctx: Learner, traj: Transition, policy_adv, returns, obs_stats, popart, hidden0) -> ppo.PPOBatch:
    """The update's training batch; its leading axis is what minibatches slice.

    MLP: transitions flattened to [n_steps * n_envs]. Recurrent: the rollout's time-major
    sequences [n_steps, n_envs] as they are (minibatches gather env columns, ppo.minibatches) with
    the state stored at the rollout's start and the episode starts inside each sequence (the step
    after a done), so the core re-runs exactly as it acted (truncated BPTT).
    """
    s = ctx.spec
    if ctx.recurrent:
        layout = lambda x: x  # noqa: E731
        starts = jnp.concatenate([jnp.zeros_like(traj.done[:1]), traj.done[:-1]], axis=0)
        extra = {"hidden": hidden0, "reset": starts}
    else:
        layout = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        extra = {}
    return ppo.PPOBatch(
        obs=layout(normalize_obs(obs_stats, traj.obs, s.obs_clip)), action=layout(traj.action),
        log_prob=layout(traj.log_prob), advantage=layout(policy_adv),
        target=layout(normalize_value(popart, returns, s.popart_sigma_min)), tradable=layout(traj.tradable),
        **extra)


def update(ctx: Learner, carry: TrainCarry, hp: HParams, data):
    """One rollout + PPO update (see the module docstring): (new carry, metrics)."""
    s = ctx.spec
    rng, key_roll, key_sgd = jax.random.split(carry.rng, 3)
    traj, advantages, returns, env_state, last_obs, hidden = rollout(
        ctx, carry.params, carry.obs_stats, carry.popart, carry.env_state, carry.last_obs, key_roll, hp, data,
        carry.hidden)
    obs_stats = update_running_stats(carry.obs_stats, traj.obs)
    obs_stats = select(all_finite(obs_stats), obs_stats, carry.obs_stats)
    popart = update_popart(carry.popart, returns, traj.tradable, hp.popart_beta)
    params = rescale_critic_head(ctx, carry.params, carry.popart, popart)

    policy_adv = ppo.cvar_policy_advantage(advantages, returns, traj.var, hp.cvar_alpha, hp.cvar_weight)
    batch = ppo_batch(ctx, traj, policy_adv, returns, carry.obs_stats, popart, carry.hidden)
    lr = ppo.learning_rate_at(hp, carry.update, s.total_updates, s.lr_schedule)
    new_params, new_opt, losses, finite = ppo.ppo_update(
        params, carry.opt_state, batch, key_sgd, hp, lr, apply_fn=ctx.replay if ctx.recurrent else ctx.apply,
        action_mode=ctx.action_mode, huber_kappa=s.huber_kappa, n_epochs=s.n_epochs, n_minibatches=s.n_minibatches)
    # the guard: a discarded update leaves no trace (params, optimiser, PopArt, observation stats)
    ok = finite & all_finite(new_params) & all_finite(popart)
    new_params, new_opt, popart, obs_stats = select(
        ok, (new_params, new_opt, popart, obs_stats), (carry.params, carry.opt_state, carry.popart, carry.obs_stats))
    guard_count = carry.nan_guard_count + (~ok).astype(jnp.int32)
    ev_ema, metrics = update_metrics(ctx, carry, traj, returns, popart, losses, lr, ok, guard_count)
    carry = carry.replace(
        params=new_params, opt_state=new_opt, popart=popart, obs_stats=obs_stats, env_state=env_state,
        last_obs=last_obs, hidden=hidden, rng=rng, update=carry.update + 1, ev_ema=ev_ema,
        nan_guard_count=guard_count, episode_count=carry.episode_count + jnp.sum(traj.done).astype(jnp.int32))
    return carry, metrics
