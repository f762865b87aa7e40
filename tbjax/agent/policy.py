"""Action distributions of the trading policy: sample, log-probability, entropy, mode.

Two action modes (static strings, chosen by config):
- "discrete": ``policy_params`` are logits [..., n_actions] over position levels; actions are
  int32 indices.
- "continuous": ``policy_params`` are [..., 2] = (mean, log_std) of a Gaussian on the pre-squash
  value u; the action is a = tanh(u) in [-1, 1] (the env maps it to [min_position,
  max_position]). Squashed-Gaussian density with the change-of-variables correction
  log pi(a) = log N(u; mean, std) - log(1 - tanh(u)^2)  (Haarnoja et al. 2018, "Soft
  Actor-Critic", Appendix C, eq. 21).

The continuous log-probability is always computed from the stored action (u = atanh(a)), also
when sampling, so that PPO's probability ratio is exactly 1 on the data it was collected with,
even when tanh saturates in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tbjax.config_rules import ACTION_MODES, check_choice

# tanh(u) rounds to +-1 in float32 for |u| > ~9; atanh needs |a| < 1.
_ACTION_EPS = 1e-6
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def check_action_mode(action_mode: str) -> None:
    """Raise InputError unless ``action_mode`` is one of ACTION_MODES (the env.action_mode rule)."""
    check_choice("env.action_mode", action_mode, ACTION_MODES)


def _split_gaussian(policy_params: jax.Array) -> tuple[jax.Array, jax.Array]:
    params = jnp.asarray(policy_params, jnp.float32)
    return params[..., 0], params[..., 1]


def _log_one_minus_tanh_sq(u: jax.Array) -> jax.Array:
    """log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|."""
    return 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))


def policy_log_prob(policy_params: jax.Array, action: jax.Array, action_mode: str) -> jax.Array:
    """log pi(action) under the distribution given by ``policy_params``; shape [...]."""
    check_action_mode(action_mode)
    if action_mode == "discrete":
        log_probs = jax.nn.log_softmax(jnp.asarray(policy_params, jnp.float32), axis=-1)
        index = jnp.asarray(action, jnp.int32)[..., None]
        return jnp.take_along_axis(log_probs, index, axis=-1)[..., 0]
    mean, log_std = _split_gaussian(policy_params)
    a = jnp.clip(jnp.asarray(action, jnp.float32), -1.0 + _ACTION_EPS, 1.0 - _ACTION_EPS)
    u = jnp.arctanh(a)
    z = (u - mean) * jnp.exp(-log_std)
    gaussian = -0.5 * jnp.square(z) - log_std - _HALF_LOG_2PI
    return gaussian - _log_one_minus_tanh_sq(u)


def policy_sample(
    key: jax.Array, policy_params: jax.Array, action_mode: str
) -> tuple[jax.Array, jax.Array]:
    """Draw an action and its log-probability.

    Returns:
        (action, log_prob): discrete int32 index [...], or continuous float32 in [-1, 1] [...].
    """
    check_action_mode(action_mode)
    if action_mode == "discrete":
        action = jax.random.categorical(key, jnp.asarray(policy_params, jnp.float32), axis=-1)
        action = action.astype(jnp.int32)
    else:
        mean, log_std = _split_gaussian(policy_params)
        u = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, jnp.float32)
        action = jnp.tanh(u)
    return action, policy_log_prob(policy_params, action, action_mode)


def policy_entropy(policy_params: jax.Array, action_mode: str) -> jax.Array:
    """Entropy of the policy; shape [...].

    Discrete: -sum_a p_a log p_a. Continuous: the entropy of the PRE-squash Gaussian,
    0.5 log(2 pi e) + log_std. The squashed entropy has no closed form; the pre-squash one is the
    usual PPO entropy bonus (it rewards keeping std up) and differs from it by E[log(1 - a^2)].
    """
    check_action_mode(action_mode)
    if action_mode == "discrete":
        log_probs = jax.nn.log_softmax(jnp.asarray(policy_params, jnp.float32), axis=-1)
        return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    _, log_std = _split_gaussian(policy_params)
    return log_std + 0.5 + _HALF_LOG_2PI


def policy_mode(policy_params: jax.Array, action_mode: str) -> jax.Array:
    """Deterministic action for evaluation: argmax of the logits, or tanh(mean)."""
    check_action_mode(action_mode)
    if action_mode == "discrete":
        return jnp.argmax(policy_params, axis=-1).astype(jnp.int32)
    mean, _ = _split_gaussian(policy_params)
    return jnp.tanh(mean)
