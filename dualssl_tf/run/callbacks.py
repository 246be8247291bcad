"""Keras callbacks of the training loop: the metrics.jsonl log, the non-finite-loss guard,
and :class:`EpochMetric`, the base of every per-epoch measurement (the probe's test
accuracy, the online kNN, the collapse monitor here; the tasks' own in
``dualssl_tf.tasks``)."""

import json

import keras
import numpy as np
import tensorflow as tf

from dualssl_tf import runfiles
from dualssl_tf.evaluation import knn
from dualssl_tf.evaluation.features import pool_features


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if tf.is_tensor(value):
        return value.numpy().tolist()
    return value


def current_learning_rate(optimizer):
    """The learning rate in force at the optimizer's current step, as a float."""
    lr = optimizer.learning_rate
    if callable(lr):
        lr = lr(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))


class MetricsLogger(keras.callbacks.Callback):
    """Appends one JSON object per epoch to ``path`` (``metrics.jsonl``).

    Line fields: ``epoch`` (0 = at initialisation, written by :meth:`log_initial`),
    ``learning_rate`` and every scalar in Keras' epoch logs. Keys ``<name>/<k>`` are grouped
    into a dict, so ``best_corr/1 .. best_corr/L`` become ``"best_corr": {"1": .., "L": ..}``.
    The line is written (and on local disk fsynced) every epoch through
    :func:`dualssl_tf.runfiles.append_line`, so ``path`` may be a ``gs://`` URL and a crash
    loses at most the running epoch.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    @staticmethod
    def group(logs):
        out = {}
        for key, value in logs.items():
            value = _jsonable(value)
            if "/" in key:
                head, tail = key.split("/", 1)
                out.setdefault(head, {})[tail] = value
            else:
                out[key] = value
        return out

    def write(self, record):
        runfiles.append_line(self.path, json.dumps(record))  # local disk: fsynced

    def log_initial(self, logs):
        """Writes the epoch-0 line (metrics at initialisation)."""
        self.write({"epoch": 0, **self.group(logs)})

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1,
                  "learning_rate": current_learning_rate(self.model.optimizer)}
        record.update(self.group(logs or {}))
        self.write(record)


class ScalarTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback writing the scalar epoch logs only: array logs (e.g. the
    per-seed ``best_corr_seeds/<d>`` of a multi-seed HLTM run) go to metrics.jsonl."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {k: v for k, v in (logs or {}).items()
                                     if np.ndim(v) == 0})


class EpochMetric(keras.callbacks.Callback):
    """A measurement added to the epoch logs (hence metrics.jsonl and TensorBoard).

    Subclasses implement :meth:`compute` -> ``{name: float}``. It runs after every
    ``every``-th epoch and, when ``at_init`` is true, once before training: the trainer
    writes :meth:`initial_logs` of every such callback on the epoch-0 line.
    """

    at_init = True
    every = 1

    def compute(self, epoch=0):
        """``{name: float}`` for the model as it is after ``epoch`` epochs (0 = init)."""
        raise NotImplementedError

    def initial_logs(self):
        return self.compute(0) if self.at_init else {}

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and (epoch + 1) % self.every == 0:
            logs.update(self.compute(epoch + 1))


class NonFiniteLossError(RuntimeError):
    """Training hit a NaN/Inf loss (or weights); ``step`` is the global step (1-based)."""

    def __init__(self, step, value, first_step=None, what="loss"):
        where = (f"step {step}" if first_step is None or first_step == step
                 else f"steps {first_step}-{step} (one execution of --steps_per_execution)")
        super().__init__(f"non-finite {what} ({value}) at {where}; training stopped, the "
                         "last good checkpoint is kept; lower --learning_rate and re-run")
        self.step = step
        self.value = value


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Raises :class:`NonFiniteLossError` when the loss reported after a batch is NaN/Inf.

    Keras reports the running mean of the epoch's batch losses, which turns non-finite at
    the first bad batch. With ``steps_per_execution = k`` Keras calls back once per k steps,
    so the step is known to within that execution. Raising (rather than setting
    ``stop_training``) keeps Keras from running the epoch-end callbacks, so no metrics line
    and no checkpoint of the broken weights is written.
    """

    def __init__(self, steps_per_execution=1):
        super().__init__()
        self.steps_per_execution = steps_per_execution

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        value = float(keras.ops.convert_to_numpy(loss))
        if not np.isfinite(value):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            raise NonFiniteLossError(step, value,
                                     first_step=step - self.steps_per_execution + 1)


