"""Matrix-free OP_l products (analysis.operator_free) against the explicit CovarianceOperator,
Theorem 3 through the matrix-free path on a conv net, and chunking on a ResNet layer."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from dualssl_tf import losses
from dualssl_tf.analysis import connections, theorems
from dualssl_tf.analysis.covariance import CovarianceOperator
from dualssl_tf.analysis.operator_free import MatrixFreeOperator
from dualssl_tf.models.resnet import resnet
from dualssl_tf.models.tree_net import TreeNet

# Float64 products of a few hundred terms: both paths agree to ~1e-15 (measured 2e-16 to
# 4e-16); 1e-10 leaves room for summation order without hiding a wrong factor or centring.
TOL64 = 1e-10


def rel(a, b):
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def mlp():
    return theorems.bias_free_mlp([7, 6, 4], input_dim=5, seed=3)


@pytest.fixture(scope="module")
def x_aug():
    x0 = np.random.default_rng(1).standard_normal((6, 5))
    return theorems.enumerated_augmentations(x0, num_aug=3, strength=0.5, seed=2)


@pytest.mark.parametrize("layer", ["dense_0", "dense_1", "dense_2"])
def test_products_equal_explicit_operator(mlp, x_aug, layer):
    explicit = CovarianceOperator.from_model(mlp, layer, x_aug)
    # chunk_size=4 with M=6: two uneven chunks, so the cross-chunk sums are exercised.
    op = MatrixFreeOperator(mlp, layer, x_aug, chunk_size=4)
    u = np.random.default_rng(7).standard_normal(op.shape)
    assert rel(op.apply(u), explicit.apply(u.ravel())) < TOL64
    w_op = explicit.apply(explicit.weight_vector)
    assert rel(op.apply_weights(), w_op) < TOL64
    assert rel(op.apply_weights(shortcut=True), w_op) < TOL64   # bias-free: reversible
    assert op.quadratic(u) == pytest.approx(u.ravel() @ explicit.apply(u.ravel()), rel=TOL64)
    assert op.residue() < 1e-14
    assert op.theorem3_alignment()["cosine"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("layer", ["dense_0", "dense_2"])
def test_estimators_against_explicit_spectrum(mlp, x_aug, layer):
    explicit = CovarianceOperator.from_model(mlp, layer, x_aug)
    op = MatrixFreeOperator(mlp, layer, x_aug)
    value, vector, products = op.top_eigen(iterations=300, tol=1e-14, seed=0)
    top_values, _ = explicit.top_eigen(1)
    # The Rayleigh quotient converges like (l2/l1)^(2k); at the stopping rule's 1e-14 the
    # value is within a few ulps-times-P of lambda_max.
    assert value == pytest.approx(top_values[0], rel=1e-9)
    assert products < 300
    # An eigenvector of the explicit operator (not compared by angle: the last layer's OP is
    # Cov(fbar_{L-1}) (x) I_{n_L}, so lambda_max has multiplicity n_L). The vector converges
    # only like (l2/l1)^k, the square root of the value's accuracy.
    v = np.ravel(vector.numpy())
    assert np.linalg.norm(explicit.apply(v) - value * v) / value < 1e-6
    # Hutchinson: each probe's z^T OP z is exact, so the estimate equals the explicit
    # operator's on the same Rademacher probes (drawn as documented, fixed seed)...
    probes, seed = 24, 3
    estimate, stderr = op.trace_estimate(probes=probes, seed=seed)
    rng = np.random.default_rng(seed)
    zs = [rng.integers(0, 2, size=op.shape).ravel() * 2.0 - 1.0 for _ in range(probes)]
    assert estimate == pytest.approx(np.mean([z @ explicit.apply(z) for z in zs]), rel=TOL64)
    # ...and is within its stated standard error of the true trace (3 sigma, seed fixed).
    assert stderr > 0
    assert abs(estimate - explicit.trace()) <= 3 * stderr


@pytest.fixture
def float64_keras():
    # Both: the global dtype policy, once Keras has created it, no longer follows floatx.
    previous, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(previous)
    keras.config.set_dtype_policy(policy)


@pytest.mark.parametrize("use_bias", [True, False])
def test_tree_net_groups_equal_explicit(float64_keras, use_bias):
    """The HLTM TreeNet's grouped layers, group by group (``index``), with and without biases:
    the products are the Jacobians' covariance either way; only the residue differs."""
    net = TreeNet(depth=2, num_children=2, hid=4, use_bias=use_bias, seed=4)
    net(np.zeros((1, 4)))
    x_aug = np.random.default_rng(5).integers(0, 2, size=(8, 3, 4)) * 2.0 - 1.0
    rng = np.random.default_rng(9)
    for layer, groups in (("depth_1", 2), ("depth_2", 1)):
        for g in range(groups):
            explicit = CovarianceOperator.from_model(net, layer, x_aug, index=g)
            op = MatrixFreeOperator(net, layer, x_aug, index=g, chunk_size=3)
            u = rng.standard_normal(op.shape)
            assert rel(op.apply(u), explicit.apply(u.ravel())) < TOL64
            assert rel(op.apply_weights(), explicit.apply(explicit.weight_vector)) < TOL64
            with pytest.raises(ValueError, match="shortcut"):
                op.apply_weights(shortcut=True)
        residue = MatrixFreeOperator(net, layer, x_aug).residue()
        if use_bias:
            assert residue > 1e-3
        else:
            assert residue < 1e-14


