"""Tests of FusedBatchNormalization against NumPy / float64 autodiff and Keras' own layer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.models.batchnorm import FusedBatchNormalization

EPS = 1e-5


def _layer(x_shape, seed=0, cls=FusedBatchNormalization, **kwargs):
    layer = cls(momentum=0.9, epsilon=EPS, **kwargs)
    layer.build(x_shape)
    rng = np.random.default_rng(seed)
    c = x_shape[-1]
    if layer.scale:
        layer.gamma.assign(rng.normal(size=c).astype(np.float32))
    if layer.center:
        layer.beta.assign(rng.normal(size=c).astype(np.float32))
    layer.moving_mean.assign(rng.normal(size=c).astype(np.float32))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=c).astype(np.float32))
    return layer


def _x(shape=(6, 5, 4, 8), seed=1):
    rng = np.random.default_rng(seed)
    return (3.0 * rng.normal(size=shape) + 1.0).astype(np.float32)


def _reference(x, gamma, beta):
    """Training-mode batch norm in float64 TF ops: (y, batch mean, biased batch variance)."""
    mean, var = tf.nn.moments(x, axes=[0, 1, 2])
    return gamma * (x - mean) / tf.sqrt(var + EPS) + beta, mean, var


def test_training_output_moving_stats_and_gradients_match_float64_formula():
    x = _x()
    bn = _layer(x.shape)
    mm0, mv0 = bn.moving_mean.numpy().astype(np.float64), bn.moving_variance.numpy()
    w = np.random.default_rng(2).normal(size=x.shape)  # loss = sum(w * y): a generic gradient
    with tf.GradientTape(persistent=True) as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        y = bn(xt, training=True)
        loss = tf.reduce_sum(tf.constant(w, tf.float32) * y)
    x64, g64, b64 = (tf.Variable(np.asarray(v, np.float64)) for v in (x, bn.gamma, bn.beta))
    with tf.GradientTape() as tape64:
        y64, mean64, var64 = _reference(x64, g64, b64)
        loss64 = tf.reduce_sum(w * y64)
    ref_grads = tape64.gradient(loss64, [x64, g64, b64])
    np.testing.assert_allclose(y.numpy(), y64.numpy(), rtol=1e-5, atol=2e-5)
    for got, want in zip(tape.gradient(loss, [xt, bn.gamma, bn.beta]), ref_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    # Keras' rule with the biased variance of the batch (not the op's n / (n - 1) one).
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.9 * mm0 + 0.1 * mean64.numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 * mv0 + 0.1 * var64.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_inference_uses_moving_statistics():
    x = _x()
    bn = _layer(x.shape)
    want = (bn.gamma.numpy() * (x - bn.moving_mean.numpy())
            / np.sqrt(bn.moving_variance.numpy() + EPS) + bn.beta.numpy())
    mm = bn.moving_mean.numpy()
    np.testing.assert_allclose(bn(x, training=False).numpy(), want, rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mm)  # untouched at inference


@pytest.mark.parametrize("kwargs", [{}, {"center": False, "scale": False},
                                    {"synchronized": True}])
def test_same_as_keras_batch_normalization(kwargs):
    x = _x((4, 3, 3, 5), seed=3)
    fused = _layer(x.shape, seed=4, **kwargs)
    plain = _layer(x.shape, seed=4, cls=keras.layers.BatchNormalization, **kwargs)
    for training in (True, False):
        np.testing.assert_allclose(fused(x, training=training).numpy(),
                                   plain(x, training=training).numpy(), rtol=1e-5, atol=2e-5)
    for a, b in zip(fused.weights, plain.weights):
        assert a.path.split("/")[-1] == b.path.split("/")[-1]
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def _op_types(layer, x, training):
    fn = tf.function(lambda t: layer(t, training=training))
    return {op.type for op in fn.get_concrete_function(x).graph.get_operations()}


def test_fused_kernel_for_images_keras_fallback_otherwise():
    images = tf.constant(_x())
    bn = _layer(images.shape)
    assert "FusedBatchNormV3" in _op_types(bn, images, True)
    assert "FusedBatchNormV3" in _op_types(bn, images, False)
    # [B, C] features: not an NHWC map, so Keras' element-wise code, same numbers.
    feats = _x((16, 8), seed=5)
    bn2 = _layer(feats.shape, seed=6)
    assert "FusedBatchNormV3" not in _op_types(bn2, tf.constant(feats), True)
    mean, var = feats.mean(0), feats.var(0)
    np.testing.assert_allclose(
        bn2(feats, training=True).numpy(),
        bn2.gamma.numpy() * (feats - mean) / np.sqrt(var + EPS) + bn2.beta.numpy(),
        rtol=1e-5, atol=2e-5)


def test_config_round_trip_and_serialization():
    bn = FusedBatchNormalization(momentum=0.8, epsilon=1e-4, center=False, name="bn")
    clone = keras.layers.deserialize(keras.layers.serialize(bn))
    assert type(clone) is FusedBatchNormalization
    assert (clone.momentum, clone.epsilon, clone.center, clone.name) == (0.8, 1e-4, False, "bn")


@pytest.mark.gpu
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_half_precision_takes_the_fused_kernel_and_matches_keras(policy):
    """Under mixed precision the layer gets a bfloat16/float16 activation: the fused op
    takes it with float32 gamma/beta and moments (no cast of the activation), and its output
    equals Keras' own layer's (which normalises in float32) to the half type's rounding."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        x = _x((4, 3, 3, 5), seed=7)
        fused = _layer(x.shape, seed=8)
        plain = _layer(x.shape, seed=8, cls=keras.layers.BatchNormalization)
        half = tf.cast(x, fused.compute_dtype)
        assert "FusedBatchNormV3" in _op_types(fused, half, True)
        for training in (True, False):
            got, want = fused(half, training=training), plain(half, training=training)
            assert got.dtype == want.dtype == half.dtype
            # One rounding of outputs of size ~3: 2**-8 (bfloat16) or 2**-11 (float16).
            tol = 3 * 2.0 ** (-8 if policy == "mixed_bfloat16" else -11) * 4
            np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(),
                                       tf.cast(want, tf.float32).numpy(), atol=tol)
        for a, b in zip(fused.weights, plain.weights):
            assert a.dtype == "float32"
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
