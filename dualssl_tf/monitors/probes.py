"""Measurements on held-out labels: the online linear probe's test accuracy and the online
kNN (the offline kNN's vote, :func:`dualssl_tf.evaluation.knn.knn_probe`)."""

import numpy as np
import tensorflow as tf

from dualssl_tf.evaluation import knn
from dualssl_tf.evaluation.features import pool_features
from dualssl_tf.monitors.base import EpochMetric


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
