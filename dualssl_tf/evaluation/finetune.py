"""Fine-tuning an export: its own variables, trainable, under a linear head.

The SavedModel's variables are trained in a Keras model: :class:`SavedModelLayer` runs the
export's ``train_mode`` endpoint while training (BatchNorm batch statistics) and ``serve``
otherwise, and exposes the restored ``tf.Variable``\\ s as Keras weights; the encoder learns
at a smaller learning rate than the head.

Shapes: x ``[B, *input_shape]`` -> the chosen output ``[B, ...]`` -> pooled ``[B, F]``
(:func:`~dualssl_tf.evaluation.features.pool_features`) -> logits ``[B, C]``.

Why not ``keras.layers.TFSMLayer(trainable=True)``: Keras 3.15's TFSMLayer names its Keras
weights after the restored ``tf.Variable`` names with only ``/`` replaced, so they keep the
``:0`` suffix, and a Keras optimizer then fails to create its slots inside ``fit`` ("'..:0_
momentum' is not a valid scope name"). Renaming them needs an override of TFSMLayer's
private ``_add_existing_weight``; :class:`SavedModelLayer` is instead a plain
``keras.layers.Layer`` built from public API. The one behaviour it relies on that Keras does
not document -- a ``keras.Variable`` whose initializer is a ``tf.Variable`` wraps that very
variable instead of copying it (TFSMLayer relies on it too) -- is confined to
:func:`wrap_variable` and checked by tests/evaluation/test_finetune.py.

Example:
  >>> model = FineTuneClassifier("run/saved_model", num_classes=10)
  >>> model.compile(optimizer=keras.optimizers.Adam(1e-3),
  ...               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  >>> model.fit(train_ds, epochs=5)    # (x [B, ...], label [B]) batches
"""

import re

import keras
import numpy as np
import tensorflow as tf

from dualssl_tf.evaluation import export
from dualssl_tf.evaluation.features import (extract_features, pool_features, split_element,
                                            to_float_input)
from dualssl_tf.evaluation.metrics import topk_accuracy


def wrap_variable(variable):
    """A ``keras.Variable`` that *is* ``variable`` (a restored ``tf.Variable``), not a copy.

    Training the returned Keras variable therefore changes what the SavedModel's functions
    compute. Its name is the tf.Variable's with every character Keras rejects in scope
    names (``/``, ``:``) replaced by ``_``, e.g. ``enc/dense/kernel:0`` ->
    ``enc_dense_kernel_0``.

    Relies on the TensorFlow backend's ``Variable._initialize`` keeping a ``tf.Variable``
    initializer as its value (Keras 3.15; also what ``keras.layers.TFSMLayer`` uses);
    ``test_wrap_variable_shares_the_savedmodel_variable`` fails loudly if an upgrade
    changes that.
    """
    return keras.Variable(initializer=variable, shape=variable.shape, dtype=variable.dtype,
                          trainable=variable.trainable,
                          name=re.sub(r"[^0-9A-Za-z_.\-]", "_", variable.name))


class SavedModelLayer(keras.layers.Layer):
    """An export of :func:`dualssl_tf.evaluation.export.export_encoder` as a Keras layer
    whose weights are the SavedModel's own variables (trainable by Keras optimizers).

    Calling it with ``training=True`` runs the ``train_mode`` endpoint (BatchNorm batch
    statistics, moving averages updated); otherwise ``serve``. Input x [B, *input_shape]
    float32; output the export's dict of [B, ...] float32 tensors.

    Args:
      saved_model: export directory.
      trainable: False freezes every weight.
      **kwargs: keras.layers.Layer arguments (name, dtype).

    Example:
      >>> layer = SavedModelLayer("run/saved_model", name="encoder")
      >>> layer(x, training=True)["representation"]       # [B, R]
    """

    def __init__(self, saved_model, trainable=True, **kwargs):
        super().__init__(trainable=trainable, **kwargs)
        self.saved_model = saved_model
        self._export = export.load_encoder(saved_model)
        trainable_ids = {id(v) for v in self._export.trainable_variables}
        variables = self._export.variables
        # Trainable first, then the rest (BatchNorm statistics): the order TFSMLayer uses.
        # Keras tracks variables assigned to layer attributes (lists included).
        self.saved_variables = [wrap_variable(v) for v in
                                [v for v in variables if id(v) in trainable_ids]
                                + [v for v in variables if id(v) not in trainable_ids]]
        self.built = True

    def call(self, x, training=False):
        return self._export(x, training=bool(training))

    def get_config(self):
        return {**super().get_config(), "saved_model": self.saved_model}


