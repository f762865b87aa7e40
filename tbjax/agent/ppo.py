"""Distributional PPO pieces: GAE, the CVaR-shaped advantage, the loss and one update.

- GAE (Schulman, Moritz, Levine, Jordan & Abbeel 2016, eq. 11-16) with separate termination and
  truncation: delta_t = r_t + gamma V(s_{t+1}) (1 - terminated_t) - V(s_t) and
  A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}; on truncation (time limit, end of the data)
  V(s_{t+1}) is the value of the pre-reset observation (Pardo et al. 2018, "Time limits in RL").
- Clipped surrogate (Schulman et al. 2017, eq. 7), approximate KL with Schulman's k3 estimator
  E[(rho - 1) - log rho] (http://joschu.net/blog/kl-approx.html).
- Quantile critic trained with the QR-DQN quantile Huber loss (Dabney et al. 2017) on
  PopArt-normalised targets (van Hasselt et al. 2016).
- CVaR in the policy objective through the Rockafellar & Uryasev (2000) representation
  CVaR_alpha(G) = max_eta { eta - E[(eta - G)^+] / alpha }, maximised by eta = VaR_alpha: the
  objective E[G] + w CVaR_alpha(G) has, for fixed eta, the policy gradient of the shaped return
  G - (w / alpha)(eta - G)^+ (Tamar, Glassner & Mannor 2015, "Optimizing the CVaR via
  Sampling"; per state as in CPPO, Ying et al. 2022, "Towards Safe RL via Constraining
  Conditional Value-at-Risk"). eta(s_t) comes from the critic's de-normalised quantiles.

Optimiser: Adam moments (optax.scale_by_adam, eps 1e-5 as in PureJaxRL) after a manual
global-norm clip, then a step of -lr; the clip threshold and lr are traced, so trials with
different values share one compiled program.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from tbjax.agent.distributional import quantile_huber_loss
from tbjax.agent.hparams import HParams
from tbjax.agent.networks import policy_entropy, policy_log_prob

ADAM = optax.scale_by_adam(eps=1e-5)


def learning_rate_at(hp: HParams, update: jax.Array, total_updates: int, schedule: str) -> jax.Array:
    """lr of update number ``update`` (0-based): constant, or linear from lr to lr_min over
    ``total_updates`` updates (and lr_min afterwards)."""
    if schedule == "constant":
        return hp.learning_rate
    progress = jnp.clip(update.astype(jnp.float32) / float(total_updates), 0.0, 1.0)
    return hp.lr_min + (hp.learning_rate - hp.lr_min) * (1.0 - progress)


def next_state_values(
    values: jax.Array, last_value: jax.Array, final_values: jax.Array, truncated: jax.Array
) -> jax.Array:
    """V(s_{t+1}) for every step of a rollout [T, N].

    The next step's value in the rollout, the value of the observation after the rollout for
    the last step, and the value of the pre-reset observation where the episode was truncated
    (auto-reset replaced the next observation by a new episode's first one).
    """
    following = jnp.concatenate([values[1:], last_value[None]], axis=0)
    return jnp.where(truncated, final_values, following)


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    done: jax.Array,
    gamma: jax.Array,
    gae_lambda: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation by a reverse scan over time (axis 0).

    Returns (advantages A_t, lambda-returns G_t = A_t + V(s_t)).
    """
    bootstrap = jnp.where(terminated, 0.0, next_values)
    deltas = rewards + gamma * bootstrap - values
    continues = 1.0 - done.astype(jnp.float32)

    def backward(next_advantage, step):
        delta, cont = step
        advantage = delta + gamma * gae_lambda * cont * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(deltas[0]), (deltas, continues), reverse=True
    )
    return advantages, advantages + values


