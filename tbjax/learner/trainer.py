"""The learner: rollout and distributional PPO update fused in one compiled ``lax.scan``.

``make_trainer(spec, env, env_params)`` builds, once, the compiled functions of one static
signature (PureJaxRL's ``make_train`` shape): the network comes from the env's action space
before anything is traced, and every function is a pure function of its arguments bound to that
static context (learner.context). Nothing is set on an object while tracing; compile counts come
from JAX's own jit caches (``trainer.train_chunk._cache_size()``).

``train_chunk`` runs ``updates_per_chunk`` updates (learner.update) as one ``lax.scan``; metrics
are reduced inside the scan, one value per update, plus the per-chunk holdout EV. HParams are all
traced float32 leaves, so a new trial's values never recompile and a trial axis can be vmapped.

Multi-device: with a ``mesh`` (axis "env") the env axis (env_state, last_obs, a recurrent policy's
hidden state) is sharded with
NamedSharding(mesh, P("env")); params and optimiser state are replicated. The same code runs on
one CPU or many devices.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from tbjax.agent import ppo
from tbjax.agent.diagnostics import explained_variance
from tbjax.agent.hparams import HParams, TrainerSpec  # noqa: F401 (re-export)
from tbjax.agent.networks import init_params, policy_mode, policy_sample
from tbjax.agent.normalize import init_running_stats, normalize_obs
from tbjax.agent.popart import denormalize_value, init_popart, popart_sigma
from tbjax.env.protocol import prepared
from tbjax.errors import InputError
from tbjax.learner.carry import NonFiniteUpdateError, TrainCarry, raise_if_nonfinite  # noqa: F401 (re-export)
from tbjax.learner.context import Learner, build_network, make_mesh  # noqa: F401 (re-export)
from tbjax.learner.rollout import initial_popart, rollout
from tbjax.learner.update import update


@dataclasses.dataclass(frozen=True, eq=False)
class Acting:
    """The trained policy as evaluation uses it: hashable by identity (a static argument of ``walk``).

    ``acting(params, obs_stats, obs, deterministic=True, key=None)`` maps raw observations
    [B, obs_dim] to actions with FROZEN statistics (deterministic: argmax / mean; otherwise
    sampled with ``key``). ``step(params, obs_stats, hidden, obs, deterministic, key)`` is the same
    with the recurrent state carried: (actions, next hidden); ``initial_hidden(batch)`` is the
    zero state (None for the MLP, whose plain call is then the whole story).
    """

    context: Learner
    call: Callable
    step: Callable

    def __call__(self, params, obs_stats, obs, deterministic: bool = True, key=None):
        return self.call(params, obs_stats, obs, deterministic, key=key)

    def initial_hidden(self, batch: tuple[int, ...]):
        return self.context.initial_hidden(batch)


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """The compiled functions of one static signature; immutable, hashable by identity."""

    spec: TrainerSpec
    context: Learner
    init: Callable            # (key, hp, data) -> TrainCarry
    train_chunk: Callable     # (carry, hp, data) -> (carry, metrics); donates the carry
    policy_apply: Acting      # (params, obs_stats, obs, deterministic=True, key=None) -> actions; .step carries state
    value_quantiles: Callable  # (params, obs_stats, popart, obs, hidden=None) -> de-normalised quantiles

    @property
    def apply(self):
        return self.context.apply

    @property
    def action_mode(self) -> str:
        return self.context.action_mode


def value_quantiles(ctx: Learner, params, obs_stats, popart, obs, hidden=None):
    """De-normalised critic quantiles [..., num_quantiles] of raw observations; a recurrent critic
    reads them one step on from ``hidden`` (the zero state when None)."""
    if ctx.recurrent and hidden is None:
        hidden = ctx.initial_hidden(obs.shape[:-1])
    return ctx.step(params, obs_stats, popart, hidden, obs)[1]


def policy_step(ctx: Learner, params, obs_stats, hidden, obs, deterministic: bool = True, key=None):
    """(actions, next hidden) for raw observations with FROZEN stats (evaluation never updates them).

    Deterministic: argmax / mean. Otherwise sampled with ``key`` (required then).
    """
    if deterministic is False and key is None:
        raise InputError("policy_apply: deterministic=False needs a PRNG key (key=...)")
    logits, _, hidden = ctx.step(params, obs_stats, None, hidden, obs)
    if deterministic:
        return policy_mode(logits, ctx.action_mode), hidden
    return policy_sample(key, logits, ctx.action_mode)[0], hidden


def policy_apply(ctx: Learner, params, obs_stats, obs, deterministic: bool = True, key=None):
    """Actions of raw observations, each read as an episode's first step by a recurrent policy."""
    return policy_step(ctx, params, obs_stats, ctx.initial_hidden(obs.shape[:-1]), obs, deterministic, key)[0]