class ProbeAccuracy(EpochMetric):
    """Adds ``probe_test_acc``: top-1 of the online linear probe on held-out images.

    Runs the encoder in inference mode on un-augmented ``(x, label)`` batches each epoch.

    Args:
      encoder: x [B, ...] -> representation [B, R].
      probe: representation -> logits [B, K].
      dataset: finite tf.data of (x [B, ...], label [B] int) batches.
    """

    at_init = False

    def __init__(self, encoder, probe, dataset):
        super().__init__()
        self.encoder = encoder
        self.probe = probe
        self.dataset = dataset
        self._predict = tf.function(self._predict_batch, autograph=False)

    def _predict_batch(self, x):
        """x [B, ...] -> predicted class [B] int32."""
        logits = self.probe(self.encoder(x, training=False), training=False)
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def compute(self, epoch=0):
        correct, total = 0, 0
        for x, y in self.dataset:
            correct += int(tf.reduce_sum(tf.cast(
                tf.equal(self._predict(x), tf.cast(y, tf.int32)), tf.int32)))
            total += int(tf.shape(y)[0])
        return {"probe_test_acc": correct / max(total, 1)}


class KnnAccuracy(EpochMetric):
    """Adds ``knn_top1``: kNN top-1 of the representation on held-out images, the
    temperature-weighted vote of :func:`dualssl_tf.evaluation.knn.knn_probe` (the offline
    kNN's code), every epoch and at initialisation.

    The bank is the first ``max_bank`` labelled examples of ``bank`` (in its order, so the
    same images every epoch); the queries are all of ``queries``. Features are the
    encoder's representation in inference mode (BatchNorm's moving statistics, nothing
    updated, no random op), so training is untouched. With several k the first is
    ``knn_top1`` and every k also gives ``knn_top1@K``.

    Args:
      encoder: x [B, ...] -> representation [B, R] (or [B, ..., R]: spatial dims averaged).
      bank, queries: finite tf.data of (x [B, ...], label [B] int) batches.
      num_classes: C, labels in [0, C).
      k: an int or a list of ints >= 1 (each clipped to the bank's size).
      max_bank: most bank examples used (bounds the cost: one forward pass each, an
        [M, N] similarity).
      temperature: T of the votes ``exp(cos / T)``.
    """

    def __init__(self, encoder, bank, queries, num_classes, k=20, max_bank=5000,
                 temperature=0.07):
        super().__init__()
        self.encoder = encoder
        self.bank, self.queries = bank, queries
        self.num_classes = int(num_classes)
        self.ks = list(k) if isinstance(k, (list, tuple)) else [int(k)]
        self.max_bank = int(max_bank)
        self.temperature = float(temperature)
        self._features = tf.function(self._features_batch, autograph=False)

    def _features_batch(self, x):
        """x [B, ...] -> [B, F] float32."""
        return tf.cast(pool_features(self.encoder(x, training=False)), tf.float32)

    def features(self, dataset, limit=None):
        """``(features [N, F] float32, labels [N] int64)`` of ``dataset``'s first ``limit``
        examples (all when None)."""
        xs, ys, n = [], [], 0
        for x, y in dataset:
            if limit is not None and n >= limit:
                break
            if limit is not None and n + int(tf.shape(y)[0]) > limit:
                x, y = x[:limit - n], y[:limit - n]
            xs.append(self._features(x).numpy())
            ys.append(np.asarray(y, np.int64).reshape(-1))
            n += len(ys[-1])
        return np.concatenate(xs), np.concatenate(ys)

    def compute(self, epoch=0):
        xtr, ytr = self.features(self.bank, self.max_bank)
        xte, yte = self.features(self.queries)
        result = knn.knn_probe(xtr, ytr, xte, yte, self.num_classes, k=self.ks,
                               temperature=self.temperature)
        out = {"knn_top1": result["top1"]}
        if len(self.ks) > 1:
            out.update({f"knn_top1@{k}": result[f"top1@{k}"] for k in result["ks"]})
        return out


