"""What the fused loop carries between updates, what one rollout step records, and the NaN guard.

The guard: an update whose loss, gradient, parameters, PopArt or observation statistics are not
finite is discarded as a whole (every piece selected back with ``jnp.where``) and counted in
``nan_guard_count``; :func:`raise_if_nonfinite` turns the count into an error on the host.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from tbjax.agent.normalize import RunningStats
from tbjax.agent.popart import PopArtStats


@flax.struct.dataclass
class TrainCarry:
    """Everything the fused loop carries from one update to the next (donated each chunk).

    A recurrent policy's ``hidden`` is the state after the last rollout step, already zeroed where
    that step ended an episode, so the next rollout starts from it as stored (docs/ALGORITHMS.md).

    PopArt starts from the moments of the initial policy's returns (rollout.initial_popart); the
    holdout is a fixed batch of the initial policy's transitions whose EV against the current
    critic is reported per chunk (popart/holdout_ev), a check that rescaling keeps the critic
    consistent on data it no longer trains on. A recurrent holdout is whole sequences (time-major,
    from the zero state), so the current critic reads them with the states it produces itself.
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
    holdout_obs: jax.Array      # [H, obs_dim] raw obs of the initial policy's rollout; recurrent [T, E, obs_dim]
    holdout_returns: jax.Array  # [H] their lambda-returns (initial critic); recurrent: [T, E]
    holdout_mask: jax.Array     # [H] tradable; recurrent: [T, E]
    hidden: Any = None          # [N, state] recurrent state for last_obs (sharded over "env"); None: mlp
    holdout_reset: Any = None   # [T, E] episode starts inside the holdout sequences (from zero); None: mlp


@flax.struct.dataclass
class Transition:
    """One rollout step of every env ([n_steps, n_envs] leaves after the scan)."""

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


def all_finite(tree) -> jax.Array:
    """True when every leaf of ``tree`` is finite everywhere."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def select(ok, new, old):
    """``new`` where ``ok`` else ``old``, leaf by leaf (no Python branch on a traced value)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)


class NonFiniteUpdateError(RuntimeError):
    """An update produced a non-finite loss, gradient or parameter and was skipped."""

    def __init__(self, update: int, metric: str, value: float, skipped: int):
        self.update, self.metric, self.value = update, metric, value
        super().__init__(
            f"training diverged at update {update}: {metric} = {value} (the update was skipped; "
            f"{skipped} skipped so far). Lower ppo.learning_rate or ppo.max_grad_norm, "
            f"or check the market data and env settings for NaN/inf values."
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
