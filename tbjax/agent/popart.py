"""PopArt: adaptive target normalisation that preserves the critic's outputs.

van Hasselt, Guez, Hessel, Mnih & Silver (2016), "Learning values across many orders of
magnitude" (Algorithm 1). Trading returns change scale by orders of magnitude across symbols,
regimes and leverage; rewards are never normalised in tbjax (docs/DESIGN.md invariant 3), so the
critic instead predicts targets normalised by running statistics (mu, sigma) of those targets,
and every change of the statistics is compensated in the critic's last affine layer
("Preserving Outputs Precisely") so that sigma * f(x) + mu does not move.

Use per update (docs/ALGORITHMS.md): unnormalised targets with the old statistics -> update_popart ->
popart_rescale of the critic head -> loss on targets normalised with the new statistics.

Unlike rlax's ``art`` (which sums the batch, an effective step of beta * batch size), the batch
enters through its masked MEAN, so beta is the step per update whatever the batch size.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class PopArtStats:
    """First and second moments of the value targets (float32 scalars).

    sigma is derived, not stored: sigma = sqrt(max(nu - mu^2, sigma_min^2)) (:func:`popart_sigma`).
    """

    mean: jax.Array
    second_moment: jax.Array


def init_popart() -> PopArtStats:
    """mu = 0, nu = 1, so sigma = 1 and the first normalisation is the identity."""
    return PopArtStats(mean=jnp.zeros((), jnp.float32), second_moment=jnp.ones((), jnp.float32))


def popart_sigma(stats: PopArtStats, sigma_min: float = 1e-4) -> jax.Array:
    """sigma = sqrt(max(nu - mu^2, sigma_min^2)); the floor keeps the rescale finite."""
    return jnp.sqrt(jnp.maximum(stats.second_moment - jnp.square(stats.mean), sigma_min**2))


def update_popart(
    stats: PopArtStats,
    targets: jax.Array,
    mask: jax.Array | None,
    beta: float | jax.Array,
) -> PopArtStats:
    """Exponential moving moments of the targets (van Hasselt et al. 2016, Algorithm 1).

    mu' = (1 - beta) mu + beta mean(y),  nu' = (1 - beta) nu + beta mean(y^2), with means over the
    entries where ``mask`` is true. A batch with no valid entry leaves the statistics unchanged.

    Args:
        stats: current statistics.
        targets: unnormalised value targets, any shape.
        mask: same shape as ``targets`` (bool or 0/1), or None for all valid.
        beta: step in [0, 1]; may be traced.
    """
    y = jnp.asarray(targets, jnp.float32)
    w = jnp.ones_like(y) if mask is None else jnp.broadcast_to(mask, y.shape).astype(jnp.float32)
    n_valid = jnp.sum(w)
    y = jnp.where(w > 0, y, 0.0)  # masked entries may hold garbage (NaN) that 0 * NaN would keep
    batch_mean = jnp.sum(w * y) / jnp.maximum(n_valid, 1.0)
    batch_second = jnp.sum(w * jnp.square(y)) / jnp.maximum(n_valid, 1.0)
    step = jnp.where(n_valid > 0, beta, 0.0)
    return PopArtStats(
        mean=(1.0 - step) * stats.mean + step * batch_mean,
        second_moment=(1.0 - step) * stats.second_moment + step * batch_second,
    )


def popart_rescale(
    kernel: jax.Array,
    bias: jax.Array,
    old: PopArtStats,
    new: PopArtStats,
    sigma_min: float = 1e-4,
) -> tuple[jax.Array, jax.Array]:
    """Rescale the last affine layer so that unnormalised outputs are preserved exactly.

    W' = W sigma / sigma',  b' = (sigma b + mu - mu') / sigma'  (van Hasselt et al. 2016, eq. 6),
    hence sigma' (W' h + b') + mu' = sigma (W h + b) + mu for every input h. Every output unit
    (each quantile) shares the same (mu, sigma), so the kernel may be a Dense matrix [H, N] or
    the per-output positive scale of the non-crossing head; sigma / sigma' > 0 keeps that scale
    positive.
    """
    sigma_old = popart_sigma(old, sigma_min)
    sigma_new = popart_sigma(new, sigma_min)
    new_kernel = kernel * (sigma_old / sigma_new)
    new_bias = (sigma_old * bias + old.mean - new.mean) / sigma_new
    return new_kernel.astype(kernel.dtype), new_bias.astype(bias.dtype)


def normalize_value(stats: PopArtStats, y: jax.Array, sigma_min: float = 1e-4) -> jax.Array:
    """(y - mu) / sigma: targets in the critic's normalised space."""
    return (y - stats.mean) / popart_sigma(stats, sigma_min)


def denormalize_value(stats: PopArtStats, y_norm: jax.Array, sigma_min: float = 1e-4) -> jax.Array:
    """sigma * y_norm + mu: the critic's output back in return units."""
    return popart_sigma(stats, sigma_min) * y_norm + stats.mean
