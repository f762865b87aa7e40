"""The learner: rollout and distributional PPO update fused in one compiled ``lax.scan``.

``train_chunk`` runs ``updates_per_chunk`` updates; each update (PureJaxRL's shape):
1. rollout: ``lax.scan`` over n_steps of (policy on observations normalised with the CURRENT
   RunningStats, vmapped env step). Values are the mean of the critic's de-normalised quantiles;
   eta(s_t) = VaR_alpha and CVaR_alpha of those quantiles are kept per step.
2. the rollout's raw observations (all of them, tradable or not) are merged into the RunningStats
   (Chan et al. 1979), which the NEXT rollout uses.
3. GAE by a reverse scan (ppo.gae). On truncation the bootstrap is V(info["final_obs"]); that
   forward pass runs under a batch-level ``lax.cond(any(truncated))``, so steps where no env was
   truncated pay nothing (with thousands of envs most steps do pay one extra critic pass).
4. PopArt (van Hasselt et al. 2016): the lambda-returns G_t (targets in return units, built from
   values de-normalised with the OLD stats) update the stats with their mean over tradable
   transitions (step popart_beta); the critic's last affine map is rescaled
   (networks.critic_head_path()) so unnormalised outputs do not move; the critic is trained on
   G_t normalised with the NEW stats. Adam's moments are left as they are (as in the paper's
   SGD form, which has no moments to correct).
5. CVaR shaping of the policy advantage (ppo.cvar_policy_advantage), then n_epochs x
   n_minibatches SGD steps as nested scans.
6. Guard: if any step saw a non-finite loss or gradient, or the new params / PopArt stats are not
   finite, the whole update is discarded (params, opt state, PopArt and observation statistics
   selected back with
   ``jnp.where``) and ``nan_guard_count`` grows; ``raise_if_nonfinite`` turns that into an error on
   the host.

Metrics are reduced inside the scan: one value per update ([updates_per_chunk] arrays) plus the
per-chunk holdout EV; nothing grows with the number of chunks and there are no host callbacks.

Multi-device: with a ``mesh`` (axis "env") the env axis (env_state, last_obs) is sharded with
NamedSharding(mesh, P("env")); params and optimiser state are replicated. The same code runs on
one CPU or many devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tbjax.agent import ppo
from tbjax.agent.diagnostics import explained_variance, grouped_explained_variance
from tbjax.agent.distributional import cvar_from_quantiles, value_at_risk
from tbjax.agent.hparams import HParams, TrainerSpec, make_hparams  # noqa: F401 (re-export)
from tbjax.agent.networks import ActorCritic, critic_head_path, policy_mode, policy_sample
from tbjax.agent.normalize import RunningStats, init_running_stats, normalize_obs, update_running_stats
from tbjax.agent.popart import (
    PopArtStats, denormalize_value, init_popart, normalize_value, popart_rescale, popart_sigma,
    update_popart)
from tbjax.errors import InputError

EV_EMA_DECAY = 0.9  # ev/ema = 0.9 * ev/ema + 0.1 * ev/weighted (first finite value starts it)


class Env(Protocol):
    """A hashable object with pure functions; ``params`` is HParams.env, ``data`` any pytree."""

    def reset(self, key, params, data): ...
    def step(self, key, state, action, params, data): ...
    def observation_size(self, params, data) -> int: ...
    def n_actions(self, params) -> int: ...
    def action_mode(self, params) -> str: ...


@dataclasses.dataclass(frozen=True)
class MarketEnv:
    """The Env protocol over tbjax.env.market (EnvParams, MarketData)."""

    def reset(self, key, params, data):
        from tbjax.env import market
        return market.reset(key, params, data)

    def step(self, key, state, action, params, data):
        from tbjax.env import market
        return market.step(key, state, action, params, data, return_final_obs=True)

    def observation_size(self, params, data) -> int:
        from tbjax.env import market
        return market.observation_size(params, data)

    def n_actions(self, params) -> int:
        from tbjax.env import market
        return market.n_actions(params)

    def action_mode(self, params) -> str:
        return params.action_mode


class NonFiniteUpdateError(RuntimeError):
    """An update produced a non-finite loss, gradient or parameter and was skipped."""

    def __init__(self, update: int, metric: str, value: float, skipped: int):
        self.update, self.metric, self.value = update, metric, value
        super().__init__(
            f"training diverged at update {update}: {metric} = {value} (the update was skipped; "
            f"{skipped} skipped so far). Lower hyperparameters.learning_rate or max_grad_norm, "
            f"or check the market data and env params for NaN/inf values."
        )


_CORE_METRICS = ("loss/policy", "loss/value", "loss/entropy", "grad_norm", "approx_kl", "reward_mean")


def raise_if_nonfinite(metrics: dict, update_offset: int) -> None:
    """Host side: raise NonFiniteUpdateError for the first update of the chunk the guard skipped.

    ``update_offset`` is the number of updates done before this chunk (for the message).
    """
    skipped = np.asarray(metrics["nan_guard_skipped"]).reshape(-1)
    bad = np.flatnonzero(skipped > 0)
    if bad.size == 0:
        return
    i = int(bad[0])
    metric, value = "params/popart (non-finite after the update)", float("nan")
    for name in _CORE_METRICS:
        v = float(np.asarray(metrics[name]).reshape(-1)[i])
        if not np.isfinite(v):
            metric, value = name, v
            break
    count = int(np.asarray(metrics["nan_guard_count"]).reshape(-1)[-1])
    raise NonFiniteUpdateError(update_offset + i, metric, value, count)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis "env" over ``devices`` (default: all of jax.devices())."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), ("env",))


@flax.struct.dataclass
class TrainCarry:
    """Everything the fused loop carries from one update to the next (donated each chunk).

    PopArt starts from the moments of the initial policy's returns (see _initial_popart); the
    holdout is a fixed batch of the initial policy's transitions whose EV against the current
    critic is reported per chunk (popart/holdout_ev), a check that rescaling keeps the critic
    consistent on data it no longer trains on.
    """

    params: Any
    opt_state: Any
    popart: PopArtStats
    obs_stats: RunningStats
    env_state: Any          # [N] env states (sharded over "env")
    last_obs: jax.Array     # [N, obs_dim] raw observations (sharded over "env")
    rng: jax.Array
    update: jax.Array       # int32 updates done
    ev_ema: jax.Array       # f32, NaN until the first finite weighted EV
    nan_guard_count: jax.Array  # int32 updates skipped by the guard
    episode_count: jax.Array    # int32 episodes completed so far
    holdout_obs: jax.Array      # [H, obs_dim] raw observations of the initial policy's rollout
    holdout_returns: jax.Array  # [H] their lambda-returns (initial critic)
    holdout_mask: jax.Array     # [H] tradable


@flax.struct.dataclass
class Transition:
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    final_value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    done: jax.Array
    var: jax.Array
    cvar: jax.Array
    tradable: jax.Array
    symbol: jax.Array
    ep_return: jax.Array
    ep_length: jax.Array
    ep_equity: jax.Array


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def _select(ok, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)


def _masked_episode_mean(x, done):
    n = jnp.sum(done)
    return jnp.where(n > 0, jnp.sum(jnp.where(done, x, 0.0)) / jnp.maximum(n, 1), jnp.nan)


class Trainer:
    """Compiled init / train_chunk for one (spec, env, mesh); see the module docstring."""

    def __init__(self, spec: TrainerSpec, env: Env, mesh: Mesh | None = None):
        spec.validate(1 if mesh is None else mesh.size)
        self.spec, self.env, self.mesh = spec, env, mesh
        self.trace_count = 0
        self._apply = self._mode = None  # bound to the env's action space by init / train_chunk
        self.init = jax.jit(self._init)
        self.train_chunk = jax.jit(self._train_chunk, donate_argnums=0)
        self.policy_apply = jax.jit(self._policy_apply, static_argnames="deterministic")
        self.value_quantiles = jax.jit(self._value_quantiles)

    # -- network -----------------------------------------------------------------------------
    def network(self, env_params) -> ActorCritic:
        s = self.spec
        return ActorCritic(
            hidden_sizes=tuple(s.hidden_sizes), n_actions=self.env.n_actions(env_params),
            action_mode=self.env.action_mode(env_params), num_quantiles=s.num_quantiles,
            non_crossing=s.non_crossing, shared_torso=s.shared_torso, dtype=s.compute_dtype)

    def _value_quantiles(self, params, obs_stats, popart, obs):
        """De-normalised critic quantiles [..., num_quantiles] of raw observations."""
        self._require_bound()
        _, q = self._apply(params, normalize_obs(obs_stats, obs, self.spec.obs_clip))
        return denormalize_value(popart, q, self.spec.popart_sigma_min)

    def _policy_apply(self, params, obs_stats, obs, deterministic: bool = True, key=None):
        """Action for raw observations with FROZEN stats (evaluation never updates them).

        The network's action space comes from the env params seen by init / train_chunk.
        """
        self._require_bound()
        logits, _ = self._apply(params, normalize_obs(obs_stats, obs, self.spec.obs_clip))
        if deterministic:
            return policy_mode(logits, self._mode)
        if key is None:
            raise InputError("policy_apply: deterministic=False needs a PRNG key (key=...)")
        return policy_sample(key, logits, self._mode)[0]

    def _require_bound(self):
        if self._apply is None:
            raise InputError("Trainer: call init(...) (or bind(env_params)) before policy_apply "
                             "or value_quantiles, so the network knows the env's action space")

    def bind(self, env_params) -> None:
        """Fix the network's action space from ``env_params`` (init / train_chunk do this)."""
        self._bind(env_params)

    def _bind(self, env_params):
        net = self.network(env_params)
        self._apply, self._mode = net.apply, net.action_mode
        return net

    def _shard_env(self, tree):
        if self.mesh is None:
            return tree
        sharding = NamedSharding(self.mesh, P("env"))
        return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)

    # -- rollout -----------------------------------------------------------------------------
    def _rollout(self, params, obs_stats, popart, env_state, last_obs, key, hp: HParams, data):
        """n_steps of (policy, vmapped env step) with frozen obs / PopArt statistics."""
        s, env = self.spec, self.env
        vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))

        def critic(obs):
            return self._value_quantiles(params, obs_stats, popart, obs)

        def env_step(runner, step_key):
            env_state, obs = runner
            key_act, key_env = jax.random.split(step_key)
            logits, q = self._apply(params, normalize_obs(obs_stats, obs, s.obs_clip))
            q = denormalize_value(popart, q, s.popart_sigma_min)
            action, log_prob = policy_sample(key_act, logits, self._mode)
            env_keys = jax.random.split(key_env, s.n_envs)
            next_obs, env_state, reward, done, info = vstep(env_keys, env_state, action, hp.env, data)
            env_state, next_obs = self._shard_env((env_state, next_obs))
            truncated = info["truncated"]
            final_value = jax.lax.cond(
                jnp.any(truncated), lambda o: jnp.mean(critic(o), axis=-1),
                lambda o: jnp.zeros(o.shape[:1], jnp.float32), info["final_obs"])
            t = Transition(
                obs=obs, action=action, log_prob=log_prob, value=jnp.mean(q, axis=-1),
                final_value=final_value, reward=reward.astype(jnp.float32),
                terminated=info["terminated"], truncated=truncated, done=done,
                var=value_at_risk(q, hp.cvar_alpha), cvar=cvar_from_quantiles(q, hp.cvar_alpha),
                tradable=info["tradable"], symbol=info["symbol"],
                ep_return=info["episode_return"].astype(jnp.float32),
                ep_length=info["episode_length"].astype(jnp.float32),
                ep_equity=info["final_equity"].astype(jnp.float32))
            return (env_state, next_obs), t

        (env_state, last_obs), traj = jax.lax.scan(
            env_step, (env_state, last_obs), jax.random.split(key, s.n_steps))
        last_value = jnp.mean(critic(last_obs), axis=-1)
        next_values = ppo.next_state_values(traj.value, last_value, traj.final_value, traj.truncated)
        advantages, returns = ppo.gae(traj.reward, traj.value, next_values, traj.terminated,
                                      traj.done, hp.gamma, hp.gae_lambda)
        return traj, advantages, returns, env_state, last_obs

    # -- init --------------------------------------------------------------------------------
    def _init(self, key, hp: HParams, data) -> TrainCarry:
        s, env = self.spec, self.env
        net = self._bind(hp.env)
        obs_dim = env.observation_size(hp.env, data)
        key_net, key_env, key_hold, key_pick, key_rng = jax.random.split(key, 5)
        params = net.init(key_net, jnp.zeros((obs_dim,), jnp.float32))
        vreset = jax.vmap(env.reset, in_axes=(0, None, None))
        last_obs, env_state = self._shard_env(vreset(jax.random.split(key_env, s.n_envs), hp.env, data))

        # Holdout: a separate set of envs rolled out once with the initial policy and critic.
        key_hreset, key_hroll = jax.random.split(key_hold)
        h_obs, h_state = self._shard_env(vreset(jax.random.split(key_hreset, s.n_envs), hp.env, data))
        stats0 = init_running_stats((obs_dim,))
        traj, _, _, _, h_last = self._rollout(params, stats0, init_popart(), h_state, h_obs, key_hroll,
                                             hp, data)
        popart0 = self._initial_popart(traj, hp)
        # traj.value / final_value were de-normalised with (mu 0, sigma 1): map them to popart0.
        sigma0 = popart_sigma(popart0, s.popart_sigma_min)
        values, final_values = (sigma0 * v + popart0.mean for v in (traj.value, traj.final_value))
        last_value = jnp.mean(self._value_quantiles(params, stats0, popart0, h_last), axis=-1)
        next_values = ppo.next_state_values(values, last_value, final_values, traj.truncated)
        _, returns = ppo.gae(traj.reward, values, next_values, traj.terminated, traj.done,
                             hp.gamma, hp.gae_lambda)
        size = min(s.holdout_size, s.n_envs * s.n_steps)
        tradable = traj.tradable.reshape(-1)
        # Random tradable transitions first (non-tradable ones only if too few are tradable).
        order = jnp.argsort(jnp.where(tradable, jax.random.uniform(key_pick, tradable.shape), 2.0))
        pick = order[:size]
        return TrainCarry(
            params=params, opt_state=ppo.ADAM.init(params), popart=popart0, obs_stats=stats0,
            env_state=env_state, last_obs=last_obs, rng=key_rng,
            update=jnp.zeros((), jnp.int32), ev_ema=jnp.full((), jnp.nan, jnp.float32),
            nan_guard_count=jnp.zeros((), jnp.int32), episode_count=jnp.zeros((), jnp.int32),
            holdout_obs=traj.obs.reshape(-1, obs_dim)[pick],
            holdout_returns=returns.reshape(-1)[pick], holdout_mask=tradable[pick])

    def _initial_popart(self, traj: Transition, hp: HParams) -> PopArtStats:
        """PopArt moments of the initial policy's (gamma*lambda)-discounted reward sums (GAE with V = 0).

        van Hasselt et al. (2016) start from (mu 0, sigma 1) and let beta adapt them; with raw
        trading rewards (log returns of order 1e-3) or a x1000 reward scale that takes thousands
        of updates, each rescaling the critic head by a large factor. Starting from moments of
        returns observed with the untrained critic (which has nothing to preserve yet, so no
        rescale is needed) puts the normalised targets at order 1 from the first update and
        makes training equivariant to the reward scale. Tradable transitions only.
        """
        zeros = jnp.zeros_like(traj.reward)
        _, returns = ppo.gae(traj.reward, zeros, zeros, traj.terminated, traj.done, hp.gamma,
                             hp.gae_lambda)
        return update_popart(init_popart(), returns, traj.tradable, 1.0)

    # -- one update --------------------------------------------------------------------------
    def _update(self, carry: TrainCarry, hp: HParams, data):
        s = self.spec
        rng, key_roll, key_sgd = jax.random.split(carry.rng, 3)
        traj, advantages, returns, env_state, last_obs = self._rollout(
            carry.params, carry.obs_stats, carry.popart, carry.env_state, carry.last_obs,
            key_roll, hp, data)
        obs_stats = update_running_stats(carry.obs_stats, traj.obs)
        obs_stats = _select(_all_finite(obs_stats), obs_stats, carry.obs_stats)

        # PopArt: stats from the tradable targets, then preserve the critic's outputs.
        popart = update_popart(carry.popart, returns, traj.tradable, hp.popart_beta)
        path = critic_head_path()
        head = carry.params["params"]
        for name in path:
            head = head[name]
        kernel, bias = popart_rescale(head["kernel"], head["bias"], carry.popart, popart,
                                      s.popart_sigma_min)
        params = _replace_at(carry.params, ("params",) + path, {**head, "kernel": kernel, "bias": bias})

        policy_adv = ppo.cvar_policy_advantage(advantages, returns, traj.var, hp.cvar_alpha,
                                               hp.cvar_weight)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        batch = ppo.PPOBatch(
            obs=flat(normalize_obs(carry.obs_stats, traj.obs, s.obs_clip)), action=flat(traj.action),
            log_prob=flat(traj.log_prob), advantage=flat(policy_adv),
            target=flat(normalize_value(popart, returns, s.popart_sigma_min)),
            tradable=flat(traj.tradable))
        lr = ppo.learning_rate_at(hp, carry.update, s.total_updates, s.lr_schedule)
        new_params, new_opt, losses, finite = ppo.ppo_update(
            params, carry.opt_state, batch, key_sgd, hp, lr, apply_fn=self._apply,
            action_mode=self._mode, huber_kappa=s.huber_kappa, n_epochs=s.n_epochs,
            n_minibatches=s.n_minibatches)
        ok = finite & _all_finite(new_params) & _all_finite(popart)
        new_params = _select(ok, new_params, carry.params)
        new_opt = _select(ok, new_opt, carry.opt_state)
        popart = _select(ok, popart, carry.popart)
        obs_stats = _select(ok, obs_stats, carry.obs_stats)  # a discarded update leaves no trace
        guard_count = carry.nan_guard_count + (~ok).astype(jnp.int32)

        ev = grouped_explained_variance(returns, traj.value, traj.symbol, s.n_groups, traj.tradable)
        ev_w = ev["ev_weighted"]
        ev_ema = jnp.where(jnp.isfinite(ev_w),
                           jnp.where(jnp.isnan(carry.ev_ema), ev_w,
                                     EV_EMA_DECAY * carry.ev_ema + (1 - EV_EMA_DECAY) * ev_w),
                           carry.ev_ema)
        done = traj.done
        n_done = jnp.sum(done).astype(jnp.int32)
        metrics = {
            **losses, "lr": lr,
            "ev/raw": explained_variance(returns, traj.value, traj.tradable),
            "ev/mean": ev["ev_mean"], "ev/weighted": ev_w, "ev/median": ev["ev_median"],
            "ev/ema": ev_ema,
            "popart/mu": popart.mean, "popart/sigma": popart_sigma(popart, s.popart_sigma_min),
            "cvar/pred": jnp.mean(traj.cvar),
            "episode/return_mean": _masked_episode_mean(traj.ep_return, done),
            "episode/length_mean": _masked_episode_mean(traj.ep_length, done),
            "episode/final_equity_mean": _masked_episode_mean(traj.ep_equity, done),
            "episode/count": n_done.astype(jnp.float32),
            "nan_guard_count": guard_count, "nan_guard_skipped": (~ok).astype(jnp.int32),
            "reward_mean": jnp.mean(traj.reward),
        }
        carry = carry.replace(
            params=new_params, opt_state=new_opt, popart=popart, obs_stats=obs_stats,
            env_state=env_state, last_obs=last_obs, rng=rng, update=carry.update + 1,
            ev_ema=ev_ema, nan_guard_count=guard_count, episode_count=carry.episode_count + n_done)
        return carry, metrics

    def _train_chunk(self, carry: TrainCarry, hp: HParams, data):
        self.trace_count += 1  # Python side effect: runs once per (re)trace, never per call
        self._bind(hp.env)
        carry, metrics = jax.lax.scan(lambda c, _: self._update(c, hp, data), carry, None,
                                      length=self.spec.updates_per_chunk)
        holdout_pred = jnp.mean(self._value_quantiles(
            carry.params, carry.obs_stats, carry.popart, carry.holdout_obs), axis=-1)
        metrics["popart/holdout_ev"] = explained_variance(
            carry.holdout_returns, holdout_pred, carry.holdout_mask)
        return carry, metrics


def _replace_at(tree: dict, path: tuple[str, ...], value):
    """Copy of nested dict ``tree`` with ``tree[path]`` replaced (params are plain dicts)."""
    if not path:
        return value
    return {**tree, path[0]: _replace_at(tree[path[0]], path[1:], value)}


def make_trainer(spec: TrainerSpec, env: Env, mesh: Mesh | None = None) -> Trainer:
    """Build the compiled trainer (compilation happens on the first init / train_chunk call)."""
    return Trainer(spec, env, mesh)
