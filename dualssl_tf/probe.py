"""Evaluating an exported encoder: linear probe, kNN, fine-tuning (DIGEST section 6).

Features are extracted once per (SavedModel, dataset, split, output) with the frozen encoder
in inference mode (BatchNorm moving statistics, no augmentation) and cached as .npz, so the
linear probe and kNN share one extraction.

* Linear probe: features standardised with train-split statistics, a softmax classifier
  trained with Adam and an L2 penalty (weight decay) chosen from a small grid on a held-out
  part of the train split (never on test), refit on the whole train split; top-1 / top-5 on
  test.
* kNN (InstDisc / DINO): cosine similarity, the k nearest train features vote for their
  class with weight ``exp(sim / T)``; top-1 (and top-5 from the vote scores).
* Fine-tuning: the SavedModel's variables in a Keras model (``TFSMLayer(trainable=True)``,
  training-mode endpoint while training) + a linear head; the encoder learns at a smaller
  learning rate than the head.

Example:
  >>> enc = export.load_encoder("run/saved_model")
  >>> xtr, ytr = cached_features(enc, train_ds, "generated_images", "train")
  >>> xte, yte = cached_features(enc, test_ds, "generated_images", "test")
  >>> linear_probe(xtr, ytr, xte, yte, num_classes=10)["top1"]
  >>> knn_probe(xtr, ytr, xte, yte, num_classes=10, k=200)["top1"]
"""

import hashlib
import io
import json
import os
import re

import keras
import numpy as np
import tensorflow as tf

from dualssl_tf import export, runfiles


# ----------------------------------------------------------------------------- features

def _split_element(element):
    """(x, label) tuple or dict with image/x and label -> (x, label)."""
    if isinstance(element, dict):
        for key in ("image", "x", "view1"):
            if key in element:
                return element[key], element["label"]
        raise ValueError(f"dataset: dict batches need 'image' (or 'x') and 'label', got keys "
                         f"{sorted(element)}")
    x, y = element[0], element[1]
    return x, y


def _pool(features, pool):
    """[B, ...] -> [B, F]: 'auto' averages the spatial dims of [B, H, W, C] maps and flattens
    anything else; 'mean' averages all middle dims; 'flatten' keeps every value."""
    rank = features.shape.rank
    if rank == 2:
        return features
    if pool == "mean" or (pool == "auto" and rank == 4):
        return tf.reduce_mean(features, axis=list(range(1, rank - 1)))
    if pool in ("flatten", "auto"):
        return tf.reshape(features, [tf.shape(features)[0], -1])
    raise ValueError(f"pool: expected auto, mean or flatten, got {pool!r}")


def check_dataset(encoder, ds, flag="dataset"):
    """Raises ValueError (one line naming ``flag``) if the batches do not fit the encoder.

    ds: tf.data of (x [B, ...], label [B]) batches; x must have the SavedModel's input shape.
    """
    x_spec, _ = _split_element(ds.element_spec)
    got = tuple(x_spec.shape[1:].as_list())
    want = tuple(encoder.input_shape)
    if len(got) != len(want) or any(g is not None and g != w for g, w in zip(got, want)):
        what = ("image size or channels" if len(want) == 3 else "input shape")
        raise ValueError(f"--{flag}: {what} {got} does not match the SavedModel input {want} "
                         f"of {encoder.path}; choose the dataset/image size it was trained on")