class FineTuneClassifier(keras.Model):
    """A SavedModel encoder (its own variables, trainable) + a linear head.

    Training uses the export's ``train_mode`` endpoint (BatchNorm batch statistics), while
    inference uses ``serve``. The head learns at ``learning_rate``, the encoder at
    ``learning_rate * encoder_lr_scale`` (a pretrained encoder needs gentler steps).
    x [B, *input_shape] -> logits [B, C].

    Args:
      saved_model: path of an export from
        :func:`dualssl_tf.evaluation.export.export_encoder`.
      num_classes: C.
      output: the signature output feeding the head.
      encoder_lr_scale: encoder learning rate / head learning rate.
      feature_mean, feature_variance: optional [F] statistics of the pretrained features;
        when given, the head sees ``(h - mean) / sqrt(variance)`` (fixed, not learned), so
        its learning rate does not depend on the feature scale.

    Example:
      >>> model = FineTuneClassifier("run/saved_model", num_classes=10)
      >>> model.compile(optimizer=keras.optimizers.Adam(1e-3),
      ...               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      ...               metrics=["accuracy"])
      >>> model.fit(train_ds, epochs=5)    # (x [B, ...], label [B]) batches
    """

    def __init__(self, saved_model, num_classes, output="representation",
                 encoder_lr_scale=0.1, feature_mean=None, feature_variance=None, **kwargs):
        super().__init__(**kwargs)
        self.saved_model = saved_model
        self.num_classes = num_classes
        self.output_key = output
        self.encoder_lr_scale = float(encoder_lr_scale)
        self.encoder = SavedModelLayer(saved_model, trainable=True, name="encoder")
        self.classifier = keras.layers.Dense(num_classes, name="classifier")
        # Fixed numpy constants (not weights): the head's input scaling is not trained.
        self.feature_mean = (None if feature_mean is None else
                             np.asarray(feature_mean, np.float32).reshape(-1))
        self.feature_std = (None if feature_mean is None else
                            np.sqrt(np.asarray(feature_variance, np.float32)).reshape(-1))
        self.encoder_optimizer = None

    def call(self, x, training=False):
        h = pool_features(self.encoder(tf.cast(x, tf.float32),
                                       training=training)[self.output_key], "auto")
        if self.feature_mean is not None:
            h = (h - self.feature_mean) / self.feature_std
        return self.classifier(h)

    def compile(self, optimizer="adam", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        # A second optimiser of the same kind for the encoder, at the scaled rate.
        config = self.optimizer.get_config()
        lr = config["learning_rate"]
        config["learning_rate"] = (lr * self.encoder_lr_scale if isinstance(lr, float)
                                   else float(keras.ops.convert_to_numpy(
                                       self.optimizer.learning_rate)) * self.encoder_lr_scale)
        config["name"] = "encoder_" + config["name"]
        self.encoder_optimizer = type(self.optimizer).from_config(config)

    def train_step(self, data):
        x, y = data[0], data[1]   # train_on_batch adds a (None) sample weight
        with tf.GradientTape() as tape:
            logits = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=logits)
        enc_vars = self.encoder.trainable_weights
        head_vars = self.classifier.trainable_weights
        grads = tape.gradient(loss, enc_vars + head_vars)
        if enc_vars:
            self.encoder_optimizer.apply_gradients(zip(grads[:len(enc_vars)], enc_vars))
        self.optimizer.apply_gradients(zip(grads[len(enc_vars):], head_vars))
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, logits)
        return self.get_metrics_result()

    def get_config(self):
        return {"saved_model": self.saved_model, "num_classes": self.num_classes,
                "output": self.output_key, "encoder_lr_scale": self.encoder_lr_scale,
                "feature_mean": None if self.feature_mean is None else
                self.feature_mean.tolist(),
                "feature_variance": None if self.feature_mean is None else
                (self.feature_std ** 2).tolist(),
                "name": self.name}


