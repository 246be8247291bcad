"""The dual-network Keras model: two weight-sharing towers trained by a contrastive loss."""

import keras
import tensorflow as tf

from dualssl_tf import distribute, losses


def local_candidates(z1, z2):
    """Default negatives hook: the local batch is the global batch.

    Returns ``(z1_all [G, D], z2_all [G, D], offset)`` for :func:`losses.in_batch_distances`.
    """
    return z1, z2, 0


class DualModel(keras.Model):
    """SimCLR-style dual network: ``f = normalize(head(encoder(x)))`` on both views.

    The two towers share every weight (one encoder called on both views, in one batch so
    BatchNorm sees both), the loss is one of :data:`losses.LOSS_NAMES`, and ``fit`` reports
    ``loss``, ``r_pos``, ``r_neg`` (mean distances) and ``contrastive_acc`` (fraction of
    anchors whose positive is nearer than every negative).

    Batches are dicts:
      ``view1``, ``view2``: [B, ...] two augmentations of the same B data points;
      ``negatives`` (optional): [B, H, ...] explicit negatives; without it the other 2B-2
        views of the (global) batch are the negatives (SimCLR);
      ``label`` (optional): [B] int labels, used only by the online ``probe``; -1 marks
        an unlabelled example (left out of the probe's loss and accuracy).

    Args:
      encoder: Keras model ``x [B, ...] -> representation [B, R]``.
      head: optional projection head ``[B, R] -> [B, D]``; identity when None.
      loss: a name in :data:`losses.LOSS_NAMES`.
      temperature, margin, beta: loss hyper-parameters (see :mod:`dualssl_tf.losses`).
      normalize: divide the embedding by ``||f|| + norm_eps`` before the loss.
      gather_fn: ``(z1, z2) -> (z1_all, z2_all, offset)``; the hook through which
        negatives are gathered across replicas (see :mod:`dualssl_tf.distribute`).
      probe: optional classifier on ``stop_gradient(representation)`` of view 1 (online
        linear probe); trained with the labels when a batch has them.

    Example:
      >>> model = DualModel(encoder, head, loss="ntxent", temperature=0.5)
      >>> model.compile(optimizer="adam")
      >>> model.fit(dataset_of_view_dicts, epochs=1)
    """

    def __init__(self, encoder, head=None, loss="ntxent", temperature=0.5, margin=0.0,
                 beta=0.0, normalize=True, norm_eps=1e-4, gather_fn=None, probe=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.head = head
        self.loss_name = loss
        self.temperature = float(temperature)
        self.margin = float(margin)
        self.beta = float(beta)
        self.normalize = normalize
        self.norm_eps = norm_eps
        self.gather_fn = gather_fn or local_candidates
        self.probe = probe
        self._loss_fn = None
        self._trackers = {name: keras.metrics.Mean(name=name) for name in
                          ("loss", "r_pos", "r_neg", "contrastive_acc")}
        if probe is not None:
            self._trackers["probe_loss"] = keras.metrics.Mean(name="probe_loss")
            self._trackers["probe_acc"] = keras.metrics.Mean(name="probe_acc")

    @property
    def metrics(self):
        return list(self._trackers.values())

    def call(self, x, training=False):
        """Normalised embedding. x: [B, ...] (or a batch dict: its ``view1``) -> [B, D]."""
        if isinstance(x, dict):
            # Keras builds a model under a tf.distribute strategy by calling it on one
            # (symbolic) training batch before the first step.
            x = x["view1"]
        return self.embed(x, training=training)

    def embed(self, x, training=False, return_representation=False):
        h = self.encoder(x, training=training)
        p = self.head(h, training=training) if self.head is not None else h
        if self.normalize:
            p = p / (tf.norm(p, axis=-1, keepdims=True) + self.norm_eps)
        return (p, h) if return_representation else p

    def _get_loss_fn(self, dim):
        if self._loss_fn is None:
            # Batch means (nce_batch) are global-batch means when running on replicas.
            self._loss_fn = losses.get_loss_fn(self.loss_name, self.temperature,
                                               self.margin, self.beta, dim=dim,
                                               mean_fn=distribute.cross_replica_mean)
        return self._loss_fn

    def contrastive_terms(self, data, training):
        """Embeds all views in one batch and returns the per-anchor loss and distances.

        Returns dict: ``per_anchor`` [A], ``r_pos`` [A], ``r_neg`` [A, H], ``h1`` [B, R]
        (representation of view 1), with A = B (explicit negatives) or 2B (in-batch).
        """
        x1, x2 = data["view1"], data["view2"]
        b = tf.shape(x1)[0]
        negs = data.get("negatives")
        parts = [x1, x2]
        if negs is not None:
            neg_shape = tf.shape(negs)
            parts.append(tf.reshape(negs, tf.concat([[-1], neg_shape[2:]], axis=0)))
        z, h = self.embed(tf.concat(parts, axis=0), training=training,
                          return_representation=True)
        z1, z2 = z[:b], z[b:2 * b]
        if negs is not None:
            zn = tf.reshape(z[2 * b:], [b, neg_shape[1], -1])
            r_pos, r_neg = losses.explicit_distances(z1, z2, zn)
        else:
            z1_all, z2_all, offset = self.gather_fn(z1, z2)
            r_pos, r_neg = losses.in_batch_distances(z1, z2, z1_all, z2_all, offset)
        per_anchor = self._get_loss_fn(z.shape[-1])(r_pos, r_neg)
        return {"per_anchor": per_anchor, "r_pos": r_pos, "r_neg": r_neg, "h1": h[:b]}

    def _step(self, data, training):
        terms = self.contrastive_terms(data, training)
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        # Per-replica share of the global mean: gradients summed over replicas then equal
        # the single-device gradient of the global batch.
        n_anchor = tf.cast(tf.shape(terms["per_anchor"])[0] * replicas, tf.float32)
        loss = tf.reduce_sum(terms["per_anchor"]) / n_anchor
        total = loss
        if self.losses:
            total += tf.add_n([tf.cast(l, tf.float32) for l in self.losses]) / replicas
        logs = {"loss": loss, "r_pos": tf.reduce_mean(terms["r_pos"]),
                "r_neg": tf.reduce_mean(terms["r_neg"]),
                "contrastive_acc": tf.reduce_mean(tf.cast(
                    terms["r_pos"] < tf.reduce_min(terms["r_neg"], axis=1), tf.float32))}
        if self.probe is not None and "label" in data:
            logits = tf.cast(self.probe(tf.stop_gradient(terms["h1"]), training=training),
                             tf.float32)
            labels = tf.cast(data["label"], tf.int32)
            # Label -1 marks unlabelled examples (e.g. STL-10's unlabeled split): they
            # take no part in the probe's loss or accuracy.
            valid = tf.cast(labels >= 0, tf.float32)
            n_valid = tf.maximum(tf.reduce_sum(valid), 1.0)
            probe_loss = tf.reduce_sum(valid * tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.maximum(labels, 0), logits=logits)) / n_valid
            total += probe_loss / replicas
            logs["probe_loss"] = probe_loss
            logs["probe_acc"] = tf.reduce_sum(valid * tf.cast(
                tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels),
                tf.float32)) / n_valid
        return total, logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy Keras builds the model from one batch, which it first
        # strategy.reduce()s; MultiWorkerMirroredStrategy cannot reduce a dict of per-replica
        # tensors. One replica's batch gives the same shapes without a collective.
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0],
                    next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            total, logs = self._step(data, training=True)
            scaled = self.optimizer.scale_loss(total)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return self._update_metrics(logs)

    def test_step(self, data):
        _, logs = self._step(data, training=False)
        return self._update_metrics(logs)

    def _update_metrics(self, logs):
        for name, value in logs.items():
            self._trackers[name].update_state(value)
        results = {name: t.result() for name, t in self._trackers.items()}
        strategy = self.distribute_strategy
        if (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                and strategy.extended._in_multi_worker_mode()):
            # Keras reduces multi-worker step outputs with reduce(MEAN, axis=0), which
            # fails on scalars (tensorflow/tensorflow#72388); [1] reduces to a scalar.
            results = {name: tf.reshape(v, [1]) for name, v in results.items()}
        return results
