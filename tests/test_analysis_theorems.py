"""Connections, the covariance operator and Theorems 1-4, checked in float64."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from dualssl_tf import losses
from dualssl_tf.methods import contrastive
from dualssl_tf.analysis import connections, theorems
from dualssl_tf.analysis.covariance import CovarianceOperator, batched_summary


@pytest.fixture(scope="module")
def mlp():
    return theorems.bias_free_mlp([7, 6, 4], input_dim=5, seed=3)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((6, 5))
    return x0, theorems.enumerated_augmentations(x0, num_aug=3, strength=0.5, seed=2)


def test_connection_matches_kronecker_form(mlp, data):
    """Dense layer: K_l(x) = f_{l-1}(x) (x) J_l(x)^T, built by hand with NumPy."""
    x = data[1].reshape(-1, 5)
    w0, w1, w2 = [mlp.get_layer(f"dense_{i}").kernel.numpy() for i in range(3)]
    f0 = np.maximum(x @ w0, 0.0)
    pre1 = f0 @ w1
    # J_1 = d f_L / d pre1 = W2^T diag(relu'(pre1)): [B, n_L, n_1]
    jac = np.einsum("bj,jk->bkj", (pre1 > 0).astype(float), w2)
    expected = np.einsum("bi,bkj->bkij", f0, jac).reshape(len(x), 4, -1)
    got = connections.connection(mlp, "dense_1", x).numpy()
    assert got.shape == (18, 4, 7 * 6)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation,layers", [("relu", ("dense_0", "dense_1", "dense_2")),
                                               ("leaky_relu", ("dense_0",)),
                                               ("linear", ("dense_1",))])
def test_reversibility_bias_free(activation, layers, data):
    model = theorems.bias_free_mlp([6, 5, 3], input_dim=5, activation=activation, seed=1)
    x = data[1].reshape(-1, 5)
    for layer in layers:
        assert connections.reversibility_residual(model, layer, x) < 1e-13


def test_reversibility_broken_by_bias(data):
    inp = keras.Input((5,), dtype="float64")
    h = keras.layers.Dense(6, activation="relu", dtype="float64", name="a",
                           bias_initializer="ones")(inp)
    out = keras.layers.Dense(3, use_bias=False, dtype="float64", name="b")(h)
    model = keras.Model(inp, out)
    x = data[1].reshape(-1, 5)
    assert connections.reversibility_residual(model, "b", x) < 1e-13   # bias below l
    assert connections.reversibility_residual(model, "a", x) > 1e-2    # bias at/above l


def test_connection_conv1d_vs_finite_differences():
    inp = keras.Input((9, 2), dtype="float64")
    h = keras.layers.Conv1D(3, 3, activation="relu", use_bias=False, dtype="float64",
                            name="conv")(inp)
    out = keras.layers.Dense(2, use_bias=False, dtype="float64", name="out")(
        keras.layers.GlobalAveragePooling1D(dtype="float64")(h))
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).standard_normal((4, 9, 2))
    k_t = connections.connection(model, "conv", x, chunk_size=3).numpy()   # 2 chunks
    kernel = model.get_layer("conv").kernel
    w = kernel.numpy()
    eps = 1e-6
    for p in (0, 7, 17):
        d = np.zeros(w.size)
        d[p] = eps
        kernel.assign(w + d.reshape(w.shape))
        up = model(x).numpy()
        kernel.assign(w - d.reshape(w.shape))
        down = model(x).numpy()
        kernel.assign(w)
        np.testing.assert_allclose(k_t[:, :, p], (up - down) / (2 * eps), atol=1e-8)
    assert connections.reversibility_residual(model, "conv", x) < 1e-13


def test_bad_layer_arguments(mlp):
    with pytest.raises(ValueError, match="^layer: no layer named 'nope'"):
        connections.resolve_variable(mlp, "nope")
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.ReLU(name="act")(keras.layers.Dense(2)(inp)))
    with pytest.raises(ValueError, match="^layer: layer 'act' .* has no kernel"):
        connections.resolve_variable(model, "act")


def test_covariance_operator_against_dense_numpy():
    rng = np.random.default_rng(0)
    kbar = rng.standard_normal((7, 3, 5))                         # [M, n_L, P]
    op = CovarianceOperator(kbar)
    kc = kbar - kbar.mean(0)
    dense = np.einsum("mnp,mnq->pq", kc, kc) / 7                  # E[Kbar Kbar^T] - mean mean^T
    np.testing.assert_allclose(op.dense(), dense, atol=1e-13)
    values, vectors = op.top_eigen(3)
    ref = np.linalg.eigvalsh(dense)[::-1]
    np.testing.assert_allclose(values, ref[:3], rtol=1e-12)
    np.testing.assert_allclose(dense @ vectors, vectors * values, atol=1e-12)
    assert op.frobenius_norm() == pytest.approx(np.linalg.norm(dense), rel=1e-12)
    w = rng.standard_normal(5)
    cos = np.abs(np.linalg.eigh(dense)[1][:, ::-1][:, :2].T @ w) / np.linalg.norm(w)
    np.testing.assert_allclose(op.alignment(w, 2), cos, rtol=1e-10)
    np.testing.assert_allclose(op.alignment(vectors[:, 0], 1), [1.0], rtol=1e-12)
    # Weighted operator: 1/(2M^2) sum_ij xi_ij (K_i - K_j)(K_i - K_j)^T.
    xi = rng.uniform(0.1, 1.0, (7, 7))
    xi = xi + xi.T
    diff = kbar[:, None] - kbar[None]                             # [M, M, n, P]
    dense_xi = np.einsum("ij,ijnp,ijnq->pq", xi, diff, diff) / (2 * 49)
    opx = op.weighted(xi)
    np.testing.assert_allclose(opx.dense(), dense_xi, atol=1e-13)
    np.testing.assert_allclose(opx.spectrum()[:3], np.linalg.eigvalsh(dense_xi)[::-1][:3],
                               rtol=1e-10)
    np.testing.assert_allclose(op.weighted(np.ones((7, 7))).dense(), dense, atol=1e-13)


def test_covariance_operator_wide_layer_branch():
    """P > M n_L: the spectrum comes from the (M n_L)^2 Gram matrix, never P x P."""
    rng = np.random.default_rng(3)
    kbar = rng.standard_normal((4, 2, 30))                        # M n_L = 8 < P = 30
    op = CovarianceOperator(kbar)
    kc = kbar - kbar.mean(0)
    dense = np.einsum("mnp,mnq->pq", kc, kc) / 4
    values, vectors = op.top_eigen(10)
    assert values.size == 6                                       # rank (M - 1) n_L
    np.testing.assert_allclose(values, np.linalg.eigvalsh(dense)[::-1][:6], rtol=1e-10)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(dense @ vectors, vectors * values, atol=1e-10)
    xi = rng.uniform(0.5, 2.0, (4, 4))
    diff = kbar[:, None] - kbar[None]
    dense_xi = np.einsum("ij,ijnp,ijnq->pq", 0.5 * (xi + xi.T), diff, diff) / 32
    np.testing.assert_allclose(op.weighted(xi).spectrum(),
                               np.linalg.eigvalsh(dense_xi)[::-1][:6], rtol=1e-9)
    assert op.weighted(xi).frobenius_norm() == pytest.approx(np.linalg.norm(dense_xi),
                                                             rel=1e-10)


@pytest.mark.parametrize("shape", [(3, 6, 2, 5), (2, 3, 2, 9)])   # P <= M n_L and P > M n_L
def test_batched_summary_matches_operator(shape):
    rng = np.random.default_rng(4)
    kbar = rng.standard_normal(shape)
    w = rng.standard_normal((shape[0], shape[-1]))
    stats = batched_summary(kbar, w)
    for g in range(shape[0]):
        op = CovarianceOperator(kbar[g], weight_vector=w[g])
        assert stats["frobenius"][g] == pytest.approx(op.frobenius_norm(), rel=1e-10)
        assert stats["top_value"][g] == pytest.approx(op.top_eigen(1)[0][0], rel=1e-10)
        assert stats["alignment"][g] == pytest.approx(op.alignment(k=1)[0], rel=1e-8)


def test_covariance_operator_bad_input():
    with pytest.raises(ValueError, match="^M: need at least 2"):
        CovarianceOperator(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="^xi: expected shape"):
        CovarianceOperator(np.zeros((3, 2, 3)), xi=np.ones((2, 2)))


def test_from_model_averages_augmentations(mlp, data):
    _, x_aug = data
    op = CovarianceOperator.from_model(mlp, "dense_1", x_aug, chunk_size=5)
    k = connections.connection(mlp, "dense_1", x_aug.reshape(-1, 5)).numpy()
    kbar = k.reshape(6, 3, 4, -1).mean(1)
    np.testing.assert_allclose(op.dense(), CovarianceOperator(kbar).dense(), atol=1e-14)
    np.testing.assert_allclose(op.weight_vector, mlp.get_layer("dense_1").kernel.numpy().ravel())


@pytest.mark.parametrize("layer", ["dense_0", "dense_1", "dense_2"])
def test_theorem1(mlp, data, layer):
    _, x_aug = data
    res = theorems.theorem1_check(mlp, layer, x_aug[:, 0], x_aug[:, 1])
    assert res["one_tower"] < 1e-12 and res["both_towers"] < 1e-12
    # The two forms differ (the second tower contributes), so the check is not vacuous.
    assert np.linalg.norm(res["grad_one"] - res["grad_both"]) > 1e-3 * np.linalg.norm(
        res["grad_one"])


@pytest.mark.parametrize("layer,towers", [("dense_0", "anchor"), ("dense_1", "all"),
                                          ("dense_2", "anchor")])
def test_theorem3(mlp, data, layer, towers):
    res = theorems.theorem3_check(mlp, layer, data[1], towers=towers)
    assert res["rel_error"] < 1e-10
    assert np.linalg.norm(res["predicted"]) > 1e-4


@pytest.mark.parametrize("towers", ["anchor", "all"])
def test_theorem4_cov_exact(mlp, data, towers):
    x0, x_aug = data
    res = theorems.theorem4_check(mlp, "dense_1", x_aug, x0, loss="cov", temperature=0.5,
                                  towers=towers)
    assert res["rel_error"] < 1e-10
    assert res["xi_spread"] == 0.0
    # exact_cov_loss's weights are the sigma(-r/tau)/tau of docs/theory.md sections 2-3 (to
    # rounding), and
    # they are far from uniform, so this is not Theorem 3 in disguise.
    assert res["xi_formula_error"] < 1e-12
    assert res["xi"].max() / res["xi"].min() > 1.2
    simp = theorems.theorem3_check(mlp, "dense_1", x_aug, towers=towers)
    cosine = res["grad"] @ simp["grad"] / np.linalg.norm(res["grad"]) / np.linalg.norm(
        simp["grad"])
    assert cosine < 1 - 1e-6


@pytest.mark.parametrize("loss", ["nce", "tri"])
def test_theorem4_residue_grows_with_augmentation(mlp, data, loss):
    x0, _ = data
    rows = theorems.residue_vs_strength(mlp, "dense_1", x0, [0.0, 0.1, 0.5], num_aug=3,
                                        loss=loss, margin=0.2)
    res = [r["rel_residue"] for r in rows]
    assert res[0] < 1e-10    # no augmentation: no residue
    assert 1e-3 < res[1] < res[2]


def test_theorem2_common_property():
    rng = np.random.default_rng(0)
    r_pos = rng.uniform(0, 2, 16)
    r_neg = rng.uniform(0, 2, (16, 4))
    for name in ("tri", "nce"):
        d = theorems.common_property(contrastive.loss_fn(name, temperature=0.3, margin=0.1),
                                     r_pos, r_neg if name == "nce" else r_neg[:, :1])
        assert (d["d_pos"] > 0).all() and (d["d_neg"] < 0).all()
        np.testing.assert_allclose(d["balance"], 0.0, atol=1e-6)
    d = theorems.common_property(losses.simple_loss, r_pos, r_neg[:, :1])
    np.testing.assert_array_equal(d["d_pos"], 1.0)
    np.testing.assert_array_equal(d["d_neg"], -1.0)