def cvar_policy_advantage(
    advantages: jax.Array,
    returns: jax.Array,
    var_estimate: jax.Array,
    cvar_alpha: jax.Array,
    cvar_weight: jax.Array,
) -> jax.Array:
    """A_t - (w / alpha) (eta(s_t) - G_t)^+  (Rockafellar-Uryasev shaping, see module docstring).

    ``var_estimate`` is eta(s_t) = VaR_alpha of the critic's de-normalised quantiles, a constant
    here (stop_gradient): the shaping moves the policy, not the critic. With cvar_weight = 0 the
    plain advantage is returned.
    """
    shortfall = jnp.maximum(jax.lax.stop_gradient(var_estimate) - returns, 0.0)
    return advantages - (cvar_weight / cvar_alpha) * shortfall


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over mask (0 when the mask is empty)."""
    w = mask.astype(jnp.float32)
    return jnp.sum(jnp.where(w > 0, x, 0.0) * w) / jnp.maximum(jnp.sum(w), 1.0)


def masked_standardize(x: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(x - mean) / (std + eps) with mean and std over the masked entries."""
    mean = masked_mean(x, mask)
    std = jnp.sqrt(masked_mean(jnp.square(x - mean), mask))
    return (x - mean) / (std + eps)


@flax.struct.dataclass
class PPOBatch:
    """Training batch of one update: flat transitions [B, ...] for the MLP.

    obs: observations normalised with the rollout's RunningStats; action, log_prob: behaviour
    policy; advantage: CVaR-shaped policy advantage (not yet standardised); target: lambda-return
    normalised with the NEW PopArt statistics; tradable: the action was executed (fill bar
    tradable). Recurrent policies: leaves are time-major sequences [T, B, ...] as the rollout
    stored them (the core scans time, so no transpose is ever made), ``hidden`` [B, state] is the
    core's state at the first step and ``reset`` [T, B] marks episode starts; the MLP leaves both
    None.
    """

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    advantage: jax.Array
    target: jax.Array
    tradable: jax.Array
    hidden: Any = None
    reset: Any = None


