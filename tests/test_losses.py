"""Loss values against direct NumPy formulas, gradients, and Theorem 2's common property."""

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import losses
from dualssl_tf.methods import contrastive

TAU = 0.3


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _random_r(seed, b=5, h=4):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 2, size=b), rng.uniform(0, 2, size=(b, h))


def test_explicit_distances_match_numpy():
    rng = np.random.default_rng(0)
    z, zp, zn = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 2, 4))
    r_pos, r_neg = losses.explicit_distances(z, zp, zn)
    np.testing.assert_allclose(r_pos, 0.5 * ((z - zp) ** 2).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(r_neg, 0.5 * ((z[:, None] - zn) ** 2).sum(-1), rtol=1e-12)


def test_in_batch_distances_have_the_other_2n_minus_2_views():
    rng = np.random.default_rng(1)
    n, d = 4, 3
    z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    r_pos, r_neg = losses.in_batch_distances(z1, z2)
    assert r_neg.shape == (2 * n, 2 * n - 2)
    views = np.concatenate([z1, z2])
    full = 0.5 * ((views[:, None] - views[None]) ** 2).sum(-1)
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        assert r_pos[a].numpy() == pytest.approx(full[a, pos], abs=1e-10)
        others = [full[a, j] for j in range(2 * n) if j not in (a, pos)]
        np.testing.assert_allclose(r_neg[a].numpy(), others, atol=1e-10)


def test_in_batch_distances_with_global_candidates_slice_the_global_computation():
    rng = np.random.default_rng(2)
    g, n, d = 6, 2, 3
    z1_all, z2_all = rng.normal(size=(g, d)), rng.normal(size=(g, d))
    full_pos, full_neg = losses.in_batch_distances(z1_all, z2_all)
    offset = 2
    r_pos, r_neg = losses.in_batch_distances(z1_all[offset:offset + n],
                                             z2_all[offset:offset + n],
                                             z1_all, z2_all, offset)
    rows = list(range(offset, offset + n)) + list(range(g + offset, g + offset + n))
    np.testing.assert_allclose(r_pos, tf.gather(full_pos, rows), atol=1e-10)
    np.testing.assert_allclose(r_neg, tf.gather(full_neg, rows), atol=1e-10)


def test_simple_loss():
    rp, rn = _random_r(3)
    np.testing.assert_allclose(losses.simple_loss(rp, rn), rp - rn.mean(1), rtol=1e-12)


def test_soft_triplet_loss_h1_matches_paper_formula():
    rp, rn = _random_r(4, h=1)
    r0 = 0.2
    expected = TAU * np.log(1 + np.exp((rp - rn[:, 0] + r0) / TAU))
    np.testing.assert_allclose(losses.soft_triplet_loss(rp, rn, TAU, r0), expected, rtol=1e-12)


def test_info_nce_loss_matches_paper_formula():
    rp, rn = _random_r(5)
    num = np.exp(-rp / TAU)
    expected = -TAU * np.log(num / (num + np.exp(-rn / TAU).sum(1)))
    np.testing.assert_allclose(losses.info_nce_loss(rp, rn, TAU), expected, rtol=1e-12)


def test_nt_xent_matches_simclr_similarity_form():
    """SimCLR: logits = cos/tau over the 2N-1 other views, positive at the pair, both views."""
    rng = np.random.default_rng(6)
    n = 5
    z1, z2 = _unit(rng.normal(size=(n, 8))), _unit(rng.normal(size=(n, 8)))
    views = np.concatenate([z1, z2])
    sim = views @ views.T / TAU
    total = 0.0
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        others = np.delete(sim[a], a)
        total += -sim[a, pos] + np.log(np.exp(others).sum())
    expected = total / (2 * n)
    r_pos, r_neg = losses.in_batch_distances(z1, z2)
    got = tf.reduce_mean(contrastive.loss_fn("ntxent", TAU)(r_pos, r_neg))
    assert got.numpy() == pytest.approx(expected, rel=1e-10)


def test_nt_xent_beta_equals_similarity_form_up_to_constant():
    rng = np.random.default_rng(7)
    n, beta = 4, 0.7
    z1, z2 = _unit(rng.normal(size=(n, 6))), _unit(rng.normal(size=(n, 6)))
    views = np.concatenate([z1, z2])
    sim = views @ views.T / TAU
    vals = []
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        lse = np.log(np.exp(np.delete(sim[a], a)).sum())
        vals.append((-(1 + beta) * sim[a, pos] + lse) / (1 + beta))
    r_pos, r_neg = losses.in_batch_distances(z1, z2)
    got = contrastive.loss_fn("ntxent", TAU, beta=beta)(r_pos, r_neg).numpy()
    np.testing.assert_allclose(got - np.array(vals), beta / (TAU * (1 + beta)), atol=1e-10)


def test_exact_cov_loss_value_and_stop_gradient_weights():
    rp, rn = _random_r(8, h=3)
    beta = 0.5
    w = 1 / (1 + np.exp(rn / TAU)) / (TAU * 3)
    expected = (1 + beta) * w.sum(1) * rp - (w * rn).sum(1)
    rp_t, rn_t = tf.constant(rp), tf.constant(rn)
    with tf.GradientTape() as tape:
        tape.watch([rp_t, rn_t])
        loss = tf.reduce_sum(losses.exact_cov_loss(rp_t, rn_t, TAU, beta))
    np.testing.assert_allclose(losses.exact_cov_loss(rp, rn, TAU, beta), expected, rtol=1e-12)
    g_pos, g_neg = tape.gradient(loss, [rp_t, rn_t])
    # Weights are constants: the gradient is the weights themselves.
    np.testing.assert_allclose(g_pos, (1 + beta) * w.sum(1), rtol=1e-12)
    np.testing.assert_allclose(g_neg, -w, rtol=1e-12)


def test_batch_mean_nce_matches_official_formula():
    rng = np.random.default_rng(9)
    z, zp, zn = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)), rng.normal(size=(6, 1, 4))
    mse_p, mse_n = ((z - zp) ** 2).mean(), ((z[:, None] - zn) ** 2).mean()
    expected = -np.exp(-mse_p / TAU) / (np.exp(-mse_p / TAU) + np.exp(-mse_n / TAU))
    r_pos, r_neg = losses.explicit_distances(z, zp, zn)
    got = tf.reduce_mean(contrastive.loss_fn("nce_batch", TAU, dim=4)(r_pos, r_neg))
    assert got.numpy() == pytest.approx(expected, rel=1e-10)


