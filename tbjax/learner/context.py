"""The static context of one compiled trainer: spec, env, network and mesh, fixed before tracing.

Every learner function takes it as its first argument and ``make_trainer`` binds it with
``functools.partial`` before ``jax.jit``: the network (and so the action space) is known when the
trainer is built, never bound as a side effect of tracing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tbjax.agent.hparams import TrainerSpec
from tbjax.agent.networks import ActorCritic, state_size
from tbjax.agent.normalize import normalize_obs
from tbjax.agent.popart import denormalize_value


@dataclasses.dataclass(frozen=True, eq=False)
class Learner:
    """What does not change between calls: shapes, the env's pure functions, the network."""

    spec: TrainerSpec
    env: Any
    network: ActorCritic
    mesh: Mesh | None = None

    @property
    def apply(self):
        return self.network.apply

    @property
    def action_mode(self) -> str:
        return self.network.action_mode

    def shard_env(self, tree):
        """Constrain the env axis of ``tree`` to the mesh's "env" axis (no-op on one device)."""
        if self.mesh is None:
            return tree
        sharding = NamedSharding(self.mesh, P("env"))
        return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)

    @property
    def recurrent(self) -> bool:
        return self.network.policy != "mlp"

    def forward(self, params, obs_stats, popart, obs):
        """(logits, de-normalised critic quantiles) of raw observations with the given statistics."""
        logits, q = self.apply(params, normalize_obs(obs_stats, obs, self.spec.obs_clip))
        return logits, denormalize_value(popart, q, self.spec.popart_sigma_min)

    def initial_hidden(self, batch: tuple[int, ...]):
        """Zero recurrent state [*batch, state_size]; None for the MLP policy (no state)."""
        if not self.recurrent:
            return None
        size = state_size(self.network.policy, self.network.rnn_size, self.network.shared_torso)
        return jnp.zeros(tuple(batch) + (size,), jnp.float32)

    def step(self, params, obs_stats, popart, hidden, obs):
        """One acting step of raw observations [B, obs_dim]: (logits, quantiles, next hidden), the
        quantiles de-normalised with ``popart`` (left normalised when it is None). The MLP ignores
        ``hidden`` (None) and returns it unchanged."""
        x = normalize_obs(obs_stats, obs, self.spec.obs_clip)
        if self.recurrent:
            logits, q, hidden = self.apply(params, x, hidden, jnp.zeros(obs.shape[:-1], bool))
        else:
            logits, q = self.apply(params, x)
        return logits, (q if popart is None else denormalize_value(popart, q, self.spec.popart_sigma_min)), hidden

    def replay(self, params, obs, hidden, reset):
        """Re-run time-major sequences: normalised obs [T, B, obs_dim] from the stored states
        [B, state] with episode starts ``reset`` [T, B] -> (logits, normalised quantiles) [T, B, ...]."""
        logits, q, _ = self.apply(params, obs, hidden, reset)
        return logits, q


def reset_hidden(hidden, done):
    """Zero the state of envs whose episode ended (auto-reset starts a new one); None stays None."""
    if hidden is None:
        return None
    return jnp.where(done[..., None], 0.0, hidden)


def build_network(spec: TrainerSpec, env, env_params) -> ActorCritic:
    """The actor-critic for ``env``'s action space under ``env_params`` (static fields only).

    The per-bar encoder (``ppo.bar_features``) reads the observation as ``env.window_size`` rows; an
    env without a bar window (the small known-answer envs of the tests) has no rows to encode and
    gets the flat torso.
    """
    window = int(getattr(env_params, "window_size", 0) or 0)
    return ActorCritic(
        hidden_sizes=tuple(spec.hidden_sizes), n_actions=env.n_actions(env_params),
        action_mode=env.action_mode(env_params), num_quantiles=spec.num_quantiles,
        non_crossing=spec.non_crossing, shared_torso=spec.shared_torso, policy=spec.policy,
        rnn_size=spec.rnn_size, window_size=window, bar_features=spec.bar_features if window else 0,
        dtype=spec.compute_dtype)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis "env" over ``devices`` (default: all of jax.devices())."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), ("env",))
