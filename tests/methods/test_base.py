"""SSLMethod: the online probe is trained by its own optimizer only, the method's optimizer
never sees it, and a probe changes nothing of the method's own update."""

import keras
import numpy as np
import tensorflow as tf

from dualssl_tf.methods.contrastive import ContrastiveMethod
from dualssl_tf.optim.lars import LARS


def _nets(seed):
    keras.utils.set_random_seed(seed)
    encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu")])
    head = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    probe = keras.layers.Dense(2)
    probe.build((None, 5))
    return encoder, head, probe


def _data():
    rng = np.random.default_rng(0)
    return {"view1": rng.normal(size=(8, 6)).astype("float32"),
            "view2": rng.normal(size=(8, 6)).astype("float32"),
            "label": np.array([0, 1, 1, 0, -1, 1, 0, -1])}


def _lars():
    # Weight decay, trust ratio and a schedule: none of it may act on the probe.
    schedule = keras.optimizers.schedules.CosineDecay(0.5, decay_steps=10)
    return LARS(schedule, momentum=0.9, weight_decay=0.1)


def test_probe_has_its_own_adam_and_the_method_update_ignores_it():
    data = _data()
    encoder, head, probe = _nets(1)
    w0, b0 = (v.numpy().copy() for v in (probe.kernel, probe.bias))
    model = ContrastiveMethod(encoder, head, loss="ntxent", probe=probe)
    model.compile(optimizer=_lars(), probe_optimizer=keras.optimizers.Adam(0.01))
    model.build_optimizers()
    probe_ids = {id(v) for v in probe.trainable_variables}
    assert not probe_ids & {id(v) for v in model.method_variables}
    model.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0)

    # The same method without a probe takes exactly the same step.
    ref_encoder, ref_head, _ = _nets(1)
    ref = ContrastiveMethod(ref_encoder, ref_head, loss="ntxent")
    ref.compile(optimizer=_lars())
    ref.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0)
    for got, want in zip(model.method_variables, ref.trainable_variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())

    # The probe moved by one Adam step (lr 0.01) on its cross-entropy over the labelled
    # examples of the stopped representation of the encoder *before* the step.
    h = np.maximum(data["view1"] @ _nets(1)[0].layers[0].kernel.numpy()
                   + _nets(1)[0].layers[0].bias.numpy(), 0.0)
    keep = data["label"] >= 0
    w, b = tf.Variable(w0), tf.Variable(b0)
    with tf.GradientTape() as tape:
        logits = tf.matmul(h[keep], w) + b
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=data["label"][keep], logits=logits))
    adam = keras.optimizers.Adam(0.01)
    adam.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
    np.testing.assert_allclose(probe.kernel.numpy(), w.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probe.bias.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    assert int(model.probe_optimizer.iterations) == 1 and int(model.optimizer.iterations) == 1


def test_variable_order_is_encoder_head_probe():
    """Checkpoints store model.variables by position: the order must not move."""
    encoder, head, probe = _nets(2)
    model = ContrastiveMethod(encoder, head, probe=probe)
    want = [v.path for v in encoder.variables + head.variables + probe.variables]
    assert [v.path for v in model.variables] == want