def extract_features(encoder, ds, output="representation", pool="auto", verbose=1):
    """Runs the frozen encoder (inference endpoint) over a dataset.

    Args:
      encoder: :class:`dualssl_tf.export.ExportedEncoder`.
      ds: finite tf.data of (x [B, *input_shape], label [B] or [B, 1]) batches; uint8 images
        are scaled to [0, 1]; examples with label < 0 (unlabelled) are dropped.
      output: which output of the signature to use (``representation``, ``projection`` or
        an intermediate name).
      pool: how outputs of rank > 2 become vectors (see :func:`_pool`).
      verbose: 1 shows a progress bar.
    Returns:
      (features [N, F] float32, labels [N] int64).
    Raises:
      ValueError: unknown output, or an empty dataset.
    """
    if output not in encoder.output_keys:
        raise ValueError(f"output: {encoder.path} has outputs {', '.join(encoder.output_keys)}"
                         f", not {output!r}")
    check_dataset(encoder, ds)
    n_batches = int(ds.cardinality())
    bar = keras.utils.Progbar(n_batches if n_batches > 0 else None, verbose=verbose,
                              unit_name="batch")
    feats, labels = [], []
    for i, element in enumerate(ds):
        x, y = _split_element(element)
        if x.dtype == tf.uint8:
            x = tf.cast(x, tf.float32) / 255.0
        out = encoder(tf.cast(x, tf.float32), training=False)[output]
        y = np.reshape(np.asarray(y), [-1]).astype(np.int64)
        keep = y >= 0   # label -1 marks unlabelled images (e.g. STL-10 unlabeled)
        feats.append(_pool(out, pool).numpy().astype(np.float32)[keep])
        labels.append(y[keep])
        bar.update(i + 1)
    if sum(len(f) for f in feats) == 0:
        raise ValueError("dataset: the split is empty; nothing to extract features from")
    return np.concatenate(feats), np.concatenate(labels)


def _fingerprint(path):
    """Changes whenever the SavedModel is re-exported, so stale caches are never used."""
    try:
        return tf.saved_model.experimental.read_fingerprint(path).singleprint()
    except Exception:  # older SavedModels have no fingerprint.pb
        pb = os.path.join(path, "saved_model.pb")
        return str(runfiles.mtime(pb)) if runfiles.exists(pb) else "none"


def feature_cache_path(saved_model, dataset, split, output="representation", pool="auto",
                       cache_dir=None):
    """Path of the .npz cache for one (SavedModel, dataset, split, output).

    Defaults to ``<dir of the SavedModel>/feature_cache/`` (``~/.cache/dualssl_tf/
    feature_cache/`` for remote SavedModels); the name carries the SavedModel name and a hash
    of its absolute path and content fingerprint, dataset, split, output and pool.
    """
    remote = "://" in saved_model
    if not remote:
        saved_model = os.path.abspath(saved_model)
    key = json.dumps([saved_model, _fingerprint(saved_model), str(dataset), str(split),
                      output, pool])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    if not cache_dir:
        # Features of a remote (gs://) SavedModel are cached on the local disk.
        cache_dir = (os.path.join(os.path.expanduser("~"), ".cache", "dualssl_tf",
                                  "feature_cache") if remote else
                     os.path.join(os.path.dirname(saved_model), "feature_cache"))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(dataset))
    return os.path.join(cache_dir, f"{os.path.basename(saved_model)}-{safe}-{split}-"
                                   f"{output}-{digest}.npz")


def cached_features(encoder, ds, dataset, split, output="representation", pool="auto",
                    cache_dir=None, verbose=1):
    """:func:`extract_features` with an .npz cache (see :func:`feature_cache_path`).

    ``dataset`` and ``split`` name the data for the cache key (the tf.data itself cannot be
    hashed); callers must pass names that identify it, including any setting that changes
    the examples. Returns (features [N, F] float32, labels [N] int64).
    """
    path = feature_cache_path(encoder.path, dataset, split, output, pool, cache_dir)
    if runfiles.exists(path):
        with np.load(io.BytesIO(runfiles.read_bytes(path))) as data:
            return data["features"], data["labels"]
    feats, labels = extract_features(encoder, ds, output, pool, verbose)
    runfiles.makedirs(os.path.dirname(path))
    buffer = io.BytesIO()
    np.savez(buffer, features=feats, labels=labels)
    # Temp + rename (any tf.io.gfile path): readers never see a half-written cache.
    runfiles.write_bytes_atomic(path, buffer.getvalue())
    return feats, labels


# ----------------------------------------------------------------------------- metrics

