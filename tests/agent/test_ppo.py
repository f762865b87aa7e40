"""Known-answer tests of the PPO pieces: GAE, CVaR shaping, loss terms, clipping, lr schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tbjax.agent import ppo
from tbjax.errors import InputError
from tbjax.run.assembly import make_hparams, make_spec


def test_gae_hand_computed_with_termination_and_truncation():
    # Two envs (columns), 3 steps, gamma 0.9, lambda 0.8 (gamma * lambda = 0.72).
    # Env 0: t0 ordinary, t1 terminated, t2 truncated with V(final_obs) = 4.0.
    # Env 1: nothing ends; the last step bootstraps from V(obs after the rollout) = 2.0.
    rewards = jnp.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    values = jnp.array([[0.5, 0.0], [0.6, 0.0], [0.7, 0.0]])
    terminated = jnp.array([[False, False], [True, False], [False, False]])
    truncated = jnp.array([[False, False], [False, False], [True, False]])
    final_values = jnp.array([[99.0, 99.0], [99.0, 99.0], [4.0, 99.0]])  # used only on truncation
    last_value = jnp.array([123.0, 2.0])  # env 0's is ignored: its last step was truncated
    next_values = ppo.next_state_values(values, last_value, final_values, truncated)
    adv, ret = ppo.gae(rewards, values, next_values, terminated, terminated | truncated, 0.9, 0.8)
    # Env 0: delta = [1 + 0.9*0.6 - 0.5, 2 - 0.6 (terminated: no bootstrap), 3 + 0.9*4 - 0.7]
    #        = [1.04, 1.4, 5.9]; A2 = 5.9, A1 = 1.4 (done cuts the trace), A0 = 1.04 + 0.72*1.4.
    # Env 1: delta = [1, 1, 1 + 0.9*2] = [1, 1, 2.8]; A2 = 2.8, A1 = 1 + 0.72*2.8 = 3.016,
    #        A0 = 1 + 0.72*3.016 = 3.17152.
    expected_adv = np.array([[2.048, 3.17152], [1.4, 3.016], [5.9, 2.8]])
    np.testing.assert_allclose(adv, expected_adv, rtol=1e-6)
    np.testing.assert_allclose(ret, expected_adv + np.asarray(values), rtol=1e-6)


def test_cvar_shaping_hand_computed():
    # eta = 0.05, alpha = 0.1, weight 2: shortfall (eta - G)^+ = [0, 1.55, 0.05] -> penalty x20.
    adv = jnp.array([0.2, -1.0, 0.0])
    returns = jnp.array([0.3, -1.5, 0.0])
    eta = jnp.full((3,), 0.05)
    shaped = ppo.cvar_policy_advantage(adv, returns, eta, jnp.float32(0.1), jnp.float32(2.0))
    np.testing.assert_allclose(shaped, [0.2, -1.0 - 31.0, -1.0], rtol=1e-6)
    plain = ppo.cvar_policy_advantage(adv, returns, eta, jnp.float32(0.1), jnp.float32(0.0))
    np.testing.assert_array_equal(plain, adv)


def test_masked_standardize_ignores_masked_entries():
    x = jnp.array([1.0, 3.0, 1000.0, jnp.nan])
    mask = jnp.array([True, True, False, False])
    z = ppo.masked_standardize(x, mask)
    np.testing.assert_allclose(z[:2], [-1.0, 1.0], rtol=1e-6)
    assert float(ppo.masked_mean(x, mask)) == 2.0


def test_clip_by_global_norm():
    grads = {"a": jnp.array([3.0]), "b": jnp.array([[4.0]])}  # norm 5
    clipped, norm = ppo.clip_by_global_norm(grads, jnp.float32(1.0))
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [0.6], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], [[0.8]], rtol=1e-6)
    same, _ = ppo.clip_by_global_norm(grads, jnp.float32(10.0))
    np.testing.assert_array_equal(same["a"], grads["a"])


def test_learning_rate_schedules():
    hp = make_hparams(None, learning_rate=1e-3, lr_min=1e-4)
    assert float(ppo.learning_rate_at(hp, jnp.int32(7), 10, "constant")) == pytest.approx(1e-3)
    linear = [float(ppo.learning_rate_at(hp, jnp.int32(u), 10, "linear")) for u in (0, 5, 10, 20)]
    np.testing.assert_allclose(linear, [1e-3, 5.5e-4, 1e-4, 1e-4], rtol=1e-5)


def test_ppo_loss_matches_numpy_reference():
    # A "network" whose logits and quantiles are the parameters themselves (one state).
    logits = jnp.array([0.3, -0.2])
    params = {"logits": logits, "q": jnp.array([-1.0, 1.0])}

    def apply_fn(p, obs):
        b = obs.shape[0]
        return jnp.broadcast_to(p["logits"], (b, 2)), jnp.broadcast_to(p["q"], (b, 2))

    batch = ppo.PPOBatch(
        obs=jnp.zeros((4, 1)), action=jnp.array([0, 1, 1, 0]),
        log_prob=jnp.log(jnp.array([0.5, 0.5, 0.3, 0.7])),
        advantage=jnp.array([1.0, -2.0, 0.5, 3.0]), target=jnp.array([0.0, 2.0, -2.0, 0.5]),
        tradable=jnp.array([True, True, True, False]))
    hp = make_hparams(None, clip_eps=0.2, ent_coef=0.01, vf_coef=0.5)
    total, aux = ppo.ppo_loss(params, batch, hp, apply_fn, "discrete", 1.0)

    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum()
    m = np.array([1, 1, 1, 0], bool)
    a = np.array([0, 1, 1, 0])
    ratio = p[a] / np.array([0.5, 0.5, 0.3, 0.7])
    adv = np.array([1.0, -2.0, 0.5, 3.0])
    adv_n = (adv - adv[m].mean()) / (adv[m].std() + 1e-8)
    surr = np.minimum(ratio * adv_n, np.clip(ratio, 0.8, 1.2) * adv_n)
    policy_loss = -surr[m].mean()
    entropy = -(p * np.log(p)).sum()
    # Quantile Huber (kappa 1) with taus 0.25, 0.75, u = target - prediction, all transitions.
    tau = np.array([0.25, 0.75])
    u = np.array([0.0, 2.0, -2.0, 0.5])[:, None] - np.array([-1.0, 1.0])[None, :]
    hub = np.where(np.abs(u) <= 1, 0.5 * u**2, np.abs(u) - 0.5)
    value_loss = (np.abs(tau - (u < 0)) * hub).sum(axis=1).mean()
    log_ratio = np.log(ratio)
    np.testing.assert_allclose(aux["loss/policy"], policy_loss, rtol=1e-5)
    np.testing.assert_allclose(aux["loss/entropy"], entropy, rtol=1e-5)
    np.testing.assert_allclose(aux["loss/value"], value_loss, rtol=1e-5)
    np.testing.assert_allclose(aux["approx_kl"], ((ratio - 1) - log_ratio)[m].mean(), rtol=1e-4)
    np.testing.assert_allclose(aux["clip_frac"], (np.abs(ratio - 1) > 0.2)[m].mean(), rtol=1e-6)
    np.testing.assert_allclose(total, policy_loss + 0.5 * value_loss - 0.01 * entropy, rtol=1e-5)


def test_hparams_and_spec_validation():
    hp = make_hparams(None)
    assert all(leaf.dtype == jnp.float32 and leaf.shape == () for leaf in jax.tree_util.tree_leaves(hp))
    assert float(hp.popart_beta) == pytest.approx(3e-4) and float(hp.cvar_weight) == 0.0
    with pytest.raises(InputError, match="learning_rat"):
        make_hparams(None, learning_rat=1e-3)
    with pytest.raises(InputError, match="gamma"):
        make_hparams(None, gamma=1.5)
    with pytest.raises(InputError, match="n_minibatches"):
        make_spec(n_envs=10, n_steps=3, n_minibatches=4).validate()
    with pytest.raises(InputError, match="devices"):
        make_spec(n_envs=6, n_steps=4).validate(n_devices=4)
    with pytest.raises(InputError, match="lr_schedule"):
        make_spec(lr_schedule="cosine").validate()


def test_adamw_step_matches_a_hand_written_reference():
    """One minibatch step: p1 = p0 - lr * (adam(g) + wd * p0) on kernels; biases and the critic's
    PopArt head move by Adam alone (ppo.decay_mask). Reference: Adam's first step by hand,
    m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected: g / (|g| + eps)."""
    params = {"params": {"Dense_0": {"kernel": jnp.array([[0.5, -1.0]]), "bias": jnp.array([0.2, 0.3])},
                         "critic_head": {"kernel": jnp.array([1.0]), "bias": jnp.array([0.0])}}}

    def apply_fn(p, obs):
        h = obs @ p["params"]["Dense_0"]["kernel"] + p["params"]["Dense_0"]["bias"]
        q = p["params"]["critic_head"]["kernel"] * h[:, :1] + p["params"]["critic_head"]["bias"]
        return h, q

    batch = ppo.PPOBatch(obs=jnp.array([[1.0], [2.0]]), action=jnp.array([0, 1]),
                         log_prob=jnp.log(jnp.array([0.5, 0.5])), advantage=jnp.array([1.0, -1.0]),
                         target=jnp.array([[0.3], [-0.4]]).reshape(2), tradable=jnp.array([True, True]))
    lr, wd = 0.01, 0.5
    kw = dict(apply_fn=apply_fn, action_mode="discrete", huber_kappa=1.0, n_epochs=1, n_minibatches=1)
    hp = make_hparams(None, weight_decay=wd, max_grad_norm=1e6)
    key = jax.random.PRNGKey(0)
    opt = ppo.ADAM.init(params)
    new, _, _, finite = ppo.ppo_update(params, opt, batch, key, hp, jnp.float32(lr), **kw)
    grads = jax.grad(lambda p: ppo.ppo_loss(p, batch, hp, apply_fn, "discrete", 1.0)[0])(params)
    mask = {"Dense_0": {"kernel": 1.0, "bias": 0.0}, "critic_head": {"kernel": 0.0, "bias": 0.0}}
    assert bool(finite)
    for layer in ("Dense_0", "critic_head"):
        for leaf in ("kernel", "bias"):
            g = np.asarray(grads["params"][layer][leaf], np.float64)
            p0 = np.asarray(params["params"][layer][leaf], np.float64)
            adam = g / (np.abs(g) + 1e-5)
            want = p0 - lr * (adam + wd * mask[layer][leaf] * p0)
            np.testing.assert_allclose(new["params"][layer][leaf], want, rtol=1e-5, atol=1e-7)


def test_shuffled_order_is_a_uniform_permutation():
    # Every one of the 4! = 24 orders of 4 items equally likely: chi-square over 12,000 draws.
    from scipy import stats
    orders = jax.vmap(lambda k: ppo.shuffled_order(k, 4))(jax.random.split(jax.random.PRNGKey(0), 12_000))
    orders = np.asarray(orders)
    assert (np.sort(orders, axis=1) == np.arange(4)).all()  # each row a permutation
    codes = orders @ np.array([64, 16, 4, 1])
    counts = np.array([np.sum(codes == c) for c in np.unique(codes)])
    assert len(counts) == 24
    assert stats.chisquare(counts).pvalue > 1e-3
    big = np.asarray(ppo.shuffled_order(jax.random.PRNGKey(1), 65_536))
    assert (np.sort(big) == np.arange(65_536)).all()