def _finite_difference_grad(fn, z, eps=1e-6):
    grad = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        grad[idx] = (fn(zp) - fn(zm)) / (2 * eps)
    return grad


@pytest.mark.parametrize("name", ["tri", "nce", "ntxent", "simp"])
def test_gradients_match_finite_differences(name):
    rng = np.random.default_rng(10)
    n = 3
    z = rng.normal(size=(2, n, 4))
    fn = contrastive.loss_fn(name, TAU, margin=0.1)

    def total(zz):
        r_pos, r_neg = losses.in_batch_distances(zz[0], zz[1])
        return float(tf.reduce_mean(fn(r_pos, r_neg)))

    zt = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        r_pos, r_neg = losses.in_batch_distances(zt[0], zt[1])
        loss = tf.reduce_mean(fn(r_pos, r_neg))
    np.testing.assert_allclose(tape.gradient(loss, zt), _finite_difference_grad(total, z),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["simp", "tri", "nce"])
@pytest.mark.parametrize("h", [1, 4])
def test_theorem2_common_property(name, h):
    """dL/dr+ > 0, dL/dr_k- < 0, dL/dr+ + sum_k dL/dr_k- = 0, per anchor."""
    rp, rn = _random_r(11, b=6, h=h)
    rp_t, rn_t = tf.constant(rp), tf.constant(rn)
    with tf.GradientTape() as tape:
        tape.watch([rp_t, rn_t])
        loss = tf.reduce_sum(contrastive.loss_fn(name, TAU, margin=0.2)(rp_t, rn_t))
    g_pos, g_neg = [g.numpy() for g in tape.gradient(loss, [rp_t, rn_t])]
    assert (g_pos > 0).all() and (g_neg < 0).all()
    np.testing.assert_allclose(g_pos + g_neg.sum(1), 0.0, atol=1e-12)


def test_half_precision_embeddings_are_promoted_without_overflow():
    rng = np.random.default_rng(12)
    z1 = tf.constant(_unit(rng.normal(size=(8, 16))), tf.float16)
    z2 = tf.constant(_unit(rng.normal(size=(8, 16))), tf.float16)
    r_pos, r_neg = losses.in_batch_distances(z1, z2)
    loss = contrastive.loss_fn("ntxent", 0.05)(r_pos, r_neg)
    assert loss.dtype == tf.float32 and np.isfinite(loss.numpy()).all()
    ref = contrastive.loss_fn("ntxent", 0.05)(*losses.in_batch_distances(
        tf.cast(z1, tf.float32), tf.cast(z2, tf.float32)))
    np.testing.assert_allclose(loss, ref, rtol=1e-6)


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="Unknown loss 'foo'"):
        contrastive.loss_fn("foo")