def topk_accuracy(scores, labels, k):
    """Fraction of rows whose label is among the k highest scores.

    scores: [N, C]; labels: [N] int. Returns a float, or None when k >= C (trivially 1).
    """
    scores = np.asarray(scores)
    if k >= scores.shape[1] and k > 1:
        return None
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(topk == np.asarray(labels)[:, None], axis=1)))


def standardize(train, *others, eps=1e-6):
    """Per-feature z-score with train statistics. train: [N, F] -> tuple of arrays."""
    mean = train.mean(axis=0, keepdims=True)
    std = train.std(axis=0, keepdims=True) + eps
    return tuple((a - mean) / std for a in (train,) + others)


# ----------------------------------------------------------------------------- linear

@tf.function(reduce_retracing=True)
def _adam_softmax(x, y, w, b, steps, batch_size, learning_rate, weight_decay, seed):
    """Adam (Keras defaults: beta 0.9 / 0.999, eps 1e-7) with cosine-decayed learning rate on
    ``mean CE(x W + b, y) + weight_decay / 2 ||W||^2``; returns the final (W, b).

    A module-level function with tensor arguments, so the grid of fits reuses one trace.
    Minibatches are drawn with replacement from the stateless stream (seed, step); with
    batch_size >= N every step is full-batch.
    """
    n = tf.shape(x)[0]
    steps_f = tf.cast(steps, tf.float32)
    params = [w, b]
    m = [tf.zeros_like(p) for p in params]
    v = [tf.zeros_like(p) for p in params]
    for step in tf.range(steps):
        if batch_size < n:
            idx = tf.random.stateless_uniform([batch_size], tf.stack([seed, step]), 0, n,
                                              dtype=tf.int32)
            xb, yb = tf.gather(x, idx), tf.gather(y, idx)
        else:
            xb, yb = x, y
        with tf.GradientTape() as tape:
            tape.watch(params)
            logits = tf.matmul(xb, params[0]) + params[1]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=yb, logits=logits)) + 0.5 * weight_decay * tf.reduce_sum(
                    params[0] * params[0])
        grads = tape.gradient(loss, params)
        t = tf.cast(step, tf.float32) + 1.0
        lr = learning_rate * 0.5 * (1.0 + tf.cos(np.pi * (t - 1.0) / steps_f))
        new_params = []
        for k in range(2):
            m[k] = 0.9 * m[k] + 0.1 * grads[k]
            v[k] = 0.999 * v[k] + 0.001 * tf.square(grads[k])
            m_hat = m[k] / (1.0 - 0.9 ** t)
            v_hat = v[k] / (1.0 - 0.999 ** t)
            new_params.append(params[k] - lr * m_hat / (tf.sqrt(v_hat) + 1e-7))
        params = new_params
    return params[0], params[1]


