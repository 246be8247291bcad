"""Momentum contrast: MoCo v2 (a queue of keys) and MoCo v3 (in-batch keys, a predictor).

Both train a query network (encoder, projector = ``build_head``'s, by default the task's
``--proj_*`` head; MoCo v3 adds a predictor) against the keys of a momentum ("key") copy of
the encoder and projector that takes no gradient and moves by the moving average of
:mod:`dualssl_tf.methods.momentum` (the cosine schedule from ``base_momentum`` to
``final_momentum``; equal values: MoCo's constant momentum). Queries and keys are
L2-normalised in float32 (under mixed precision too), and the loss is InfoNCE with
temperature tau:

* :class:`MoCoV2Method` (He et al. 2020, "Momentum Contrast"; Chen et al. 2020, "Improved
  baselines", MoCo v2): the positive of the query ``q`` of view 1 is the key ``k`` of view
  2, the negatives are the K keys of earlier batches held in a queue ``[K, D]``:
  ``l = -log(exp(q.k / tau) / (exp(q.k / tau) + sum_j exp(q.queue_j / tau)))``
  (:func:`queue_infonce`). After the optimizer step the global batch's keys (gathered from
  every replica, so every replica holds the same queue) replace the oldest K entries at
  the pointer, which moves by the global batch modulo K (K must be a multiple of it).
  ``symmetric=True`` is solo-learn's mocov2plus: both view orders, averaged, each view's
  keys in their own queue (``queue[v]`` holds keys of view v + 1; the query of view 1 is
  contrasted with the queue of view 2's keys, as its positive). The queue and pointer are
  non-trainable variables of the model: checkpointed, resumed bit-identically. It starts
  as random unit vectors (as MoCo's code).
* :class:`MoCoV3Method` (Chen, Xie & He 2021): no queue; the query ``q`` (the predictor on
  the projection) of view 1 is contrasted with the keys of view 2 of the whole global batch
  (gathered from every replica; the positive of row i of replica r is key ``r B + i``),
  symmetric (the two orders summed), and each term is scaled by ``2 tau`` as the official
  code does (:func:`batch_infonce`).

Each view passes the networks on its own (BatchNorm statistics per view, as the peers'
code); the key networks run in training mode (batch statistics), their weights moved only
by the average. There is no shuffled BatchNorm (MoCo v1/v2's trick against BN leaking the
positive through batch statistics): on replicas BatchNorm is synchronised (``--sync_bn``,
on by default with several replicas), so the update equals one device's on the global
batch, as in solo-learn's runs.

Logs: ``loss``, ``pos_cos`` (mean cosine of each query and its positive key, what the loss
pulls together), ``contrastive_acc`` (fraction of queries whose positive key has a strictly
higher logit than every negative).
"""

import keras
import tensorflow as tf

from dualssl_tf import cross_replica
from dualssl_tf.methods.base import SSLMethod
from dualssl_tf.methods.momentum import MomentumTargets, momentum_copies
from dualssl_tf.models import heads


def queue_infonce(q, k, queue, temperature):
    """MoCo's InfoNCE of queries against their key and a queue of negatives.

    Args:
      q, k: [B, D] unit queries and their positive keys (float32).
      queue: [K, D] unit negative keys.
      temperature: tau.
    Returns:
      ``(loss [B], correct [B])``: per-query cross-entropy of the logits
      ``[q.k, q.queue^T] / tau`` [B, 1 + K] with the positive as the label, and whether the
      positive's logit is strictly the largest (1.0 / 0.0).
    """
    pos = tf.reduce_sum(q * k, axis=-1, keepdims=True) / temperature        # [B, 1]
    neg = tf.matmul(q, queue, transpose_b=True) / temperature               # [B, K]
    logits = tf.concat([pos, neg], axis=1)
    loss = tf.reduce_logsumexp(logits, axis=1) - pos[:, 0]
    correct = tf.cast(pos[:, 0] > tf.reduce_max(neg, axis=1), tf.float32)
    return loss, correct