def effective_rank(x):
    """Effective rank of ``x`` [N, D] (Roy & Vetterli 2007): ``exp(H(p))`` of the singular
    values normalised to sum 1, ``p_j = s_j / sum(s)``; H the entropy (``0 log 0 = 0``).

    1 for a rank-1 matrix (every row on one line: complete collapse), ``min(N, D)`` when
    every singular value is equal; a float32 scalar tensor. The rows are not centred, so a
    collapse to one point gives 1 rather than the rank of rounding noise.
    """
    s = tf.linalg.svd(tf.cast(x, tf.float32), compute_uv=False)
    p = s / tf.maximum(tf.reduce_sum(s), 1e-30)
    return tf.exp(-tf.reduce_sum(tf.math.xlogy(p, p)))


class EmbeddingSpread(EpochMetric):
    """Adds ``embed_std`` and ``effective_rank``: collapse monitors of the normalised
    embedding (label-free).

    ``embed_std``: the per-dimension standard deviation over a fixed batch of the
    normalised embedding ``f / (||f|| + eps)``, averaged over dimensions: 0 when every
    input maps to the same point (collapse), about ``1/sqrt(D)`` when embeddings spread
    over the sphere. ``effective_rank``: :func:`effective_rank` of the same [N, D] matrix,
    1 at complete collapse, falling with dimensional collapse (few directions used).

    Args:
      encoder, head: the dual network's towers (head may be None).
      x: [N, ...] fixed inputs (e.g. un-augmented images).
      norm_eps: the method's normalisation epsilon.
    """

    def __init__(self, encoder, head, x, norm_eps=1e-4):
        super().__init__()
        self.encoder, self.head, self.x, self.norm_eps = encoder, head, x, norm_eps

    def compute(self, epoch=0):
        f = self.encoder(self.x, training=False)
        if self.head is not None:
            f = self.head(f, training=False)
        f = tf.cast(f, tf.float32)  # mixed precision: the monitor in float32, as the loss
        f = f / (tf.norm(f, axis=-1, keepdims=True) + self.norm_eps)
        return {"embed_std": float(tf.reduce_mean(tf.math.reduce_std(f, axis=0))),
                "effective_rank": float(effective_rank(f))}


class ViewSummary(keras.callbacks.Callback):
    """Writes a few training pairs to TensorBoard as images when training starts at step 0.

    Args:
      log_dir: TensorBoard directory (e.g. ``model_dir/logs/views``).
      data: the training tf.data of batch dicts with ``view1``, ``view2`` [B, H, W, 3] in
        [0, 1]; one batch is drawn when training starts (a fresh iterator, so training's
        own stream is untouched).
      max_pairs: pairs shown; each image is view 1 and view 2 side by side.
      views: for data of un-augmented ``image`` batches (--augment_on=device), the
        ``(images, step, replica_id) -> (view1, view2)`` the train step uses; the pairs
        shown are those of step 0 on replica 0.
    """

    def __init__(self, log_dir, data, max_pairs=8, views=None):
        super().__init__()
        self.log_dir = log_dir
        self.data = data
        self.max_pairs = max_pairs
        self.views = views

    def pairs(self):
        """[n, H, 2W, 3]: view 1 | view 2 of the first n pairs of one batch."""
        batch = next(iter(self.data.take(1)))
        if "view1" not in batch and self.views is not None:
            batch["view1"], batch["view2"] = self.views(
                batch["image"], tf.constant(0, tf.int64), 0)[:2]
        n = min(self.max_pairs, int(batch["view1"].shape[0]))
        return tf.concat([batch["view1"][:n], batch["view2"][:n]], axis=2)

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and int(keras.ops.convert_to_numpy(optimizer.iterations)):
            return  # a resumed run: the first run's step-0 images are kept (no duplicate)
        pairs = self.pairs()
        writer = tf.summary.create_file_writer(self.log_dir)
        with writer.as_default():
            tf.summary.image("augmented_pairs", pairs, step=0, max_outputs=int(pairs.shape[0]))
        writer.flush()
        writer.close()
