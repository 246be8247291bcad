"""ProbeAccuracy and EmbeddingSpread against NumPy on fixed networks."""

import os

import numpy as np
import tensorflow as tf

import keras

from dualssl_tf.monitors import collapse, probes, views


def _linear(w, name):
    layer = keras.layers.Dense(w.shape[1], use_bias=False, name=name)
    layer.build((None, w.shape[0]))
    layer.kernel.assign(w)
    return layer


def test_probe_accuracy_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=37).astype(np.int32)
    we, wp = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(4, 3)).astype(
        np.float32)
    enc, probe = _linear(we, "enc"), _linear(wp, "probe")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # last batch has 5
    cb = probes.ProbeAccuracy(enc, probe, ds)
    expected = np.mean(np.argmax(x @ we @ wp, axis=1) == y)
    assert cb.compute()["probe_test_acc"] == expected
    logs = {}
    cb.on_epoch_end(0, logs)
    assert logs == {"probe_test_acc": expected}


def test_embedding_spread_matches_numpy_and_detects_collapse():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    cb = collapse.EmbeddingSpread(_linear(w, "enc"), None, x, norm_eps=1e-4)
    f = x @ w
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-4)
    assert np.isclose(cb.initial_logs()["embed_std"], f.std(axis=0).mean(), rtol=1e-5)
    # A head mapping everything to one point: collapse gives 0.
    head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        3, kernel_initializer="zeros", bias_initializer="ones")])
    collapsed = collapse.EmbeddingSpread(_linear(w, "enc2"), head, x)
    assert collapsed.compute()["embed_std"] < 1e-6


def test_view_summary_writes_side_by_side_pairs(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    batch = {"view1": tf.zeros([10, 4, 5, 3]), "view2": tf.ones([10, 4, 5, 3])}
    cb = views.ViewSummary(str(tmp_path), tf.data.Dataset.from_tensors(batch).repeat(),
                           max_pairs=3)
    pairs = cb.pairs().numpy()
    assert pairs.shape == (3, 4, 10, 3)
    np.testing.assert_array_equal(pairs[:, :, :5], 0.0)
    np.testing.assert_array_equal(pairs[:, :, 5:], 1.0)
    cb.on_train_begin()
    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    assert "augmented_pairs" in acc.Tags()["tensors"]


def test_view_summary_is_not_written_again_by_a_resumed_run(tmp_path):
    batch = {"view1": tf.zeros([2, 4, 5, 3]), "view2": tf.ones([2, 4, 5, 3])}
    data = tf.data.Dataset.from_tensors(batch).repeat()
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    cb = views.ViewSummary(str(tmp_path / "fresh"), data)
    cb.set_model(model)
    cb.on_train_begin()                         # step 0: a fresh run writes the images
    assert len(os.listdir(tmp_path / "fresh")) == 1
    model.optimizer.iterations.assign(6)       # restored from a checkpoint at step 6
    cb = views.ViewSummary(str(tmp_path / "resumed"), data)
    cb.set_model(model)
    cb.on_train_begin()
    assert not (tmp_path / "resumed").exists()