def test_residue_with_biases_equals_explicit(x_aug):
    """``||f - K^T vec W|| / ||f||`` against the explicit connections of a biased MLP (hidden
    layer: a bias of the last layer alone only shifts f by a constant, which centring removes,
    so there the shortcut would still be exact)."""
    inp = keras.Input((5,), dtype="float64")
    h = keras.layers.Dense(6, activation="relu", dtype="float64", name="hidden",
                           bias_initializer=keras.initializers.Constant(0.3))(inp)
    out = keras.layers.Dense(3, dtype="float64",
                             bias_initializer=keras.initializers.Constant(-0.2))(h)
    model = keras.Model(inp, out)
    flat = x_aug.reshape(-1, 5)
    conn = connections.Connection(model, "hidden")
    f = model(flat).numpy()
    recon = np.einsum("bnp,p->bn", conn(flat).numpy(), conn.weight_vector().numpy())
    expected = np.linalg.norm(f - recon) / np.linalg.norm(f)
    assert expected > 0.05
    op = MatrixFreeOperator(model, "hidden", x_aug, chunk_size=2)
    assert op.residue() == pytest.approx(expected, rel=TOL64)
    # The general product is still the explicit one; the shortcut is then a different vector.
    explicit = CovarianceOperator.from_model(model, "hidden", x_aug)
    w_op = explicit.apply(explicit.weight_vector)
    assert rel(op.apply_weights(), w_op) < TOL64
    shortcut = op.apply_weights(shortcut=True).numpy()
    assert rel(shortcut, w_op) > 1e-3
    # What the shortcut always is, reversible or not: -grad E[L_simp] / 2 (both towers).
    grad, _, _ = theorems.expected_loss_gradient(model, "hidden", x_aug, losses.simple_loss,
                                                 towers="all")
    assert rel(-grad, 2.0 * shortcut) < TOL64
    # Theorem 3's alignment at this layer, against the explicit operator and the gradient.
    align = op.theorem3_alignment()
    expected_cos = (-grad @ w_op) / (np.linalg.norm(grad) * np.linalg.norm(w_op))
    assert align["cosine"] == pytest.approx(expected_cos, rel=TOL64)
    assert expected_cos < 0.999
    assert align["op_w_norm"] == pytest.approx(np.linalg.norm(w_op), rel=TOL64)
    assert align["simp_grad_norm"] == pytest.approx(np.linalg.norm(grad) / 2, rel=TOL64)


def bias_free_conv_net():
    inp = keras.Input((6, 6, 2), dtype="float64")
    init = lambda s: keras.initializers.HeNormal(s)  # noqa: E731
    h = keras.layers.Conv2D(3, 3, padding="same", use_bias=False, activation="relu",
                            dtype="float64", kernel_initializer=init(0), name="conv_a")(inp)
    h = keras.layers.Conv2D(4, 3, strides=2, use_bias=False, activation="relu",
                            dtype="float64", kernel_initializer=init(1), name="conv_b")(h)
    h = keras.layers.GlobalAveragePooling2D(dtype="float64")(h)
    out = keras.layers.Dense(3, use_bias=False, dtype="float64",
                             kernel_initializer=init(2), name="head")(h)
    return keras.Model(inp, out)