def ppo_loss(
    params,
    batch: PPOBatch,
    hp: HParams,
    apply_fn: Callable,
    action_mode: str,
    huber_kappa: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped PPO surrogate - ent_coef * entropy + vf_coef * quantile Huber loss.

    The policy terms (surrogate, entropy, KL, clip fraction) average over tradable transitions
    only: on a non-tradable fill bar the env ignores the action, so its advantage carries no
    information about the action taken. The critic learns every transition (the return is
    defined whether or not the action was executed).
    """
    if batch.hidden is None:
        policy_params, quantiles = apply_fn(params, batch.obs)
    else:  # a recurrent core re-runs each sequence from its stored state
        policy_params, quantiles = apply_fn(params, batch.obs, batch.hidden, batch.reset)
    mask = batch.tradable
    log_ratio = policy_log_prob(policy_params, batch.action, action_mode) - batch.log_prob
    ratio = jnp.exp(log_ratio)
    advantage = masked_standardize(batch.advantage, mask)
    surrogate = jnp.minimum(
        ratio * advantage, jnp.clip(ratio, 1.0 - hp.clip_eps, 1.0 + hp.clip_eps) * advantage
    )
    policy_loss = -masked_mean(surrogate, mask)
    entropy = masked_mean(policy_entropy(policy_params, action_mode), mask)
    value_loss = jnp.mean(quantile_huber_loss(quantiles, batch.target, huber_kappa))
    total = policy_loss + hp.vf_coef * value_loss - hp.ent_coef * entropy
    aux = {
        "loss/policy": policy_loss,
        "loss/value": value_loss,
        "loss/entropy": entropy,
        "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
        "clip_frac": masked_mean((jnp.abs(ratio - 1.0) > hp.clip_eps).astype(jnp.float32), mask),
    }
    return total, aux


def decay_mask(params):
    """1.0 on the weight matrices AdamW decays, 0.0 elsewhere (a tree shaped like ``params``).

    Decoupled weight decay (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"):
    p <- p - lr * (adam_step + weight_decay * p), so the decay does not pass through Adam's
    moments. Only kernels are decayed, as usual: not biases, and not the critic's PopArt head,
    whose affine map must change only through popart_rescale (shrinking it would rescale every
    value estimate behind PopArt's back).
    """
    def mask(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        return jnp.float32(names[-1] == "kernel" and "critic_head" not in names)

    return jax.tree_util.tree_map_with_path(mask, params)


def clip_by_global_norm(grads, max_norm: jax.Array):
    """Scale the gradient tree down to global norm ``max_norm`` (traced); returns (grads, norm)."""
    norm = optax.tree.norm(grads)
    scale = jnp.where(norm > max_norm, max_norm / jnp.maximum(norm, 1e-12), 1.0)
    return jax.tree_util.tree_map(lambda g: g * scale, grads), norm


def minibatch(batch: PPOBatch, index: jax.Array) -> PPOBatch:
    """The samples ``index`` of ``batch``: transitions (axis 0) for the MLP; whole env sequences
    for a recurrent batch (axis 1 of its time-major leaves, axis 0 of ``hidden``).

    For the MLP ``index`` may be [n_minibatches, size] (an epoch's shuffled copy, cut into
    minibatches). ppo_update gathers a recurrent minibatch ([size] indices) inside its SGD step
    straight from the time-major batch: one gather of rows, no transposed copy of the batch.
    """
    # mode "clip": the indices are a permutation, always in range; jnp.take's default ("fill")
    # adds a bounds select over every gathered value of the largest array of the update
    take = lambda axis: lambda x: jnp.take(x, index, axis=axis, mode="clip")  # noqa: E731
    if batch.hidden is None:
        return jax.tree_util.tree_map(take(0), batch)
    return jax.tree_util.tree_map(take(1), batch.replace(hidden=None)).replace(hidden=take(0)(batch.hidden))


def shuffled_order(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random order of 0..n-1 from ONE sort: the argsort of n random 32-bit keys.

    ``jax.random.permutation`` sorts the indices in several rounds (two for 65,536 transitions)
    so that key ties cannot bias it; each round is a full sort, which on CPU cost more than the
    gather it feeds. With one round, a tie keeps the two indices in their original order; the
    expected number of tied pairs is n^2 / 2^33 (0.5 for n = 65,536), an effect far below the
    sampling noise of a minibatch.
    """
    return jnp.argsort(jax.random.bits(key, (n,), jnp.uint32), stable=True).astype(jnp.int32)


def ppo_update(
    params,
    opt_state,
    batch: PPOBatch,
    key: jax.Array,
    hp: HParams,
    learning_rate: jax.Array,
    *,
    apply_fn: Callable,
    action_mode: str,
    huber_kappa: float,
    n_epochs: int,
    n_minibatches: int,
):
    """n_epochs x n_minibatches SGD steps as nested scans (PureJaxRL's update shape).

    Each epoch reshuffles the batch along its sample axis (transitions, or whole env sequences
    for a recurrent policy; see :func:`minibatch`). Returns (params, opt_state, metrics, finite) where
    metrics average over all steps and ``finite`` is False if any step saw a non-finite loss or
    gradient (the caller then discards the whole update).
    """
    batch_size = batch.obs.shape[0] if batch.hidden is None else batch.hidden.shape[0]
    grad_fn = jax.value_and_grad(ppo_loss, has_aux=True)
    decayed = decay_mask(params)  # fixed by the tree's key paths: built once, not in every SGD step

    def minibatch_step(carry, mb):
        params, opt_state, finite = carry
        if batch.hidden is not None:  # a recurrent minibatch arrives as its env indices
            mb = minibatch(batch, mb)
        (loss, aux), grads = grad_fn(params, mb, hp, apply_fn, action_mode, huber_kappa)
        grads, grad_norm = clip_by_global_norm(grads, hp.max_grad_norm)
        updates, opt_state = ADAM.update(grads, opt_state)
        params = jax.tree_util.tree_map(lambda p, u, d: p - learning_rate * (u + hp.weight_decay * d * p),
                                        params, updates, decayed)
        finite = finite & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return (params, opt_state, finite), {**aux, "grad_norm": grad_norm}

    def epoch(carry, epoch_key):
        order = shuffled_order(epoch_key, batch_size).reshape(n_minibatches, -1)
        # MLP: one shuffled copy of the transitions per epoch, sliced contiguously (as before the
        # recurrent path existed); recurrent: each step gathers its env columns (no transposed copy)
        return jax.lax.scan(minibatch_step, carry, order if batch.hidden is not None else minibatch(batch, order))

    (params, opt_state, finite), metrics = jax.lax.scan(
        epoch, (params, opt_state, jnp.array(True)), jax.random.split(key, n_epochs)
    )
    metrics = jax.tree_util.tree_map(jnp.mean, metrics)
    return params, opt_state, metrics, finite
