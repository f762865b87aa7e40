"""Quantile critic pieces: the QR-DQN quantile Huber loss, VaR and CVaR from quantiles.

The critic predicts N quantiles theta_i of the return distribution at the mid-point levels
tau_i = (i + 0.5) / N (Dabney, Rowland, Bellemare & Munos 2017, "Distributional Reinforcement
Learning with Quantile Regression", QR-DQN, Lemma 2). theta_0 is the LOW tail, so the risk
measures below read the first quantiles.

Sign convention (the bug of the system tbjax replaces): the residual is
    u_ij = T_j - theta_i        (TARGET minus PREDICTION).
With the prediction-minus-target sign the same code learns the 1 - tau quantiles, which turns
a CVaR of the worst outcomes into a CVaR of the best ones. tests/agent/test_distributional.py trains a
quantile vector with both signs and checks that only this one recovers the right quantiles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def quantile_levels(num_quantiles: int) -> jax.Array:
    """Mid-point levels tau_i = (i + 0.5) / N, i = 0..N-1 (QR-DQN, Dabney et al. 2017, Lemma 2)."""
    return (jnp.arange(num_quantiles, dtype=jnp.float32) + 0.5) / num_quantiles


def huber(u: jax.Array, kappa: float | jax.Array = 1.0) -> jax.Array:
    """Huber loss L_kappa(u) = u^2 / 2 if |u| <= kappa else kappa (|u| - kappa / 2)."""
    abs_u = jnp.abs(u)
    return jnp.where(abs_u <= kappa, 0.5 * jnp.square(u), kappa * (abs_u - 0.5 * kappa))


def quantile_huber_loss(
    quantiles: jax.Array, targets: jax.Array, kappa: float | jax.Array = 1.0
) -> jax.Array:
    """Per-sample quantile Huber loss of QR-DQN (Dabney et al. 2017, eq. 10).

    rho_tau(u) = |tau - 1{u < 0}| * L_kappa(u) / kappa with u_ij = T_j - theta_i, and
    loss = sum_i mean_j rho_{tau_i}(u_ij). As kappa -> 0 this becomes the pinball loss, whose
    minimiser satisfies P(T < theta_i) = tau_i.

    Targets are treated as constants (``stop_gradient``): in TD learning they come from a
    bootstrap the critic must not move towards itself.

    Args:
        quantiles: predictions theta, shape [B, N], ordered by level tau_i.
        targets: target samples T, shape [B, M] (M samples per row, e.g. the bootstrapped
            target quantiles) or [B] (one return per row).
        kappa: Huber threshold, > 0.

    Returns:
        Loss per sample, shape [B]; the caller takes a masked mean.
    """
    quantiles = jnp.asarray(quantiles, jnp.float32)
    targets = jax.lax.stop_gradient(jnp.asarray(targets, jnp.float32))
    if targets.ndim == quantiles.ndim - 1:
        targets = targets[..., None]
    tau = quantile_levels(quantiles.shape[-1])
    u = targets[..., None, :] - quantiles[..., :, None]  # [B, N, M]: target minus prediction
    weight = jnp.abs(tau[:, None] - (u < 0).astype(jnp.float32))
    rho = weight * huber(u, kappa) / kappa
    return jnp.sum(jnp.mean(rho, axis=-1), axis=-1)


def _ascending(quantiles: jax.Array, presorted: bool) -> jax.Array:
    q = jnp.asarray(quantiles, jnp.float32)
    return q if presorted else jnp.sort(q, axis=-1)


def value_at_risk(quantiles: jax.Array, alpha: float | jax.Array, presorted: bool = False) -> jax.Array:
    """Lower-tail VaR_alpha: the sorted quantile at index k = floor(alpha N), clamped to N-1.

    This is the maximiser eta of the Rockafellar & Uryasev (2000) representation of CVaR for a
    distribution that puts mass 1/N on each quantile. ``alpha`` may be traced.

    Args:
        quantiles: [..., N] (any order; sorted here).
        alpha: tail probability in (0, 1].
        presorted: the caller guarantees ascending order (the non-crossing head's output), so the
            sort, a third of the rollout's per-step cost outside the network, is skipped.

    Returns:
        [...] the alpha-quantile of the return distribution.
    """
    q = _ascending(quantiles, presorted)
    n = q.shape[-1]
    k = jnp.clip(jnp.floor(alpha * n), 0, n - 1).astype(jnp.int32)
    return jnp.take(q, k, axis=-1)


def cvar_from_quantiles(quantiles: jax.Array, alpha: float | jax.Array, presorted: bool = False) -> jax.Array:
    """Lower-tail CVaR_alpha (expected return over the worst alpha fraction) from quantiles.

    Each sorted quantile q_i carries mass 1/N; with k = floor(alpha N),
        CVaR_alpha = (1/alpha) [ (1/N) sum_{i<k} q_i + (alpha - k/N) q_k ]
    (docs/ALGORITHMS.md; equal to Rockafellar & Uryasev 2000, CVaR = max_eta eta - E[(eta - G)^+]/alpha,
    for that discrete distribution). It is written as sum_i w_i q_i / alpha with
    w_i = clip(alpha - i/N, 0, 1/N), the mass of quantile i that lies below alpha: w_i = 1/N for
    i < k, alpha - k/N for i = k, 0 after. No branching on ``alpha``, so it may be a traced
    hyperparameter (vmapped across trials); alpha = 1 gives the mean.

    Args:
        quantiles: [..., N] (any order; sorted here).
        alpha: tail probability in (0, 1].
        presorted: the caller guarantees ascending order; skip the sort.

    Returns:
        [...] CVaR_alpha.
    """
    q = _ascending(quantiles, presorted)
    n = q.shape[-1]
    levels_below = jnp.arange(n, dtype=jnp.float32) / n
    mass = jnp.clip(alpha - levels_below, 0.0, 1.0 / n)
    return jnp.sum(mass * q, axis=-1) / alpha
