"""Training-time augmentation of the market window: what the learner sees while it collects experience.

The learner memorises its training bars (docs/TUNING.md, "Do no harm out of sample"): a window of
z-scored features identifies its bar, and a network that maps bars to their future returns fits
noise. Two time-series augmentations (Um et al. 2017, "Data augmentation of wearable sensor data";
Iwana & Uchida 2021, "An empirical survey of data augmentation for time series") make two training
visits of one bar look different while keeping what a rule can use:

* jitter, ``ppo.obs_noise``: independent N(0, sigma^2) noise on every z-scored window value, drawn
  each step (the features are z-scored with train statistics, so sigma is in train standard
  deviations);
* magnitude scaling, ``ppo.obs_scale`` = s: each env's window is multiplied by exp(u), u ~ U(-s, s),
  drawn once per env per rollout (n_steps bars), so a rule cannot key on a bar's exact magnitude.

Only the market window is touched; the 4 account values (position, PnL, time held, drawdown) are
the agent's own state and stay exact. Envs without a bar window (the tests' known-answer envs) are
never augmented. The augmented observation is what the policy acts on AND what the update trains
on (it is stored in the trajectory), so PPO's ratio is computed on the input the action was drawn
from. Validation and test walks never call this module: they act on the plain observations.

Both settings are traced leaves (HPO-searchable, no recompile); at 0 / 0 the rollout skips the draw
under a ``lax.cond``, so the default costs nothing and reproduces the unaugmented run bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tbjax.env.observation import N_ACCOUNT_FEATURES

AUGMENT_STREAM = 0x0A06  # folded into a step's key, so the policy's and the env's draws are unchanged


def window_offset(window_size: int) -> int | None:
    """First augmented column: after the account values when the env has a bar window; None: none."""
    return N_ACCOUNT_FEATURES if window_size > 0 else None


def rollout_scales(key, n_envs: int, obs_scale) -> jax.Array:
    """exp(u), u ~ U(-obs_scale, obs_scale): one magnitude factor per env for a whole rollout, [n_envs, 1]."""
    u = jax.random.uniform(jax.random.fold_in(key, AUGMENT_STREAM), (n_envs, 1), jnp.float32, -1.0, 1.0)
    return jnp.exp(obs_scale * u)


def augment_window(obs, key, scale, obs_noise, offset: int | None):
    """obs [B, obs_dim] with columns ``offset:`` scaled by ``scale`` [B, 1] and jittered by N(0, obs_noise^2).

    ``offset`` None returns ``obs`` unchanged (static). With ``obs_noise == 0`` and ``scale == 1``
    the draw is skipped (``lax.cond``) and ``obs`` comes back exactly.
    """
    if offset is None:
        return obs

    def draw(o):
        window = o[:, offset:]
        noise = jax.random.normal(jax.random.fold_in(key, AUGMENT_STREAM), window.shape, jnp.float32)
        return o.at[:, offset:].set(window * scale + obs_noise * noise)

    active = (obs_noise > 0) | jnp.any(scale != 1.0)
    return jax.lax.cond(active, draw, lambda o: o, obs)