@pytest.mark.parametrize("towers,factor", [("all", 2.0), ("anchor", 1.0)])
def test_theorem3_conv_net_matrix_free(towers, factor):
    """-grad E[L_simp] = 2 OP vec(W) through both towers (1x through the anchor), on a
    bias-free ReLU conv net, OP vec(W) from the matrix-free path (shortcut and general)."""
    model = bias_free_conv_net()
    x0 = np.random.default_rng(2).standard_normal((4, 6, 6, 2))
    x_aug = theorems.enumerated_augmentations(x0, num_aug=2, strength=0.4, seed=3)
    for layer in ("conv_a", "conv_b", "head"):
        grad, _, _ = theorems.expected_loss_gradient(model, layer, x_aug, losses.simple_loss,
                                                     towers=towers)
        op = MatrixFreeOperator(model, layer, x_aug, chunk_size=3)
        assert op.residue() < 1e-14
        assert rel(-grad, factor * op.apply_weights(shortcut=True).numpy()) < TOL64
        assert rel(-grad, factor * op.apply_weights().numpy()) < TOL64


def test_resnet_layer_chunked_equals_unchunked():
    """A tiny ResNet-18 stage-2 conv (BatchNorm in inference mode, so chunks are independent)."""
    keras.utils.set_random_seed(0)
    enc = resnet(18, image_size=8, stem="cifar", width_multiplier=0.0625)   # widths 4..32
    x_aug = np.random.default_rng(0).standard_normal((6, 2, 8, 8, 3)).astype("float32")
    whole = MatrixFreeOperator(enc, "layer2_0_conv1", x_aug, chunk_size=6, dtype="float64")
    parts = MatrixFreeOperator(enc, "layer2_0_conv1", x_aug, chunk_size=3, dtype="float64")
    u = np.random.default_rng(1).standard_normal(whole.shape)
    # float32 convolutions on batches of 12 vs 6 + 6 examples may pick kernels that round
    # differently (a few float32 ulps per output); the sums run in float64.
    assert rel(parts.apply(u), whole.apply(u)) < 1e-5
    assert rel(parts.apply_weights(), whole.apply_weights()) < 1e-5
    assert parts.residue() == pytest.approx(whole.residue(), rel=1e-5)
    # BatchNorm's shift and moving mean break reversibility: the residue says so.
    assert whole.residue() > 1e-2


def test_bad_input(mlp, x_aug):
    with pytest.raises(ValueError, match="M: need at least 2"):
        MatrixFreeOperator(mlp, "dense_0", x_aug[:1])
    with pytest.raises(ValueError, match="x_aug"):
        MatrixFreeOperator(mlp, "dense_0", x_aug[0, 0])
    with pytest.raises(ValueError, match="chunk_size"):
        MatrixFreeOperator(mlp, "dense_0", x_aug, chunk_size=0)
    with pytest.raises(ValueError, match="index"):
        MatrixFreeOperator(mlp, "dense_0", x_aug, index=9)
    with pytest.raises(ValueError, match="layer: no layer named"):
        MatrixFreeOperator(mlp, "nope", x_aug)
    with pytest.raises(ValueError, match="probes"):
        MatrixFreeOperator(mlp, "dense_0", x_aug).trace_estimate(probes=0)


@pytest.mark.parametrize("layer", ["dense_0", "dense_2"])
def test_weighted_products_equal_explicit_operator(mlp, x_aug, layer):
    """Theorem 4's OP_xi u and OP_xi vec(W), matrix-free (JVP, Laplacian of xi, VJP), equal
    the explicit CovarianceOperator.weighted(xi); xi not symmetric (both symmetrise it)."""
    xi = np.random.default_rng(5).uniform(0.1, 2.0, (6, 6))
    explicit = CovarianceOperator.from_model(mlp, layer, x_aug).weighted(xi)
    op = MatrixFreeOperator(mlp, layer, x_aug, chunk_size=4)
    u = np.random.default_rng(7).standard_normal(op.shape)
    assert rel(op.apply(u, xi), explicit.apply(u.ravel())) < TOL64
    w_op = explicit.apply(explicit.weight_vector)
    assert rel(op.apply_weights(xi=xi), w_op) < TOL64
    assert rel(op.apply_weights(shortcut=True, xi=xi), w_op) < TOL64   # reversible
    products = op.weights_products(xi)
    assert rel(products["op_xi_w"], w_op) < TOL64
    assert rel(products["op_w"], op.apply_weights()) < TOL64
    # xi = 1 is Theorem 3's operator (half the mean squared difference is the covariance).
    assert rel(op.apply(u, np.ones((6, 6))), op.apply(u)) < TOL64
    with pytest.raises(ValueError, match=r"xi: expected shape \(6, 6\)"):
        op.apply(u, np.ones((5, 5)))
