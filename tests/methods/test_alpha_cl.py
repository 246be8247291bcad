"""alpha-CL (Tian 2022): the official code's values, float64 gradients, a hand-computed
case, InfoNCE's gradient as one alpha-CL, the method on a step and its bad input."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config, losses
from dualssl_tf.methods import contrastive
from dualssl_tf.options import ConfigError

DATA = os.path.join(os.path.dirname(__file__), "data", "alpha_cl_reference.json")
# float32 against the official float64 values: embeddings of norm ~3 normalised, distances
# in [0, 2], about 6 negatives weighted per anchor; each step rounds at ~6e-8 relative, so
# loss and gradients (entries O(0.1-1)) agree to a few 1e-7; 1e-5 leaves margin for another
# summation order (AVX-512 vs AVX2) and is still far below any error of the formula (a
# wrong normaliser or exponent moves them by >= 1e-3, see the float64 check below).
F32_TOL = 1e-5


def _reference():
    with open(DATA) as f:
        return json.load(f)


def _kwargs(case):
    return {"form": case["form"], "exponent": case["exponent"], "eps": case["eps"],
            "inverse_exponent": case["inverse_exponent"]}


def _loss_and_grads(z1, z2, case, dtype):
    """Our alpha-CL on L2-normalised embeddings (as the official trainer normalises): the
    mean over the 2N in-batch anchors and its gradient w.r.t. the raw embeddings."""
    z1, z2 = tf.constant(z1, dtype), tf.constant(z2, dtype)
    fn = contrastive.loss_fn("alpha_cl", case["temperature"], alpha_cl=_kwargs(case))
    with tf.GradientTape() as tape:
        tape.watch([z1, z2])
        n1, n2 = tf.math.l2_normalize(z1, axis=1), tf.math.l2_normalize(z2, axis=1)
        loss = tf.reduce_mean(fn(*losses.in_batch_distances(n1, n2)))
    g1, g2 = tape.gradient(loss, [z1, z2])
    return float(loss), g1.numpy(), g2.numpy()


@pytest.mark.parametrize("name", [c["name"] for c in _reference()["cases"]])
def test_matches_the_official_dual2_loss(name):
    """facebookresearch/luckmatters' NTXentLoss(loss_type=dual2) on the same embeddings
    (benchmarks/peer_reference_alpha_cl.py): value and gradient, in float32 and float64."""
    ref = _reference()
    case = next(c for c in ref["cases"] if c["name"] == name)
    z1, z2 = np.array(ref["z1"]), np.array(ref["z2"])
    for dtype, tol in ((tf.float32, F32_TOL), (tf.float64, 1e-10)):
        loss, g1, g2 = _loss_and_grads(z1, z2, case, dtype)
        assert loss == pytest.approx(case["loss"], abs=tol), (dtype, loss, case["loss"])
        np.testing.assert_allclose(g1, case["grad_z1"], atol=tol)
        np.testing.assert_allclose(g2, case["grad_z2"], atol=tol)
    # The cases differ from each other far more than the tolerance: each form is pinned.
    others = [c["loss"] for c in ref["cases"] if c["name"] != name]
    assert min(abs(case["loss"] - o) for o in others) > 1e-3


def test_a_tiny_case_by_hand():
    """One anchor, r+ = 0.2, r- = (0.5, 1.0), tau = 0.5."""
    rp, rn = tf.constant([0.2], tf.float64), tf.constant([[0.5, 1.0]], tf.float64)
    e1, e2 = math.exp(-1.0), math.exp(-2.0)   # e^{-r/tau}
    # Official defaults: exp form, p = 1, eps = 0.1 -> normaliser e1 + e2 + 0.1 * 2.
    want = (e1 * (0.2 - 0.5) + e2 * (0.2 - 1.0)) / (e1 + e2 + 0.2)
    assert float(losses.alpha_cl_loss(rp, rn, 0.5)[0]) == pytest.approx(want, rel=1e-12)
    # p = 2: w = e^{-r^2/tau} = e^{-0.5}, e^{-2}; eps = 0.
    a, b = math.exp(-0.5), math.exp(-2.0)
    want = (a * -0.3 + b * -0.8) / (a + b)
    got = losses.alpha_cl_loss(rp, rn, 0.5, exponent=2.0, eps=0.0)
    assert float(got[0]) == pytest.approx(want, rel=1e-12)
    # inverse, q = 2: w = 1 / (r + tau)^2 = 1, 1/2.25; positive in the normaliser, weight
    # 0.5: + 0.5 / 0.7^2.
    a, b, p = 1.0, 1 / 2.25, 0.5 / 0.49
    want = (a * -0.3 + b * -0.8) / (a + b + p)
    got = losses.alpha_cl_loss(rp, rn, 0.5, form="inverse", inverse_exponent=2.0, eps=0.0,
                               pos_weight=0.5)
    assert float(got[0]) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"exponent": 2.0, "eps": 0.0},
                                    {"form": "inverse", "inverse_exponent": 2.0}])
def test_float32_gradient_equals_float64_autodiff_with_fixed_weights(kwargs):
    """The gradient is sum_k alpha_k (dr+ - dr_k) with alpha held fixed (stop-gradient):
    float32 through our loss against float64 autodiff of that sum, alpha from NumPy."""
    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    tau = 0.3
    z32 = [tf.constant(z, tf.float32) for z in (z1, z2)]
    with tf.GradientTape() as tape:
        tape.watch(z32)
        got = tf.reduce_mean(losses.alpha_cl_loss(*losses.in_batch_distances(*z32), tau,
                                                  **kwargs))
    g32 = tape.gradient(got, z32)

    rp, rn = [r.numpy() for r in losses.in_batch_distances(z1, z2)]
    x = rn ** kwargs.get("exponent", 1.0)
    if kwargs.get("form") == "inverse":
        w = 1.0 / (x + tau) ** kwargs["inverse_exponent"]
    else:
        w = np.exp(-x / tau)
    alpha = w / (w.sum(1, keepdims=True) + kwargs.get("eps", 0.1) * rn.shape[1])
    z64 = [tf.constant(z, tf.float64) for z in (z1, z2)]
    with tf.GradientTape() as tape:
        tape.watch(z64)
        r_pos, r_neg = losses.in_batch_distances(*z64)
        want = tf.reduce_mean(tf.reduce_sum(alpha * (r_pos[:, None] - r_neg), axis=1))
    g64 = tape.gradient(want, z64)
    assert float(got) == pytest.approx(float(want), abs=1e-6)
    for a, b in zip(g32, g64):
        assert np.abs(b.numpy()).max() > 1e-2  # a real gradient
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_infonce_is_alpha_cl_with_its_weights(tau):
    """The paper's claim: InfoNCE's gradient is alpha-CL's with alpha_k = e^{-r_k/tau} /
    (e^{-r+/tau} + sum_j e^{-r_j/tau}) (exp form, p = 1, eps = 0, positive weight 1), on
    the distances and through in-batch embeddings; the loss values differ."""
    rng = np.random.default_rng(4)
    rp, rn = tf.constant(rng.uniform(0, 2, 6)), tf.constant(rng.uniform(0, 2, (6, 5)))
    weights = {"eps": 0.0, "pos_weight": 1.0}
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([rp, rn])
        nce = tf.reduce_sum(losses.info_nce_loss(rp, rn, tau))
        acl = tf.reduce_sum(losses.alpha_cl_loss(rp, rn, tau, **weights))
    for a, b in zip(tape.gradient(acl, [rp, rn]), tape.gradient(nce, [rp, rn])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert abs(float(nce) - float(acl)) > 0.1
    # Theorem 2's common property holds for every alpha-CL: dL/dr+ = -sum_k dL/dr_k.
    g_pos, g_neg = tape.gradient(acl, [rp, rn])
    np.testing.assert_allclose(g_pos + tf.reduce_sum(g_neg, 1), 0.0, atol=1e-12)

    z = [tf.constant(rng.normal(size=(4, 3))) for _ in range(2)]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        d = losses.in_batch_distances(*z)
        nce = tf.reduce_mean(losses.info_nce_loss(*d, tau))
        acl = tf.reduce_mean(losses.alpha_cl_loss(*d, tau, **weights))
        off = tf.reduce_mean(losses.alpha_cl_loss(*d, tau))
    g_nce = tape.gradient(nce, z)
    for a, b in zip(tape.gradient(acl, z), g_nce):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    # The official default (eps = 0.1, no positive term) is not InfoNCE's gradient.
    assert np.abs(tape.gradient(off, z)[0] - g_nce[0]).max() > 1e-3


def test_small_temperature_neither_underflows_nor_divides_by_zero():
    """e^{-r/tau} underflows float32 at tau = 0.005 (e^{-400}); the log-sum-exp keeps the
    weights a distribution over the negatives, nearest first."""
    rp = tf.constant([1.5], tf.float32)
    rn = tf.constant([[1.8, 1.9, 2.0]], tf.float32)
    alpha = losses.alpha_cl_weights(rp, rn, 0.005, eps=0.0).numpy()
    assert np.isfinite(alpha).all() and alpha.sum() == pytest.approx(1.0, rel=1e-6)
    assert alpha[0, 0] > 0.99
    assert np.isfinite(losses.alpha_cl_loss(rp, rn, 0.005, eps=0.0).numpy()).all()


def test_method_step_with_explicit_and_in_batch_negatives():
    """ContrastiveMethod with --loss=alpha_cl: the logged loss is the formula's mean on the
    embeddings of the forward pass, for both negative sources."""
    import keras
    keras.utils.set_random_seed(0)
    enc = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
    kwargs = {"form": "exp", "exponent": 2.0, "eps": 0.0}
    model = contrastive.ContrastiveMethod(enc, loss="alpha_cl", temperature=0.5,
                                          alpha_cl=kwargs)
    rng = np.random.default_rng(5)
    for neg in (0, 2):
        batch = {"view1": rng.normal(size=(4, 6)), "view2": rng.normal(size=(4, 6))}
        if neg:
            batch["negatives"] = rng.normal(size=(4, neg, 6))
        batch = {k: tf.constant(v, tf.float32) for k, v in batch.items()}
        out = model.forward(batch, training=False)
        per, logs = model.per_example_loss(batch, out)
        assert per.shape == (4 if neg else 8,)
        r_pos, r_neg = model.distances(out)
        np.testing.assert_allclose(per, losses.alpha_cl_loss(r_pos, r_neg, 0.5, **kwargs),
                                   rtol=1e-6)


def _cfg(**kw):
    return config.TrainConfig(dataset="hltm", negatives="batch", **kw)


def test_options_reach_the_method():
    from dualssl_tf.methods.options import ContrastiveOptions
    opts = ContrastiveOptions(loss="alpha_cl", alpha_cl_form="inverse", alpha_cl_exponent=2.0,
                              alpha_cl_eps=0.0, alpha_cl_inverse_exponent=3.0,
                              alpha_cl_pos_weight=1.0)
    opts.validate(_cfg(loss="alpha_cl"))
    assert opts.alpha_cl() == {"form": "inverse", "exponent": 2.0, "eps": 0.0,
                               "inverse_exponent": 3.0, "pos_weight": 1.0}


@pytest.mark.parametrize("kw,flag,text", [
    (dict(loss="nce", alpha_cl_exponent=2.0), "alpha_cl_exponent", "only --loss=alpha_cl"),
    (dict(loss="ntxent", alpha_cl_form="inverse"), "alpha_cl_form", "only --loss=alpha_cl"),
    (dict(loss="alpha_cl", alpha_cl_form="poly"), "alpha_cl_form", "exp, inverse"),
    (dict(loss="alpha_cl", alpha_cl_exponent=0.0), "alpha_cl_exponent", "must be > 0"),
    (dict(loss="alpha_cl", alpha_cl_eps=-0.1), "alpha_cl_eps", "must be >= 0"),
    (dict(loss="alpha_cl", alpha_cl_pos_weight=-1.0), "alpha_cl_pos_weight", ">= 0"),
    (dict(loss="alpha_cl", alpha_cl_inverse_exponent=2.0), "alpha_cl_inverse_exponent",
     "only --alpha_cl_form=inverse"),
    (dict(loss="alpha_cl", alpha_cl_form="inverse", alpha_cl_inverse_exponent=-1.0),
     "alpha_cl_inverse_exponent", "must be > 0"),
    (dict(loss="alpha_cl", beta=0.5), "beta", "not 'alpha_cl'"),
])
def test_bad_options_name_the_flag(kw, flag, text):
    with pytest.raises(ConfigError) as err:
        config.validate(_cfg(**kw))
    assert err.value.flag == flag and text in str(err.value)
