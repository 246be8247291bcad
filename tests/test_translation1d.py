"""The 1-D translation toy: data, circular convolution, experiment, OP alignment."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from dualssl_tf import config
from dualssl_tf.analysis import sampling, translation
from dualssl_tf.data.translation1d import Translation1D
from dualssl_tf.tasks.translation1d import task as exp_t1
from dualssl_tf.models.conv1d import CircularConv1D, conv1d_encoder


def test_signals_by_hand():
    toy = Translation1D(6)
    np.testing.assert_array_equal(toy.signals([0], [0])[0, :, 0], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(toy.signals([0], [5])[0, :, 0], [1, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(toy.signals([1], [4])[0, :, 0], [1, 0, 0, 0, 1, 0])
    with pytest.raises(ValueError, match="^length:"):
        Translation1D(3)


def test_training_batch_keeps_object_moves_location():
    toy = Translation1D(10)
    b = toy.training_batch(256, seed=(3, 0))
    v1, v2, y = b["view1"].numpy()[..., 0], b["view2"].numpy()[..., 0], b["label"].numpy()
    assert v1.shape == (256, 10) and b["view1"].shape == (256, 10, 1)
    # Object identity from the signal: "11" has two adjacent ones (circularly).
    def obj(x):
        return np.where((x * np.roll(x, -1, axis=1)).sum(1) > 0, 0, 1)
    np.testing.assert_array_equal(obj(v1), y)
    np.testing.assert_array_equal(obj(v2), y)
    np.testing.assert_array_equal(v1.sum(1), 2.0)
    assert 0.35 < y.mean() < 0.65
    assert (v1 != v2).any(axis=1).mean() > 0.8         # locations differ (prob. 1 - 1/d)
    again = toy.training_batch(256, seed=(3, 0))       # stateless: reproducible
    np.testing.assert_array_equal(again["view1"].numpy()[..., 0], v1)


def test_circular_conv_matches_numpy_and_commutes_with_shifts():
    rng = np.random.default_rng(0)
    layer = CircularConv1D(4, 3, use_bias=True)
    x = rng.standard_normal((2, 7, 2)).astype("float32")
    y = np.asarray(layer(x))
    k = layer.kernel.numpy()
    b = layer.bias.numpy()
    ref = np.zeros((2, 7, 4))
    for i in range(7):
        for t in range(3):
            ref[:, i] += x[:, (i - 2 + t) % 7] @ k[t]
    np.testing.assert_allclose(y, ref + b, atol=1e-5)
    np.testing.assert_allclose(np.asarray(layer(np.roll(x, 3, axis=1))), np.roll(y, 3, axis=1),
                               atol=1e-5)
    assert layer.get_config()["kernel_size"] == 3


def test_encoder_is_translation_invariant():
    toy = Translation1D(9)
    enc = conv1d_encoder(9, 5, 3, pooling="avg", seed=0)
    x, y = toy.eval_arrays()
    h = np.asarray(enc(x))
    for k in (0, 1):
        np.testing.assert_allclose(h[y == k], np.broadcast_to(h[y == k][0], h[y == k].shape),
                                   atol=1e-6)


def test_filter_selectivity_by_hand():
    """Average pooling over d = 8 positions.

    w = [-1, 1, -1], bias 0: only a lone middle one fires -> "11": 0, "101": 2 windows of 1
    -> s = -1. w = [1, 1, 1], bias -1.5: only windows holding two ones fire (0.5 each) ->
    "11": 2 windows, "101": 1 window -> responses 1/8 vs 0.5/8, s = 1/3."""
    toy = Translation1D(8)
    enc = conv1d_encoder(8, 2, 3, pooling="avg", use_bias=True)
    enc.get_layer("conv").kernel.assign(np.array([[-1, 1], [1, 1], [-1, 1]],
                                                 "float32")[:, None, :])
    enc.get_layer("conv").bias.assign(np.array([0.0, -1.5], "float32"))
    a = exp_t1.filter_responses(enc, toy)
    np.testing.assert_allclose(a, [[0.0, 1.0 / 8], [2.0 / 8, 0.5 / 8]], atol=1e-6)
    np.testing.assert_allclose(exp_t1.filter_selectivity(enc, toy), [-1.0, 1.0 / 3], atol=1e-6)


def test_config_validation():
    cfg = config.TrainConfig(dataset="translation1d", model_dir="/tmp/x", translation1d_kernel=20)
    with pytest.raises(config.ConfigError, match="--translation1d_kernel"):
        config.validate(cfg)
    cfg = config.TrainConfig(dataset="translation1d", model_dir="/tmp/x",
                             translation1d_pooling="sum")
    with pytest.raises(config.ConfigError, match="--translation1d_pooling"):
        config.validate(cfg)


def test_task_builds_and_filter_op_alignment_blocks():
    cfg = config.TrainConfig(dataset="translation1d", model_dir="/tmp/x", batch_size=8,
                             translation1d_length=8, translation1d_filters=3, seed=2)
    keras.utils.set_random_seed(2)
    exp = exp_t1.build(cfg)
    batch = next(iter(exp.make_data(8)))
    assert batch["view1"].shape == (8, 8, 1) and batch["label"].shape == (8,)
    assert exp.encoder(batch["view1"]).shape == (8, 3)
    toy = Translation1D(8)
    op = translation.conv_operator(exp.encoder, toy)
    dense = op.dense()                       # [9, 9], vec index = t * F + j
    for i in range(9):
        for j in range(9):
            if i % 3 != j % 3:
                assert dense[i, j] == 0.0     # filters do not interact: block diagonal
    # M = 2: each filter block is rank one, along Kbar_j(obj 0) - Kbar_j(obj 1).
    x_aug = sampling.translation1d_augmented(toy)
    from dualssl_tf.analysis.connections import connection
    k = connection(exp.encoder, "conv", x_aug.reshape(-1, 8, 1)).numpy().reshape(2, 8, 3, 9)
    kbar = k.mean(1)
    res = translation.filter_op_alignment(exp.encoder, exp.encoder, toy)
    for j in range(3):
        d = kbar[0, j, j::3] - kbar[1, j, j::3]
        w = exp.encoder.get_layer("conv").kernel.numpy()[:, 0, j]
        if np.linalg.norm(d) > 1e-9:
            expected = abs(d @ w) / np.linalg.norm(d) / np.linalg.norm(w)
            assert res["align_init"][j] == pytest.approx(expected, rel=1e-6)
            assert res["align_final"][j] == res["align_init"][j]
        else:
            assert res["align_init"][j] is None