def batch_infonce(q, k_all, offset, temperature):
    """MoCo v3's InfoNCE of this replica's queries against the global batch's keys.

    Args:
      q: [B, D] unit queries of this replica.
      k_all: [G, D] unit keys of the global batch (every replica's, in replica order).
      offset: row in ``k_all`` of this replica's first key (``replica_id * B``).
      temperature: tau.
    Returns:
      ``(loss [B], correct [B])``: ``2 tau`` x the cross-entropy of ``q k_all^T / tau``
      [B, G] with label ``offset + i`` for row i (the official code's scaling), and whether
      the positive's logit is strictly the largest.
    """
    logits = tf.matmul(q, k_all, transpose_b=True) / temperature           # [B, G]
    labels = offset + tf.range(tf.shape(q)[0])
    pos = tf.gather(logits, labels, axis=1, batch_dims=1)
    loss = (tf.reduce_logsumexp(logits, axis=1) - pos) * (2.0 * temperature)
    others = tf.where(tf.one_hot(labels, tf.shape(logits)[1]) > 0, -float("inf"), logits)
    correct = tf.cast(pos > tf.reduce_max(others, axis=1), tf.float32)
    return loss, correct


def _unit(x):
    """float32 and L2-normalised along the last axis: ``x / max(||x||, 1e-6)``, the peers'
    ``F.normalize`` (whose floor is 1e-12; only a vanishing vector tells them apart)."""
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)


