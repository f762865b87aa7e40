"""Quantile Huber loss learns the right quantiles (and the inverted sign does not); CVaR/VaR."""

import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats as sps

from tbjax.agent.distributional import (
    cvar_from_quantiles,
    quantile_huber_loss,
    quantile_levels,
    value_at_risk,
)

NUM_QUANTILES = 8
LOGNORMAL_SIGMA = 0.5


def inverted_quantile_huber_loss(quantiles, targets, kappa=1.0):
    """The seed system's bug: u = prediction - target. Negating both arguments of the correct
    loss flips the sign of u and nothing else."""
    return quantile_huber_loss(-quantiles, -targets, kappa)


def fit_quantiles(loss_fn, samples, kappa, steps=1500):
    """Adam on a free vector of N quantiles against a fixed sample (full batch)."""
    schedule = optax.cosine_decay_schedule(0.05, steps)
    optimizer = optax.adam(schedule)
    theta = jnp.ones((NUM_QUANTILES,), jnp.float32)  # start at the lognormal median

    def loss(theta):
        return loss_fn(theta[None, :], samples[None, :], kappa)[0]

    def step(carry, _):
        theta, opt_state = carry
        grads = jax.grad(loss)(theta)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(theta, updates), opt_state), None

    (theta, _), _ = jax.lax.scan(step, (theta, optimizer.init(theta)), None, length=steps)
    return theta


@pytest.fixture(scope="module")
def lognormal_fits():
    samples = jax.random.lognormal(jax.random.PRNGKey(0), LOGNORMAL_SIGMA, (20_000,))
    fit = jax.jit(fit_quantiles, static_argnums=(0,))
    correct = fit(quantile_huber_loss, samples, 0.01)
    inverted = fit(inverted_quantile_huber_loss, samples, 0.01)
    tau = np.asarray(quantile_levels(NUM_QUANTILES), np.float64)
    analytic = sps.lognorm(s=LOGNORMAL_SIGMA).ppf(tau)
    return np.asarray(correct), np.asarray(inverted), tau, analytic


QUANTILE_TOL = 0.03  # sampling error of 20k draws is < 0.01 at these levels


def test_quantile_regression_recovers_lognormal_quantiles(lognormal_fits):
    correct, _, _, analytic = lognormal_fits
    np.testing.assert_allclose(correct, analytic, atol=QUANTILE_TOL)
    assert correct[0] < correct[-1]  # theta_0 is the low tail


def test_inverted_loss_learns_one_minus_tau_and_fails(lognormal_fits):
    _, inverted, tau, analytic = lognormal_fits
    assert np.max(np.abs(inverted - analytic)) > 10 * QUANTILE_TOL
    mirrored = sps.lognorm(s=LOGNORMAL_SIGMA).ppf(1.0 - tau)
    np.testing.assert_allclose(inverted, mirrored, atol=QUANTILE_TOL)


def test_hand_computed_loss_two_quantiles_two_targets():
    # tau = (0.25, 0.75), theta = (0, 1), T = (0.5, 2), kappa = 1.
    # u_0 = (0.5, 2):   Huber (0.125, 1.5), weights 0.25      -> mean 0.203125
    # u_1 = (-0.5, 1):  Huber (0.125, 0.5), weights 0.25, 0.75 -> mean 0.203125
    theta = jnp.array([[0.0, 1.0]])
    targets = jnp.array([[0.5, 2.0]])
    np.testing.assert_allclose(np.asarray(quantile_huber_loss(theta, targets)), [0.40625])
    # Inverted sign: u_0 = (-0.5, -2) weights 0.75 -> 0.609375; u_1 = (0.5, -1) -> 0.109375.
    np.testing.assert_allclose(
        np.asarray(inverted_quantile_huber_loss(theta, targets)), [0.71875]
    )


def test_loss_accepts_one_target_per_row():
    # theta = (0, 1), T = 3, kappa = 2: u = (3, 2); Huber_2 = (2 * (3 - 1), 2) = (4, 2);
    # rho = (0.25 * 4 / 2, 0.75 * 2 / 2) = (0.5, 0.75).
    loss = quantile_huber_loss(jnp.array([[0.0, 1.0], [3.0, 3.0]]), jnp.array([3.0, 3.0]), 2.0)
    np.testing.assert_allclose(np.asarray(loss), [1.25, 0.0])