def init(ctx: Learner, key, hp: HParams, data) -> TrainCarry:
    """Fresh carry: network, optimiser, envs, and a holdout rolled out once by the initial policy
    (random transitions for the MLP; for a recurrent policy the first ``holdout_size // n_steps``
    envs' whole sequences, at least one, cut to ``holdout_size`` steps)."""
    s, env = ctx.spec, ctx.env
    data = prepared(env, data)
    obs_dim = env.observation_size(hp.env, data)
    key_net, key_env, key_hold, key_pick, key_rng = jax.random.split(key, 5)
    params = init_params(ctx.network, key_net, obs_dim)
    vreset = jax.vmap(env.reset, in_axes=(0, None, None))
    last_obs, env_state = ctx.shard_env(vreset(jax.random.split(key_env, s.n_envs), hp.env, data))

    # Holdout: a separate set of envs rolled out once with the initial policy and critic.
    key_hreset, key_hroll = jax.random.split(key_hold)
    h_obs, h_state = ctx.shard_env(vreset(jax.random.split(key_hreset, s.n_envs), hp.env, data))
    stats0 = init_running_stats((obs_dim,))
    traj, _, _, _, h_last, h_hidden = rollout(ctx, params, stats0, init_popart(), h_state, h_obs, key_hroll, hp, data,
                                              ctx.initial_hidden((s.n_envs,)))
    popart0 = initial_popart(traj, hp)
    # traj.value / final_value were de-normalised with (mu 0, sigma 1): map them to popart0.
    sigma0 = popart_sigma(popart0, s.popart_sigma_min)
    values, final_values = (sigma0 * v + popart0.mean for v in (traj.value, traj.final_value))
    last_value = jnp.mean(value_quantiles(ctx, params, stats0, popart0, h_last, h_hidden), axis=-1)
    next_values = ppo.next_state_values(values, last_value, final_values, traj.truncated)
    _, returns = ppo.gae(traj.reward, values, next_values, traj.terminated, traj.done, hp.gamma, hp.gae_lambda)
    if ctx.recurrent:  # whole sequences, so the current network can rebuild its own states over them
        steps = min(s.n_steps, s.holdout_size)
        envs = min(s.n_envs, max(1, s.holdout_size // steps))
        starts = jnp.concatenate([jnp.zeros_like(traj.done[:1]), traj.done[:-1]])  # reset_t = done_{t-1}
        holdout = dict(holdout_obs=traj.obs[:steps, :envs], holdout_returns=returns[:steps, :envs],
                       holdout_mask=traj.tradable[:steps, :envs], holdout_reset=starts[:steps, :envs])
    else:  # random tradable transitions first (non-tradable ones only if too few are tradable)
        size = min(s.holdout_size, s.n_envs * s.n_steps)
        tradable = traj.tradable.reshape(-1)
        pick = jnp.argsort(jnp.where(tradable, jax.random.uniform(key_pick, tradable.shape), 2.0))[:size]
        holdout = dict(holdout_obs=traj.obs.reshape(-1, obs_dim)[pick], holdout_returns=returns.reshape(-1)[pick],
                       holdout_mask=tradable[pick])
    return TrainCarry(
        params=params, opt_state=ppo.ADAM.init(params), popart=popart0, obs_stats=stats0,
        env_state=env_state, last_obs=last_obs, rng=key_rng,
        update=jnp.zeros((), jnp.int32), ev_ema=jnp.full((), jnp.nan, jnp.float32),
        nan_guard_count=jnp.zeros((), jnp.int32), episode_count=jnp.zeros((), jnp.int32),
        hidden=ctx.shard_env(ctx.initial_hidden((s.n_envs,))), **holdout)


def holdout_values(ctx: Learner, carry: TrainCarry):
    """The current critic's mean value of each holdout observation; a recurrent critic reads the
    holdout sequences from the zero state (where their rollout started) with its own states."""
    if not ctx.recurrent:
        return jnp.mean(value_quantiles(ctx, carry.params, carry.obs_stats, carry.popart, carry.holdout_obs), axis=-1)
    x = normalize_obs(carry.obs_stats, carry.holdout_obs, ctx.spec.obs_clip)
    _, q = ctx.replay(carry.params, x, ctx.initial_hidden(carry.holdout_obs.shape[1:2]), carry.holdout_reset)
    return jnp.mean(denormalize_value(carry.popart, q, ctx.spec.popart_sigma_min), axis=-1)


def train_chunk(ctx: Learner, carry: TrainCarry, hp: HParams, data):
    """``updates_per_chunk`` updates in one scan, then the holdout EV of the critic.

    The env prepares its data once per chunk, outside the scan (the market env z-scores its
    features there: :func:`tbjax.data.market.scaled_once`), so each step copies a scaled window."""
    data = prepared(ctx.env, data)
    carry, metrics = jax.lax.scan(lambda c, _: update(ctx, c, hp, data), carry, None,
                                  length=ctx.spec.updates_per_chunk)
    metrics["popart/holdout_ev"] = explained_variance(carry.holdout_returns, holdout_values(ctx, carry),
                                                      carry.holdout_mask)
    return carry, metrics


def make_trainer(spec: TrainerSpec, env, env_params, mesh: Mesh | None = None) -> Trainer:
    """Build the compiled trainer for ``env``'s action space under ``env_params``.

    Compilation happens on the first call of each function; the returned object never changes.
    """
    spec.validate(1 if mesh is None else mesh.size)
    ctx = Learner(spec=spec, env=env, network=build_network(spec, env, env_params), mesh=mesh)
    return Trainer(
        spec=spec, context=ctx,
        init=jax.jit(partial(init, ctx)),
        train_chunk=jax.jit(partial(train_chunk, ctx), donate_argnums=0),
        policy_apply=Acting(ctx, call=jax.jit(partial(policy_apply, ctx), static_argnames="deterministic"),
                            step=jax.jit(partial(policy_step, ctx), static_argnames="deterministic")),
        value_quantiles=jax.jit(partial(value_quantiles, ctx)))
