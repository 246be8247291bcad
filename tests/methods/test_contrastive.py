"""ContrastiveMethod's train_step against a hand-written gradient step of the same loss."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import losses
from dualssl_tf.methods import contrastive
from dualssl_tf.methods.contrastive import ContrastiveMethod

LR = 0.5


def _nets(seed):
    keras.utils.set_random_seed(seed)
    encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu")])
    head = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    return encoder, head


def _batch(explicit):
    rng = np.random.default_rng(0)
    data = {"view1": rng.normal(size=(4, 6)).astype("float32"),
            "view2": rng.normal(size=(4, 6)).astype("float32")}
    if explicit:
        data["negatives"] = rng.normal(size=(4, 2, 6)).astype("float32")
    return data


def _manual_step(encoder, head, data, loss_name):
    def embed(x):
        p = head(encoder(x))
        return p / (tf.norm(p, axis=-1, keepdims=True) + 1e-4)

    variables = encoder.trainable_variables + head.trainable_variables
    with tf.GradientTape() as tape:
        z1, z2 = embed(data["view1"]), embed(data["view2"])
        if "negatives" in data:
            zn = tf.reshape(embed(tf.reshape(data["negatives"], [-1, 6])), [4, 2, 3])
            r_pos, r_neg = losses.explicit_distances(z1, z2, zn)
        else:
            r_pos, r_neg = losses.in_batch_distances(z1, z2)
        loss = tf.reduce_mean(contrastive.loss_fn(loss_name, 0.5, margin=0.1)(r_pos, r_neg))
    grads = tape.gradient(loss, variables)
    acc = np.mean(r_pos.numpy() < r_neg.numpy().min(1))
    return [v.numpy() - LR * g.numpy() for v, g in zip(variables, grads)], float(loss), acc


@pytest.mark.parametrize("loss_name,explicit", [("ntxent", False), ("nce", True),
                                                ("cov", False), ("tri", True)])
def test_train_step_equals_manual_sgd_step(loss_name, explicit):
    data = _batch(explicit)
    encoder, head = _nets(1)
    expected, loss, acc = _manual_step(encoder, head, data, loss_name)
    encoder, head = _nets(1)
    model = ContrastiveMethod(encoder, head, loss=loss_name, temperature=0.5, margin=0.1)
    model.compile(optimizer=keras.optimizers.SGD(LR))
    hist = model.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0)
    got = [v.numpy() for v in encoder.trainable_variables + head.trainable_variables]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    assert hist.history["loss"][0] == pytest.approx(loss, rel=1e-5)
    assert hist.history["contrastive_acc"][0] == pytest.approx(acc)


def test_online_probe_trains_on_stopped_representation():
    data = dict(_batch(False), label=np.array([0, 1, 0, 1]))
    encoder, head = _nets(2)
    probe = keras.layers.Dense(2)
    model = ContrastiveMethod(encoder, head, loss="ntxent", probe=probe)
    model.compile(optimizer=keras.optimizers.SGD(LR))
    before = [v.numpy() for v in encoder.trainable_variables]
    ref_encoder, ref_head = _nets(2)
    expected, _, _ = _manual_step(ref_encoder, ref_head, data, "ntxent")
    hist = model.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0)
    # The probe's loss must not move the encoder: its update is the contrastive one only.
    for g, e in zip([v.numpy() for v in encoder.trainable_variables], expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    assert not np.allclose(before[0], encoder.trainable_variables[0].numpy())
    assert "probe_acc" in hist.history and "probe_loss" in hist.history


def test_test_step_does_not_change_weights():
    data = _batch(True)
    encoder, head = _nets(3)
    model = ContrastiveMethod(encoder, head, loss="nce")
    model.compile(optimizer=keras.optimizers.SGD(LR))
    before = [v.numpy() for v in model.trainable_variables]
    logs = model.evaluate(tf.data.Dataset.from_tensors(data), verbose=0, return_dict=True)
    for b, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())
    assert set(logs) >= {"loss", "r_pos", "r_neg", "contrastive_acc"}
