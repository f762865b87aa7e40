"""Training in the mirrored market (``ppo.mirror``): a direction-neutral prior for long-short learners.

The MIRROR of a market inverts every price (p -> K/p: a rise becomes a fall of the same log size)
and swaps its takers (buyers <-> sellers). A rule that reads direction holds there as well ("buyers
dominate, the next bar rises" is true of both), while the drift of the training bars is reversed.
Each training episode is traded in the mirror with probability ``ppo.mirror``
(:func:`episode_mirrors`), so at 0.5 the learner sees no preferred direction: what the training
bars' drift teaches (be long because the market rose in train) cancels, and a symmetric rule keeps
paying in both worlds. It does NOT stop a learner from memorising noise: a bar and its mirror are
two inputs, and a network maps the one to "long" and the other to "short" as easily as it
memorises one bar (docs/TUNING.md, "Training in the mirrored market", has the measurements).

No bar is added: the mirror is played on the real one. The agent sees its observation with every
direction-odd value negated (the window's features of parity -1 in
:data:`tbjax.data.features.MIRROR_PARITY`, z-scored with the train statistics, so each flips
around its train mean; and the position it holds), and the level it chooses is traded negated (its
long in the mirror is a short here). Its reward is the real account's, the mirrored market's to
first order in the bar's return (a full position earns log(1 - r) here against -log(1 + r) there);
costs are the same, and a short's borrow cost falls on the other side. The same sign flips are
applied to the bootstrap observations (a truncated episode's last one, the rollout's next one),
each in its own episode's world.

It needs long-short levels that mirror onto each other (``env.position_levels`` symmetric around 0, or ``env.min_position`` =
-``env.max_position``) and a known parity for every feature (:func:`tbjax.config_rules.check_mirror_levels`,
:func:`check_mirror_features`).
Validation and test walks never mirror. At 0 the draw is all False and the rollout skips the
flips under a ``lax.cond``, reproducing the plain run bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tbjax.config_rules import symmetric_levels
from tbjax.data.features import MIRROR_PARITY, feature_parity, unknown_parity
from tbjax.env.observation import N_ACCOUNT_FEATURES, POSITION_INDEX
from tbjax.errors import InputError

class MirrorPlan(NamedTuple):
    """Static: ``signs`` [obs_dim] (the observation's parity under the mirror) and ``action_map``
    (discrete: the index of each level's negation; None for a continuous action, which negates)."""

    signs: np.ndarray
    action_map: np.ndarray | None


def mirror_plan(feature_names, window_size: int, env_params, action_mode: str) -> MirrorPlan | None:
    """The static plan of the mirror for this market and env, or None where it does not apply (no bar
    window, levels that do not mirror, a feature of unknown parity): the config rules refuse a
    config that asks for ``ppo.mirror`` > 0 there, so None only ever meets ``ppo.mirror`` = 0."""
    names = tuple(feature_names or ())
    if window_size <= 0 or not names or unknown_parity(names):
        return None
    # a continuous range is traced (its rule is the config's); discrete levels are static and checked here
    if action_mode == "discrete" and not symmetric_levels(env_params.position_levels):
        return None
    account = np.ones(N_ACCOUNT_FEATURES, np.float32)
    account[POSITION_INDEX] = -1.0  # the position held is direction; PnL, time held and drawdown are not
    signs = np.concatenate([account, np.tile(feature_parity(names), window_size)]).astype(np.float32)
    n_levels = len(env_params.position_levels)
    action_map = np.arange(n_levels)[::-1].copy() if action_mode == "discrete" else None
    return MirrorPlan(signs, action_map)


def episode_mirrors(env_state, mirror) -> jax.Array:
    """bool [n_envs]: which envs' current episodes trade in the mirror, each with probability ``mirror``.

    A pure function of the episode (its symbol and first decision bar, ``bar - episode_step``) through
    a 32-bit integer hash (the MurmurHash3 finaliser, Appleby 2008), so an episode is ONE world from
    its first bar to its last, across rollouts, with nothing added to the carry; a bar is visited
    mirrored from some starts and plain from others.
    """
    start = (env_state.bar - env_state.episode_step).astype(jnp.uint32)
    x = env_state.symbol.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) ^ start * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    x = x ^ (x >> 16)
    return (x >> 8).astype(jnp.float32) * jnp.float32(2.0 ** -24) < mirror


def mirror_obs(obs, flags, plan: MirrorPlan | None):
    """obs [B, obs_dim] with the mirrored rows' odd values negated; unchanged (static) without a plan."""
    if plan is None:
        return obs
    signs = jnp.asarray(plan.signs)
    return jax.lax.cond(jnp.any(flags), lambda o: jnp.where(flags[:, None], o * signs, o), lambda o: o, obs)


def mirror_action(action, flags, plan: MirrorPlan | None):
    """The action the env trades: a mirrored row's level negated (discrete: the mirror level's index)."""
    if plan is None:
        return action
    if plan.action_map is None:
        return jnp.where(flags.reshape(flags.shape + (1,) * (action.ndim - 1)), -action, action)
    return jnp.where(flags, jnp.asarray(plan.action_map, action.dtype)[action], action)


def check_mirror_features(mirror: float, feature_names) -> None:
    """Refuse ``ppo.mirror`` > 0 on a market with a feature of unknown parity, naming the key to change
    (the levels' rule is the config's: :func:`tbjax.config_rules.check_mirror_levels`)."""
    unknown = unknown_parity(feature_names)
    if mirror > 0 and unknown:
        raise InputError(f"ppo.mirror = {mirror} needs to know how each feature changes in the mirrored market, "
                         f"and {unknown[0]!r} is not one of tbjax's features ({', '.join(sorted(MIRROR_PARITY))}): "
                         "leave it out of features.columns or set ppo.mirror: 0")