class MomentumContrastMethod(MomentumTargets, SSLMethod):
    """Query network + momentum key network (base of :class:`MoCoV2Method` and
    :class:`MoCoV3Method`; see the module docstring).

    Args:
      encoder: Keras model ``x -> representation [B, R]`` (built).
      head: optional projector ``[B, R] -> [B, D]``; identity when None.
      temperature: tau.
      base_momentum, final_momentum, total_steps: the key networks' momentum schedule
        (:func:`~dualssl_tf.methods.momentum.target_momentum`) over the run's
        ``total_steps`` optimizer steps.
      input_shape: one example's shape (default: the encoder's input).
      pred_hidden_dim: a predictor on the projection (Linear-BN-ReLU-Linear of this hidden
        width, MoCo v3's) or None (the query is the projection).
      sync_bn: cross-replica BatchNorm in the predictor.
      probe: optional online probe on ``stop_gradient(representation)`` of view 1.
    """

    metric_names = ("loss", "pos_cos", "contrastive_acc")

    def __init__(self, encoder, head=None, temperature=0.2, base_momentum=0.99,
                 final_momentum=1.0, total_steps=1, input_shape=None, pred_hidden_dim=None,
                 sync_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.input_shape_ = self.example_shape(encoder, input_shape)
        h = encoder(tf.zeros([1, *self.input_shape_]), training=False)
        z = head(h, training=False) if head is not None else h
        self.projection_dim = int(z.shape[-1])
        # Assignment order = variable order of the checkpoints: the query networks, the
        # predictor (MoCo v3), the key networks, then the method's own state (the queue).
        self.encoder = encoder
        self.head = head
        self.predictor = (None if pred_hidden_dim is None else heads.projection_head(
            self.projection_dim, int(pred_hidden_dim), self.projection_dim, 2, sync_bn,
            name="predictor"))
        self.key_encoder, self.key_head = momentum_copies(encoder, head, self.input_shape_,
                                                          h.shape[1:])
        self.temperature = float(temperature)
        self.base_momentum = float(base_momentum)
        self.final_momentum = float(final_momentum)
        self.total_steps = max(int(total_steps), 1)

    @classmethod
    def from_options(cls, cfg, task, gather_fn=None):
        """The method of a run: its options section on ``task``'s networks; the momentum
        schedule spans ``--epochs`` x the task's steps per epoch."""
        o = getattr(cfg, cls.section)
        return cls(task.encoder, task.head, temperature=o.temperature,
                   base_momentum=o.base_momentum, final_momentum=o.final_momentum,
                   total_steps=cfg.optim.epochs * task.steps_per_epoch,
                   input_shape=task.input_shape, probe=task.probe, name=cls.section,
                   **cls.method_options(cfg, o))

    @staticmethod
    def method_options(cfg, o):
        """The constructor arguments of a subclass's own options."""
        return {}

    # -- networks -----------------------------------------------------------------------

    def momentum_networks(self):
        return [(self.key_encoder, self.encoder), (self.key_head, self.head)]

    def embed(self, x, training=False):
        """Normalised online projection (what ``model(x)`` returns). x: [B, ...] -> [B, D]
        float32."""
        h = self.encoder(x, training=training)
        return _unit(self.head(h, training=training) if self.head is not None else h)

    def _query(self, x, training):
        h = self.encoder(x, training=training)
        z = self.head(h, training=training) if self.head is not None else h
        q = self.predictor(z, training=training) if self.predictor is not None else z
        return h, _unit(q)

    def _key(self, x, training):
        k = self.key_encoder(x, training=training)
        if self.key_head is not None:
            k = self.key_head(k, training=training)
        return _unit(tf.stop_gradient(k))

    def views_used(self):
        """Which views give queries and keys: ``(query views, key views)``."""
        return (1, 2), (1, 2)

    def forward(self, batch, training):
        """Queries and keys of the views. Returns dict: ``h1`` [B, R] representation of
        view 1 (for the probe); ``q1``, ``q2`` unit queries, ``k1``, ``k2`` unit keys
        [B, D] float32 (only those :meth:`views_used` names)."""
        out = {}
        query_views, key_views = self.views_used()
        for i, x in ((1, batch["view1"]), (2, batch["view2"])):
            if i in query_views:
                h, out[f"q{i}"] = self._query(x, training)
                if i == 1:
                    out["h1"] = h
            if i in key_views:
                out[f"k{i}"] = self._key(x, training)
        return out

    def regularization_loss(self):
        """The query networks' regularisation only (the key networks take no gradient)."""
        nets = [n for n in (self.encoder, self.head, self.predictor) if n is not None]
        terms = [tf.cast(l, tf.float32) for n in nets for l in n.losses]
        if not terms:
            return None
        return tf.add_n(terms) / cross_replica.num_replicas()

    def after_apply(self, outputs):
        self.update_targets(tf.cast(self.optimizer.iterations, tf.int64) - 1)


class MoCoV2Method(MomentumContrastMethod):
    """MoCo v2: InfoNCE against a queue of ``queue_size`` keys (see the module docstring).

    Args (besides :class:`MomentumContrastMethod`'s):
      queue_size: K; a multiple of the global batch (each step enqueues all its keys).
      symmetric: both view orders, one queue per view (solo-learn's mocov2plus).

    Example:
      >>> model = MoCoV2Method(encoder, head, queue_size=4096, total_steps=1000)
      >>> model.compile(optimizer="sgd")
      >>> model.fit(dataset_of_view_dicts, epochs=1, steps_per_epoch=1000)
    """

    section = "mocov2"

    def __init__(self, encoder, head=None, queue_size=65536, symmetric=False,
                 temperature=0.2, base_momentum=0.999, final_momentum=0.999, probe=None,
                 **kwargs):
        super().__init__(encoder, head, temperature=temperature, base_momentum=base_momentum,
                         final_momentum=final_momentum, **kwargs)
        self.queue_size = int(queue_size)
        self.symmetric = bool(symmetric)
        views = 2 if self.symmetric else 1
        # Random unit keys to start (MoCo's code); normalised right after drawing.
        self.queue = self.add_weight(name="queue", shape=(views, self.queue_size,
                                                          self.projection_dim),
                                     initializer=keras.initializers.RandomNormal(),
                                     trainable=False)
        self.queue.assign(tf.math.l2_normalize(tf.convert_to_tensor(self.queue), axis=-1))
        self.queue_ptr = self.add_weight(name="queue_ptr", shape=(), dtype="int64",
                                         initializer="zeros", trainable=False)
        self.attach_probe(probe)

    @staticmethod
    def method_options(cfg, o):
        return {"queue_size": o.queue_size, "symmetric": o.symmetric}

    def views_used(self):
        # MoCo v2: the query of view 1 and the key of view 2 only.
        return ((1, 2), (1, 2)) if self.symmetric else ((1,), (2,))

    def per_example_loss(self, batch, outputs):
        o = outputs
        queue = tf.stop_gradient(tf.convert_to_tensor(self.queue))
        if self.symmetric:
            l1, c1 = queue_infonce(o["q1"], o["k2"], queue[1], self.temperature)
            l2, c2 = queue_infonce(o["q2"], o["k1"], queue[0], self.temperature)
            cos = 0.5 * (tf.reduce_sum(o["q1"] * o["k2"], -1)
                         + tf.reduce_sum(o["q2"] * o["k1"], -1))
            return 0.5 * (l1 + l2), {"pos_cos": tf.reduce_mean(cos),
                                     "contrastive_acc": tf.reduce_mean(0.5 * (c1 + c2))}
        loss, correct = queue_infonce(o["q1"], o["k2"], queue[0], self.temperature)
        return loss, {"pos_cos": tf.reduce_mean(tf.reduce_sum(o["q1"] * o["k2"], -1)),
                      "contrastive_acc": tf.reduce_mean(correct)}

    def enqueue(self, keys):
        """Writes the keys ``[V, n, D]`` of this replica (V = views in the queue, each
        view's keys for its own queue) gathered over the replicas ([V, G, D], G = the
        global batch) at the pointer and moves it by G modulo K."""
        keys = cross_replica.global_gather(keys, axis=1)
        g = keys.shape[1]
        if g is not None and self.queue_size % g:
            raise ValueError(f"queue_size={self.queue_size} is not a multiple of the global "
                             f"batch {g}")
        ptr = tf.convert_to_tensor(self.queue_ptr)
        g = tf.shape(keys, out_type=tf.int64)[1]
        rows = ptr + tf.range(g, dtype=tf.int64)                                 # [G]
        views = tf.shape(keys, out_type=tf.int64)[0]
        index = tf.stack(tf.meshgrid(tf.range(views, dtype=tf.int64), rows, indexing="ij"),
                         axis=-1)                                                # [V, G, 2]
        self.queue.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(self.queue),
                                                      index, keys))
        self.queue_ptr.assign(tf.math.floormod(ptr + g, self.queue_size))

    def after_apply(self, outputs):
        super().after_apply(outputs)
        keys = [outputs["k1"], outputs["k2"]] if self.symmetric else [outputs["k2"]]
        self.enqueue(tf.stack(keys))