def _xy(ds):
    """Maps dict batches to (x float32 [B, ...], label int64 [B]) tuples for Keras fit."""
    def fn(*element):
        x, y = split_element(element[0] if len(element) == 1 else element)
        return to_float_input(x), tf.reshape(tf.cast(y, tf.int64), [-1])
    return ds.map(fn)


def finetune(saved_model, train_ds, test_ds, num_classes, epochs=5, learning_rate=1e-3,
             encoder_lr_scale=0.1, weight_decay=0.0, output="representation", verbose=1,
             min_steps=200):
    """Fine-tunes encoder + linear head on (x, label) batches and reports test top-1.

    Args:
      saved_model: export directory.
      train_ds, test_ds: finite tf.data of (x [B, *input_shape], label [B]) batches.
      num_classes: C.
      epochs: passes over train_ds; raised so that at least ``min_steps`` steps are taken
        (tiny data sets such as the translation toy have one batch per epoch).
      learning_rate: Adam for the head; the encoder uses
        ``learning_rate * encoder_lr_scale``; ``weight_decay`` is AdamW's decoupled decay.
    Returns:
      dict ``top1``, ``top5`` (None if C <= 5), ``train_loss`` (per-epoch list),
      ``initial_test_loss``, ``test_loss``, ``epochs``, ``learning_rate``,
      ``encoder_learning_rate``, ``num_test``.
    """
    # Standardise the head's input with the pretrained train features (one extra pass).
    feats, _ = extract_features(export.load_encoder(saved_model), train_ds, output,
                                verbose=0)
    model = FineTuneClassifier(saved_model, num_classes, output, encoder_lr_scale,
                               feature_mean=feats.mean(0),
                               # One scale for all units (their mean variance): per-unit
                               # scaling would blow up units that are constant on the train
                               # split as soon as fine-tuning moves them.
                               feature_variance=np.full(feats.shape[1],
                                                        feats.var(0).mean() + 1e-12))
    opt = (keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay) if weight_decay
           else keras.optimizers.Adam(learning_rate))
    model.compile(optimizer=opt,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseTopKCategoricalAccuracy(1, name="top1")])
    train_ds, test_ds = _xy(train_ds), _xy(test_ds)
    initial = model.evaluate(test_ds, verbose=0, return_dict=True)
    batches = int(train_ds.cardinality())
    if batches > 0 and epochs * batches < min_steps:
        epochs = -(-min_steps // batches)
    history = model.fit(train_ds, epochs=epochs, verbose=verbose, shuffle=False)
    scores, labels = [], []
    for x, y in test_ds:
        scores.append(model(x, training=False).numpy())
        labels.append(y.numpy())
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    test_loss = float(np.mean(keras.ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(labels, scores, from_logits=True))))
    return {"top1": topk_accuracy(scores, labels, 1), "top5": topk_accuracy(scores, labels, 5),
            "train_loss": [float(v) for v in history.history["loss"]],
            "initial_test_loss": float(initial["loss"]), "test_loss": test_loss,
            "epochs": int(epochs), "learning_rate": float(learning_rate),
            "encoder_learning_rate": float(learning_rate * encoder_lr_scale),
            "num_test": int(len(labels))}
