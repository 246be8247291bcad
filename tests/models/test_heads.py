"""Tests of the projection head and the linear probe."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from dualssl_tf.models import heads


def test_paper_head_structure_and_parameters():
    head = heads.projection_head(512, 512, 128, num_layers=2)
    assert head(tf.zeros([4, 512])).shape == (4, 128)
    n = sum(int(np.prod(v.shape)) for v in head.trainable_variables)
    # Dense 512x512 (no bias: BN shifts) + BN gamma/beta + Dense 512x128 + bias.
    assert n == 512 * 512 + 2 * 512 + 512 * 128 + 128
    kinds = [type(l).__name__ for l in head.layers[1:]]
    assert kinds == ["Dense", "BatchNormalization", "ReLU", "Dense"]


def test_head_depths():
    assert heads.projection_head(16, 8, 4, num_layers=0) is None
    one = heads.projection_head(16, 8, 4, num_layers=1)
    assert [type(l).__name__ for l in one.layers[1:]] == ["Dense"]
    three = heads.projection_head(16, 8, 4, num_layers=3)
    assert three(tf.zeros([2, 16])).shape == (2, 4)
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in three.layers) == 2
    with pytest.raises(ValueError):
        heads.projection_head(16, 8, 4, num_layers=-1)


def test_head_forward_matches_numpy():
    head = heads.projection_head(6, 5, 3, num_layers=2)
    x = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    w1 = head.get_layer("dense1").kernel.numpy()
    w2, b2 = head.get_layer("dense2").kernel.numpy(), head.get_layer("dense2").bias.numpy()
    h = x @ w1
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)  # training-mode BN, gamma 1 beta 0
    ref = np.maximum(h, 0) @ w2 + b2
    np.testing.assert_allclose(head(x, training=True).numpy(), ref, rtol=1e-4, atol=1e-5)


def test_linear_probe_standardizes_and_round_trips():
    probe = heads.LinearProbe(3)
    x = np.random.default_rng(1).normal(5.0, 3.0, size=(10, 4)).astype(np.float32)
    logits = probe(x, training=True).numpy()
    w, b = probe.classifier.kernel.numpy(), probe.classifier.bias.numpy()
    z = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(logits, z @ w + b, rtol=1e-4, atol=1e-4)
    # No scale/shift: the standardiser has no trainable weights.
    assert len(probe.trainable_variables) == 2
    clone = heads.LinearProbe.from_config(probe.get_config())
    assert clone.num_classes == 3 and clone.standardize
    plain = heads.LinearProbe(2, standardize=False)
    y = plain(x).numpy()
    np.testing.assert_allclose(y, x @ plain.classifier.kernel.numpy(), rtol=1e-5, atol=1e-5)