def mid_point_quantiles(ppf, n):
    return jnp.asarray(ppf((np.arange(n) + 0.5) / n), jnp.float32)


cvar_jit = jax.jit(cvar_from_quantiles)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.25, 0.5, 1.0])
def test_cvar_uniform_closed_form(alpha):
    a, b = -2.0, 3.0
    q = mid_point_quantiles(sps.uniform(loc=a, scale=b - a).ppf, 4096)
    expected = a + alpha * (b - a) / 2.0
    np.testing.assert_allclose(float(cvar_jit(q, alpha)), expected, atol=2e-4)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.3])
def test_cvar_normal_closed_form(alpha):
    mu, sigma = 1.0, 2.0
    dist = statistics.NormalDist(mu, sigma)
    q = mid_point_quantiles(np.vectorize(dist.inv_cdf), 4096)
    std_normal = statistics.NormalDist()
    expected = mu - sigma * std_normal.pdf(std_normal.inv_cdf(alpha)) / alpha
    # Mid-point quantiles cut the tail below tau = 1/(2N); at N = 4096 that costs < 0.3 %.
    np.testing.assert_allclose(float(cvar_jit(q, alpha)), expected, rtol=3e-3)


def test_cvar_two_point_distribution_by_hand():
    # 0.30 w.p. 0.95 and -1.50 w.p. 0.05: the worst 10 % is half -1.5, half 0.3 -> -0.6.
    q = jnp.array([0.3] * 19 + [-1.5], jnp.float32)  # unsorted on purpose
    np.testing.assert_allclose(float(cvar_jit(q, 0.1)), -0.6, rtol=1e-6)
    np.testing.assert_allclose(float(value_at_risk(q, 0.1)), 0.3)
    np.testing.assert_allclose(float(value_at_risk(q, 0.01)), -1.5)


def test_cvar_matches_rockafellar_uryasev_with_traced_alpha():
    # CVaR = eta - E[(eta - G)^+] / alpha at eta = VaR (Rockafellar & Uryasev 2000), for the
    # distribution with mass 1/N on each quantile; alpha is traced (vmapped), some alpha N integer.
    q = jax.random.normal(jax.random.PRNGKey(1), (3, 10)) * 2.0 + 0.5
    alphas = jnp.array([0.05, 0.1, 0.23, 0.5, 0.97, 1.0])
    cvar = jax.jit(jax.vmap(cvar_from_quantiles, in_axes=(None, 0)))(q, alphas)
    var = jax.jit(jax.vmap(value_at_risk, in_axes=(None, 0)))(q, alphas)
    q64 = np.asarray(q, np.float64)
    for row, alpha in enumerate(np.asarray(alphas, np.float64)):
        eta = np.asarray(var[row], np.float64)[:, None]
        reference = eta[:, 0] - np.mean(np.maximum(eta - q64, 0.0), axis=-1) / alpha
        np.testing.assert_allclose(np.asarray(cvar[row]), reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cvar[-1]), q64.mean(axis=-1), rtol=1e-5, atol=1e-6)


def test_presorted_quantiles_skip_the_sort_with_the_same_answer():
    # The rollout passes presorted=True for the non-crossing head (ascending by construction,
    # tests/agent/test_networks.py); on ascending input that must equal the sorting path on any order.
    q = jnp.sort(jax.random.normal(jax.random.PRNGKey(3), (4, 16)), axis=-1)
    shuffled = q[:, jax.random.permutation(jax.random.PRNGKey(4), 16)]
    for alpha in (0.05, 0.3, 1.0):
        np.testing.assert_array_equal(np.asarray(value_at_risk(q, alpha, presorted=True)),
                                      np.asarray(value_at_risk(shuffled, alpha)))
        np.testing.assert_allclose(np.asarray(cvar_from_quantiles(q, alpha, presorted=True)),
                                   np.asarray(cvar_from_quantiles(shuffled, alpha)), rtol=1e-6, atol=1e-7)
