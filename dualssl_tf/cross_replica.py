"""The global batch inside a train step: cross-replica statistics, negatives and seeds.

A low module (TensorFlow only, nothing of the package): the methods and tasks use it, and
``dualssl_tf.run`` (strategies, input, the trainer) sits on top of it.

* :func:`cross_replica_candidates` is the ``ContrastiveMethod(gather_fn=...)`` hook: it gathers
  both views' embeddings from all replicas with the replica context's ``all_gather``, so every
  in-batch loss sees the *global* batch as negatives.
* :func:`global_sum`, :func:`global_mean`, :func:`global_gather` (and :func:`replica_sum`
  for partial statistics) give a method the sums, means and rows of the *global* batch
  (batch-level losses, ``nce_batch``'s means via :func:`cross_replica_mean`, DirectPred's
  ``E[z z^T]``); they are the plain reductions on one device.
* :func:`num_replicas`, :func:`use_sync_bn`: what the active strategy means for the networks
  built now; :func:`replica_seed`: each input pipeline's own seed;
  :func:`step_results`: a step's logs in the shape ``fit`` can reduce.

Why the update equals the single-device update on the global batch
-----------------------------------------------------------------
Let ``L = (1/A_g) sum_a l_a`` be the global-batch loss (``A_g`` anchors in all). Replica
``r`` computes ``L_r = (1/A_g) sum_{a in r} l_a`` (``SSLMethod.replica_loss`` divides its local sum
by ``local anchors * replicas``), so ``L = sum_r L_r``. ``ReplicaContext.all_gather`` is
differentiable: its gradient (TF 2.21, ``distribute_lib.ReplicaContext.all_gather``) is the
SUM all-reduce of the upstream gradients of all replicas, sliced back to the local rows.
So the gradient replica ``r`` sees at its own embeddings is ``dL/dz_r`` (its anchors' direct
terms plus every replica's use of ``z_r`` as a negative), and its variable gradient is
``dL/dz_r * dz_r/dtheta``. Keras' TF optimizer all-reduces gradients with SUM
(``keras/src/backend/tensorflow/optimizer.py: _all_reduce_sum_gradients``), which gives
``sum_r dL/dz_r * dz_r/dtheta = dL/dtheta``: the single-device gradient. Weight decay is
decoupled (applied once to the mirrored variable) and regularisation losses are divided by
the replica count (``SSLMethod.regularization_loss``), so both also match. ``all_reduce``
(synchronised BatchNorm,
:func:`cross_replica_mean`) has the same SUM-of-gradients rule, so those match too.
"""

import tensorflow as tf


def _replica_context():
    """The replica context, or None in cross-replica context."""
    return tf.distribute.get_replica_context()