def train_linear(x, y, num_classes, weight_decay=0.0, epochs=100, batch_size=1024,
                 learning_rate=1e-2, seed=0, min_steps=500):
    """Softmax regression by Adam with an L2 penalty ``weight_decay / 2 * ||W||^2``.

    The penalised objective is strictly convex for weight_decay > 0, so its solution does not
    depend on the optimiser; the learning rate follows a cosine decay to 0.

    Args:
      x: [N, F] float32 (standardised); y: [N] int labels in [0, num_classes).
      epochs, batch_size: Adam steps = max(epochs * ceil(N / batch_size), min_steps)
        (small train sets still get enough steps to converge).
    Returns:
      (W [F, C], b [C]) numpy arrays.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    n, f = x.shape
    batch_size = min(batch_size, n)
    steps = max(epochs * -(-n // batch_size), min_steps)
    w, b = _adam_softmax(x, tf.convert_to_tensor(y, tf.int64),
                         tf.zeros([f, num_classes]), tf.zeros([num_classes]),
                         tf.constant(steps), tf.constant(batch_size),
                         tf.constant(learning_rate, tf.float32),
                         tf.constant(weight_decay, tf.float32), tf.constant(seed))
    return w.numpy(), b.numpy()


def linear_probe(train_x, train_y, test_x, test_y, num_classes,
                 weight_decays=(0.0, 1e-4, 1e-3, 1e-2), val_fraction=0.2, epochs=100,
                 batch_size=1024, learning_rate=1e-2, seed=0):
    """Linear evaluation: standardise, pick the L2 strength on held-out train, test once.

    Args:
      train_x [N, F], train_y [N], test_x [M, F], test_y [M]: features and int labels.
      num_classes: C.
      weight_decays: grid of L2 strengths; chosen by accuracy on a random ``val_fraction``
        of the train split (never the test split), then refit on the whole train split.
    Returns:
      dict ``top1``, ``top5`` (None if C <= 5), ``weight_decay`` (chosen),
      ``val_top1`` {weight_decay: accuracy}, ``train_top1``, ``num_train``, ``num_test``.
    """
    if len(train_x) < 2 or len(test_x) < 1:
        raise ValueError(f"linear_probe: need >= 2 train and >= 1 test examples, got "
                         f"{len(train_x)} and {len(test_x)}")
    _check_labels(train_y, test_y, num_classes)
    train_x, test_x = standardize(train_x, test_x)
    weight_decays = tuple(float(w) for w in weight_decays)
    val_scores = {}
    if len(weight_decays) > 1:
        perm = np.random.default_rng(seed).permutation(len(train_x))
        n_val = min(max(1, int(round(val_fraction * len(train_x)))), len(train_x) - 1)
        val, fit = perm[:n_val], perm[n_val:]
        for wd in weight_decays:
            w, b = train_linear(train_x[fit], train_y[fit], num_classes, wd, epochs,
                                batch_size, learning_rate, seed)
            val_scores[wd] = topk_accuracy(train_x[val] @ w + b, train_y[val], 1)
        # Ties go to the strongest regulariser (the simpler model).
        best = max(weight_decays, key=lambda wd: (val_scores[wd], wd))
    else:
        best = weight_decays[0]
    w, b = train_linear(train_x, train_y, num_classes, best, epochs, batch_size,
                        learning_rate, seed)
    scores = test_x @ w + b
    return {"top1": topk_accuracy(scores, test_y, 1), "top5": topk_accuracy(scores, test_y, 5),
            "weight_decay": best, "val_top1": {str(k): v for k, v in val_scores.items()},
            "train_top1": topk_accuracy(train_x @ w + b, train_y, 1),
            "num_train": int(len(train_x)), "num_test": int(len(test_x))}


def _check_labels(train_y, test_y, num_classes):
    for name, y in (("train", train_y), ("test", test_y)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"num_classes: {name} labels span [{y.min()}, {y.max()}], "
                             f"outside [0, {num_classes})")


# ----------------------------------------------------------------------------- kNN

def knn_scores(train_x, train_y, query_x, num_classes, k=200, temperature=0.07,
               batch_size=256):
    """Temperature-weighted kNN votes (InstDisc / DINO).

    Cosine similarity s between L2-normalised features; each of the k most similar train
    examples adds ``exp(s / temperature)`` to its class. k is clipped to N.

    Args:
      train_x [N, F], train_y [N] int, query_x [M, F].
    Returns:
      [M, C] float32 class votes; argmax is the prediction.
    """
    train = tf.math.l2_normalize(tf.convert_to_tensor(train_x, tf.float32), axis=1)
    labels = tf.one_hot(tf.convert_to_tensor(train_y, tf.int64), num_classes)
    k = int(min(k, len(train_x)))
    out = []
    for start in range(0, len(query_x), batch_size):
        q = tf.math.l2_normalize(tf.convert_to_tensor(query_x[start:start + batch_size],
                                                      tf.float32), axis=1)
        sim = tf.matmul(q, train, transpose_b=True)                     # [m, N]
        top_sim, top_idx = tf.math.top_k(sim, k=k)                        # [m, k]
        weights = tf.exp(top_sim / temperature)
        votes = tf.einsum("mk,mkc->mc", weights, tf.gather(labels, top_idx))
        out.append(votes.numpy())
    return np.concatenate(out) if out else np.zeros([0, num_classes], np.float32)


def knn_probe(train_x, train_y, test_x, test_y, num_classes, k=200, temperature=0.07):
    """kNN evaluation. Returns dict ``top1``, ``top5`` (None if C <= 5), ``k``,
    ``temperature``, ``num_train``, ``num_test``."""
    if k < 1:
        raise ValueError(f"--knn_k: must be >= 1, got {k}")
    if len(train_x) < 1 or len(test_x) < 1:
        raise ValueError(f"knn_probe: need train and test examples, got {len(train_x)} and "
                         f"{len(test_x)}")
    _check_labels(train_y, test_y, num_classes)
    scores = knn_scores(train_x, train_y, test_x, num_classes, k, temperature)
    return {"top1": topk_accuracy(scores, test_y, 1), "top5": topk_accuracy(scores, test_y, 5),
            "k": int(min(k, len(train_x))), "temperature": float(temperature),
            "num_train": int(len(train_x)), "num_test": int(len(test_x))}


# ----------------------------------------------------------------------------- fine-tuning

class TrainableTFSMLayer(keras.layers.TFSMLayer):
    """``keras.layers.TFSMLayer`` whose weights Keras optimizers can train.

    TFSMLayer names its Keras weights after the restored ``tf.Variable`` names, which end in
    ``:0``; Keras 3.15 optimizers then fail to create slot variables ("not a valid scope
    name"). This subclass drops the ``:0``. The weights still wrap the SavedModel's own
    variables, so training them changes the loaded functions.

    Args: as ``keras.layers.TFSMLayer``.

    Example:
      >>> layer = TrainableTFSMLayer("run/saved_model", call_endpoint="serve",
      ...                            call_training_endpoint="train_mode", trainable=True)
    """

    def _add_existing_weight(self, weight):
        variable = keras.Variable(initializer=weight, trainable=weight.trainable,
                                  dtype=weight.dtype, shape=weight.shape,
                                  name=re.sub(r"[/:]", "_", weight.name))
        self._track_variable(variable)


class FineTuneClassifier(keras.Model):
    """A SavedModel encoder (its own variables, trainable) + a linear head.

    Training uses the export's ``train_mode`` endpoint (BatchNorm batch statistics), while
    inference uses ``serve``. The head learns at ``learning_rate``, the encoder at
    ``learning_rate * encoder_lr_scale`` (a pretrained encoder needs gentler steps).

    Args:
      saved_model: path of an export from :func:`dualssl_tf.export.export_encoder`.
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
        self.encoder = TrainableTFSMLayer(saved_model, call_endpoint=export.SERVE,
                                          call_training_endpoint=export.TRAIN_MODE,
                                          trainable=True, name="encoder")
        self.classifier = keras.layers.Dense(num_classes, name="classifier")
        # Fixed numpy constants (not weights): the head's input scaling is not trained.
        self.feature_mean = (None if feature_mean is None else
                             np.asarray(feature_mean, np.float32).reshape(-1))
        self.feature_std = (None if feature_mean is None else
                            np.sqrt(np.asarray(feature_variance, np.float32)).reshape(-1))
        self.encoder_optimizer = None

    def call(self, x, training=False):
        h = _pool(self.encoder(tf.cast(x, tf.float32), training=training)[self.output_key],
                  "auto")
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
    """Maps dict batches to (x float32, label int64 [B]) tuples for Keras fit."""
    def fn(*element):
        x, y = _split_element(element[0] if len(element) == 1 else element)
        if x.dtype == tf.uint8:
            x = tf.cast(x, tf.float32) / 255.0
        return tf.cast(x, tf.float32), tf.reshape(tf.cast(y, tf.int64), [-1])
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
      ``encoder_learning_rate``.
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
