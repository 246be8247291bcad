"""Fine-tuning an export: loss goes down, the encoder learns at the scaled rate, and the one
Keras behaviour SavedModelLayer relies on (wrap, not copy, the restored variables)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.evaluation import export, finetune
from tests.evaluation.common import blobs


def test_finetuning_reduces_loss(tmp_path):
    keras.utils.set_random_seed(1)
    enc = keras.Sequential([keras.Input((10,)), keras.layers.Dense(8, activation="tanh"),
                            keras.layers.BatchNormalization()], name="enc")
    path = str(tmp_path / "sm")
    export.export_encoder(enc, None, path, (10,))
    x, y = blobs(256, 5, sep=1.0)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=0).batch(32)
    xt, yt = blobs(128, 6, sep=1.0)
    test = tf.data.Dataset.from_tensor_slices((xt, yt)).batch(64)

    result = finetune.finetune(path, train, test, 3, epochs=4, learning_rate=1e-2,
                               encoder_lr_scale=0.1, verbose=0, min_steps=0)
    assert result["epochs"] == 4
    assert result["test_loss"] < 0.7 * result["initial_test_loss"]
    assert result["train_loss"][-1] < result["train_loss"][0]
    assert result["top1"] > 0.6                      # chance is 1/3
    assert result["encoder_learning_rate"] == pytest.approx(1e-3)


def test_finetune_model_updates_encoder_at_smaller_rate(tmp_path):
    keras.utils.set_random_seed(2)
    enc = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="enc")
    path = str(tmp_path / "sm")
    export.export_encoder(enc, None, path, (4,))
    model = finetune.FineTuneClassifier(path, 2, encoder_lr_scale=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = np.array([0, 1] * 4)
    model(x)
    enc_before = [v.numpy().copy() for v in model.encoder.trainable_weights]
    head_before = [v.numpy().copy() for v in model.classifier.trainable_weights]
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
    grads = tape.gradient(loss, model.encoder.trainable_weights +
                          model.classifier.trainable_weights)
    model.train_on_batch(x, y)
    n_enc = len(enc_before)
    # Plain SGD: delta = -lr * grad, with lr 0.05 for the encoder and 0.5 for the head.
    for before, v, g in zip(enc_before, model.encoder.trainable_weights, grads[:n_enc]):
        np.testing.assert_allclose(v.numpy() - before, -0.05 * g.numpy(), atol=1e-6)
    for before, v, g in zip(head_before, model.classifier.trainable_weights, grads[n_enc:]):
        np.testing.assert_allclose(v.numpy() - before, -0.5 * g.numpy(), atol=1e-6)


def test_savedmodel_layer_weights_and_modes(tmp_path):
    enc = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                            keras.layers.BatchNormalization()], name="enc")
    path = str(tmp_path / "sm")
    export.export_encoder(enc, None, path, (4,))
    layer = finetune.SavedModelLayer(path, name="encoder")
    # Dense kernel + bias, BN gamma + beta trainable; the moving statistics not.
    assert len(layer.trainable_weights) == 4 and len(layer.non_trainable_weights) == 2
    assert all(":" not in w.name and "/" not in w.name for w in layer.weights)
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32) * 3 + 1
    np.testing.assert_allclose(layer(x)["representation"].numpy(),
                               enc(x, training=False).numpy(), atol=1e-5)
    np.testing.assert_allclose(layer(x, training=True)["representation"].numpy(),
                               enc(x, training=True).numpy(), atol=1e-4)
    frozen = finetune.SavedModelLayer(path, trainable=False)
    assert not frozen.trainable_weights and len(frozen.non_trainable_weights) == 6


SHIM_BROKEN = ("dualssl_tf.evaluation.finetune.wrap_variable relies on keras.Variable("
               "initializer=<tf.Variable>) wrapping that very tf.Variable (Keras 3.15, TF "
               "backend); with Keras {} it {}. Fine-tuning would train variables the "
               "SavedModel never reads: update wrap_variable (see its docstring).")


def test_wrap_variable_shares_the_savedmodel_variable(tmp_path):
    enc = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="enc")
    path = str(tmp_path / "sm")
    export.export_encoder(enc, None, path, (4,))
    loaded = export.load_encoder(path)
    kernel = next(v for v in loaded.trainable_variables if len(v.shape) == 2)
    wrapped = finetune.wrap_variable(kernel)
    version = keras.__version__
    if not (wrapped.trainable and ":" not in wrapped.name and "/" not in wrapped.path):
        pytest.fail(SHIM_BROKEN.format(version, f"names it {wrapped.path!r}"))
    x = tf.ones([2, 4])
    before = loaded(x)["representation"].numpy()
    wrapped.assign(wrapped.numpy() + 1.0)              # through Keras
    if np.allclose(loaded(x)["representation"].numpy(), before):
        pytest.fail(SHIM_BROKEN.format(version, "copies the variable"))
    # Gradients of the SavedModel's function reach the Keras variable, and an optimizer
    # builds its slots for it inside tf.function (what fails with TFSMLayer's ':0' names).
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(loaded(x, training=True)["representation"])
    grad = tape.gradient(loss, wrapped)
    if grad is None:
        pytest.fail(SHIM_BROKEN.format(version, "gets no gradient"))
    opt = keras.optimizers.Adam(0.1)
    start = kernel.numpy()
    tf.function(lambda: opt.apply_gradients([(grad, wrapped)]))()
    np.testing.assert_allclose(kernel.numpy() - start, -0.1 * np.sign(grad.numpy()), atol=1e-4)