def num_replicas():
    """Replicas in sync of the current strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def use_sync_bn():
    """Whether models built now should use synchronised BatchNorm.

    True when the strategy whose ``scope()`` is active has more than one replica: the
    trainer builds tasks inside ``strategy.scope()``, so builders pass
    ``sync_bn=cross_replica.use_sync_bn()`` to ``BatchNormalization(synchronized=...)``.
    """
    return num_replicas() > 1


def cross_replica_candidates(z1, z2):
    """Negatives from the whole global batch: the ``ContrastiveMethod(gather_fn=...)`` hook.

    Args:
      z1, z2: [N, D] this replica's embeddings of view 1 and view 2.
    Returns:
      ``(z1_all [R*N, D], z2_all [R*N, D], offset)``: both views of all R replicas in
      replica order (float32; with several replicas z1, z2 are returned as float32 too), and
      ``offset = replica_id * N``, the row of this replica's first pair
      in the global batch (the layout :func:`dualssl_tf.losses.in_batch_distances` expects).
      With one replica it returns ``(z1, z2, 0)``.

    The gather is differentiable (see the module docstring), so gradients flow back to the
    replica that produced each negative. Every replica must hold the same N (static,
    ``drop_remainder`` batches), which :func:`distributed_dataset` guarantees.
    """
    ctx = _replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return z1, z2, 0
    # The losses run in float32 anyway, and CPU/GPU collectives reject bfloat16.
    z1, z2 = tf.cast(z1, tf.float32), tf.cast(z2, tf.float32)
    z1_all, z2_all = global_gather([z1, z2])
    offset = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * tf.shape(z1)[0]
    return z1_all, z2_all, offset


# -- global-batch statistics ------------------------------------------------------------------
#
# Inside a train step (replica context) each replica holds its own rows of the global batch.
# These helpers give every replica the statistic of the global batch; with one replica (or
# outside any strategy) they are the plain TensorFlow reduction, op for op. They are
# differentiable: the gradient of a SUM all-reduce is the SUM all-reduce of the replicas'
# upstream gradients, so a loss L computed from them on every replica, divided by the replica
# count (``SSLMethod.batch_loss``'s scaling), gives each replica dL/d(its rows), and Keras' SUM
# of the variable gradients the single-device gradient. Every replica must hold the same
# number of rows (static, ``drop_remainder`` batches). CPU/GPU collectives reject bfloat16:
# cast half-precision tensors to float32 first.

def global_sum(x, axis=0):
    """``tf.reduce_sum(x, axis)`` over the global batch.

    x: [n, ...] this replica's n rows along ``axis`` (the batch axis) -> the sum over all
    replicas' rows, x's shape without ``axis``; ``axis=None``: the sum of every element on
    every replica (a scalar).
    """
    return replica_sum(tf.reduce_sum(x, axis=axis))


def global_mean(x, axis=0):
    """``tf.reduce_mean(x, axis)`` over the global batch (``axis=None``: every element on
    every replica, a scalar): :func:`global_sum` / (elements reduced x replicas)."""
    replicas = _replicas_in_sync()
    if replicas == 1:
        return tf.reduce_mean(x, axis=axis)
    count = tf.size(x) if axis is None else tf.shape(x)[axis]
    return global_sum(x, axis) / tf.cast(count * replicas, x.dtype)


def global_gather(x, axis=0):
    """All replicas' rows in replica order: x [n, ...] -> [R*n, ...] along ``axis``.

    ``x`` may be a list/tuple of tensors (one collective for all). Differentiable: each
    replica gets back the gradient its rows received on every replica.
    """
    ctx = _replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_gather(x, axis=axis)


def replica_sum(x):
    """``x`` (any shape: this replica's partial statistic, e.g. ``z^T z`` of its rows) summed
    elementwise over the replicas; ``x`` itself with one replica."""
    ctx = _replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def _replicas_in_sync():
    ctx = _replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync


def cross_replica_mean(x):
    """Mean of ``x`` over every element on every replica (equal-sized local tensors):
    ``global_mean(x, axis=None)``, x: any shape -> scalar. Used by batch-mean losses, whose
    value is not a sum of per-anchor terms (``nce_batch``)."""
    return global_mean(x, axis=None)


def replica_seed(seed, input_context):
    """Seed of one input pipeline: ``seed`` itself with one pipeline, else a distinct one.

    Folds ``input_context.input_pipeline_id`` into ``seed`` so each host draws different
    augmentations / samples; a single pipeline keeps ``seed`` so single-host runs reproduce
    single-device runs' data exactly. Returns a Python int.
    """
    if input_context is None or input_context.num_input_pipelines == 1:
        return int(seed)
    # 2**31 - 1 is prime: distinct pipeline ids give distinct seeds for any seed.
    return int((int(seed) * 1_000_003 + 7919 * (input_context.input_pipeline_id + 1))
               % (2 ** 31 - 1))


def num_workers(strategy):
    """Worker processes of ``strategy`` from its public cluster resolver (1 when none)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))


def step_results(strategy, results):
    """A train/test step's ``{name: scalar}`` in the shape ``fit`` can reduce.

    Keras reduces multi-worker step outputs with ``reduce(MEAN, axis=0)``, which fails on
    scalars (tensorflow/tensorflow#72388); a [1] tensor reduces to a scalar.
    """
    if (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and num_workers(strategy) > 1):
        return {name: tf.reshape(v, [1]) for name, v in results.items()}
    return results