class MoCoV3Method(MomentumContrastMethod):
    """MoCo v3: a predictor on the query projection and symmetric in-batch InfoNCE
    against the global batch's keys, x ``2 tau`` (see the module docstring).

    Args (besides :class:`MomentumContrastMethod`'s):
      pred_hidden_dim: the predictor's hidden width (Linear-BN-ReLU-Linear, as the
        official code's and solo-learn's ResNet predictor).
      sync_bn: cross-replica BatchNorm in the predictor.
    """

    section = "mocov3"

    def __init__(self, encoder, head=None, pred_hidden_dim=4096, sync_bn=False,
                 temperature=0.2, base_momentum=0.99, final_momentum=1.0, probe=None,
                 **kwargs):
        super().__init__(encoder, head, temperature=temperature, base_momentum=base_momentum,
                         final_momentum=final_momentum, pred_hidden_dim=pred_hidden_dim,
                         sync_bn=sync_bn, **kwargs)
        self.attach_probe(probe)

    @staticmethod
    def method_options(cfg, o):
        return {"pred_hidden_dim": o.pred_hidden_dim,
                "sync_bn": cfg.run.sync_bn or cross_replica.use_sync_bn()}

    def per_example_loss(self, batch, outputs):
        o = outputs
        ctx = tf.distribute.get_replica_context()
        offset = 0
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            offset = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * tf.shape(o["q1"])[0]
        k1_all, k2_all = cross_replica.global_gather([o["k1"], o["k2"]])
        l1, c1 = batch_infonce(o["q1"], k2_all, offset, self.temperature)
        l2, c2 = batch_infonce(o["q2"], k1_all, offset, self.temperature)
        cos = 0.5 * (tf.reduce_sum(o["q1"] * o["k2"], -1) + tf.reduce_sum(o["q2"] * o["k1"], -1))
        return l1 + l2, {"pos_cos": tf.reduce_mean(cos),
                         "contrastive_acc": tf.reduce_mean(0.5 * (c1 + c2))}
