"""Scale-out on tf.distribute: strategies, cross-replica negatives and per-replica input.

Everything here runs on TensorFlow's own engine; nothing is home-made:

* :func:`make_strategy` builds ``default | mirrored | multi_worker | tpu`` strategies and
  turns every setup mistake into a one-line :class:`~dualssl_tf.config.ConfigError`.
* :func:`cross_replica_candidates` is the ``ContrastiveMethod(gather_fn=...)`` hook: it gathers both
  views' embeddings from all replicas with the replica context's ``all_gather``, so every
  in-batch loss sees the *global* batch as negatives.
* :func:`global_sum`, :func:`global_mean`, :func:`global_gather` (and :func:`replica_sum`
  for partial statistics) give a method the sums, means and rows of the *global* batch
  (batch-level losses, ``nce_batch``'s means via :func:`cross_replica_mean`, DirectPred's
  ``E[z z^T]``); they are the plain reductions on one device.
* :func:`distributed_dataset` feeds each replica its own ``global / replicas`` batch through
  ``strategy.distribute_datasets_from_function``, one input pipeline per host.

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

import os
import socket

import keras
import tensorflow as tf

from dualssl_tf.config import STRATEGIES, check_tf_config
from dualssl_tf.options import ConfigError


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
    ``sync_bn=distribute.use_sync_bn()`` to ``BatchNormalization(synchronized=...)``.
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


def make_strategy(name, tpu=None, num_gpus=None):
    """Builds the tf.distribute strategy named by ``--strategy``.

    Args:
      name: ``default`` (one device, no distribution), ``mirrored`` (all, or
        ``num_gpus``, local GPUs; without GPUs, the local logical CPU devices),
        ``multi_worker`` (MultiWorkerMirroredStrategy; the cluster comes from the
        ``TF_CONFIG`` environment variable) or ``tpu`` (TPUStrategy on ``tpu``).
      tpu: TPU name, ``grpc://host:port`` address or ``local`` (TPU VM); tpu only.
      num_gpus: for ``mirrored``: how many local GPUs to use; None or 0 = all.
    Returns:
      A ``tf.distribute.Strategy``.
    Raises:
      ConfigError naming the flag to fix (``strategy``, ``tpu``, ``num_gpus``).
    """
    if name not in STRATEGIES:
        raise ConfigError("strategy", f"got {name!r}; allowed: {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        key = (name, tuple(_mirrored_devices(num_gpus)))
    elif name == "multi_worker":
        raw = os.environ.get("TF_CONFIG", "")
        check_tf_config(raw)
        key = (name, raw)
    else:
        key = (name, tpu)
    # One strategy per setting and process: a second strategy over the same devices
    # reuses the same collective keys, and its all-gathers/all-reduces would collide
    # with the first one's (e.g. trainer.run called twice in a notebook).
    if key not in _STRATEGY_CACHE:
        if name == "mirrored":
            _STRATEGY_CACHE[key] = tf.distribute.MirroredStrategy(list(key[1]))
        elif name == "multi_worker":
            _STRATEGY_CACHE[key] = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            _STRATEGY_CACHE[key] = _tpu_strategy(tpu)
    return _STRATEGY_CACHE[key]


_STRATEGY_CACHE = {}


def _mirrored_devices(num_gpus):
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if gpus:
        if num_gpus and num_gpus > len(gpus):
            raise ConfigError("num_gpus", f"asked for {num_gpus} GPUs but this machine has "
                              f"{len(gpus)}; use --num_gpus={len(gpus)} or fewer")
        return gpus[:num_gpus] if num_gpus else gpus
    if num_gpus:
        raise ConfigError("num_gpus", f"asked for {num_gpus} GPUs but TensorFlow sees none; "
                          "drop --num_gpus (to mirror the CPU devices) or use a GPU machine")
    # No GPU: mirror the logical CPU devices (one unless the CPU was split, as in tests).
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _tpu_strategy(tpu, timeout=10.0):
    if not tpu:
        raise ConfigError("tpu", "--strategy=tpu needs --tpu=NAME (Cloud TPU name), "
                          "--tpu=grpc://HOST:8470 or --tpu=local (on a TPU VM)")
    if tpu.startswith("grpc://"):
        # connect_to_cluster blocks for minutes on a dead address; probe it first.
        host, _, port = tpu[len("grpc://"):].rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except (OSError, ValueError) as e:
            raise ConfigError("tpu", f"cannot reach TPU at {tpu} ({e}); check the address "
                              "and that the TPU is running") from None
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except Exception as e:  # resolver/URL/gRPC errors have no common base class
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("tpu", f"cannot reach TPU {tpu!r} ({first}); check --tpu and "
                          "that the TPU exists in this project/zone") from None


def per_replica_batch_size(global_batch_size, replicas):
    """``global / replicas``; ConfigError naming --batch_size when not divisible."""
    if global_batch_size % replicas:
        lo = global_batch_size // replicas * replicas
        raise ConfigError("batch_size", f"global batch {global_batch_size} is not divisible "
                          f"by the {replicas} replicas; use a multiple of {replicas} "
                          f"(e.g. {max(lo, replicas)} or {lo + replicas})")
    return global_batch_size // replicas


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


def distributed_dataset(strategy, global_batch_size, make_data):
    """Per-replica input: one pipeline per host, each replica gets ``global / R`` pairs.

    Args:
      strategy: the tf.distribute strategy.
      global_batch_size: pairs per step over all replicas (``--batch_size``).
      make_data: ``(per_replica_batch_size, input_context) -> tf.data.Dataset`` of
        endless per-replica batch dicts (the :class:`~dualssl_tf.tasks.Task` contract). It must
        draw a different stream per ``input_context.input_pipeline_id``
        (see :func:`replica_seed`); the replicas of one host take consecutive batches.
    Returns:
      A ``tf.distribute.DistributedDataset`` for ``Model.fit``.
    Raises:
      ConfigError naming --batch_size when it is not divisible by the replicas.
    """
    per_replica = per_replica_batch_size(global_batch_size, strategy.num_replicas_in_sync)

    def dataset_fn(input_context):
        return make_data(per_replica, input_context)

    return strategy.distribute_datasets_from_function(dataset_fn)


def train_input(strategy, global_batch_size, task, transform=None):
    """The training input ``Model.fit`` gets under ``strategy``.

    One replica: ``task.make_data(global_batch_size)`` (global batches, one pipeline).
    Several replicas: :func:`distributed_dataset` over ``task.make_data`` (per-host
    pipelines, per-replica batches) when ``task.per_replica_data``, else the global batches
    split across replicas by ``strategy.experimental_distribute_dataset``.

    Args:
      strategy: the tf.distribute strategy.
      global_batch_size: ``--batch_size``; must be divisible by the replicas.
      task: a :class:`~dualssl_tf.tasks.Task`.
      transform: optional ``tf.data.Dataset -> tf.data.Dataset`` applied to every pipeline
        (e.g. dropping explicit negatives).
    Raises:
      ConfigError naming --batch_size when it is not divisible by the replicas.
    """
    transform = transform or (lambda ds: ds)
    replicas = strategy.num_replicas_in_sync
    per_replica_batch_size(global_batch_size, replicas)
    if replicas == 1:
        return transform(task.make_data(global_batch_size))
    if task.per_replica_data:
        return distributed_dataset(
            strategy, global_batch_size, lambda batch, ctx: transform(task.make_data(batch, ctx)))
    return strategy.experimental_distribute_dataset(
        transform(task.make_data(global_batch_size)))


def setup(cfg):
    """Strategy, dtype policy, seeds and op determinism of a run, in that order.

    Returns ``(strategy, cfg)``; cfg has ``--sync_bn`` set when there is more than one
    replica (BatchNorm statistics of the global batch). Raises ConfigError naming
    --jit_compile for XLA on several non-TPU replicas.
    """
    run = cfg.run
    strategy = make_strategy(run.strategy, run.tpu, run.num_gpus)
    replicas = strategy.num_replicas_in_sync
    if run.jit_compile and replicas > 1 and run.strategy != "tpu":
        raise ConfigError("jit_compile", f"Keras compiles the whole step for one device; "
                          f"with {replicas} {run.strategy} replicas use --jit_compile=false "
                          "(TPUs always compile with XLA)")
    if replicas > 1 and not run.sync_bn:
        cfg = cfg.replace(sync_bn=True)
    set_precision(run.mixed_precision)
    keras.utils.set_random_seed(run.seed)
    if run.deterministic and not run.jit_compile:
        # Keras refuses XLA under op determinism; an XLA-compiled CPU step is one fixed
        # program, repeatable on its own (two jit runs give byte-identical metrics.jsonl).
        tf.config.experimental.enable_op_determinism()
    return strategy, cfg


POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def set_precision(mixed_precision):
    """Sets Keras' global dtype policy for ``--mixed_precision`` (none|bfloat16|float16).

    Must run before the networks are built. Layers then compute in bfloat16/float16 with
    float32 variables; the methods compute their losses in float32. Returns the previous
    policy name, so callers can restore it.
    """
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(POLICIES[mixed_precision])
    return previous


# -- Keras internals (the one place this package relies on them) -----------------------------
#
# Keras 3.15 has no public hook for how ``fit`` builds a model under a strategy: it calls
# ``Model._maybe_symbolic_build(iterator=..., data_batch=...)``, which pulls one batch from
# its epoch iterator (yielding ``(begin_step, end_step, iterator)`` tuples) and
# ``strategy.reduce``s it. MultiWorkerMirroredStrategy cannot reduce a dict of per-replica
# tensors, so the methods override that method (below) to build from one replica's batch.
# ``tests/run/test_keras_internals.py::test_keras_internals_still_match`` fails loudly when a
# Keras upgrade changes the signature or the iterator's tuples this relies on.
KERAS_SYMBOLIC_BUILD = "keras.Model._maybe_symbolic_build(self, iterator=None, data_batch=None)"
# Nor a public list of every layer nested in a model (:func:`nested_layers`, for
# analysis.connections); ``tests/run/test_keras_internals.py::test_nested_layers_still_match``
# pins what it returns.
KERAS_FLATTEN_LAYERS = "keras.Layer._flatten_layers(self, include_self=True, recursive=True)"


class OneReplicaSymbolicBuild:
    """Mixin for ``keras.Model`` subclasses: ``fit`` under a strategy builds the model from
    one replica's batch instead of a cross-replica reduce (which multi-worker runs cannot
    do for dict batches). Shapes are the same; no collective runs."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0],
                    next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def nested_layers(layer):
    """Every layer inside ``layer`` (not itself), at any depth, each once, in Keras' own
    order (``Layer._flatten_layers``: the direct children in tracking order, each followed by
    its own sub-layers, those in reverse tracking order at every level below).

    No public Keras 3.15 API lists these: ``Model.layers`` has the direct children only (a
    Sequential's without its InputLayer), and the sub-layers of a plain ``keras.Layer``
    (e.g. ``LinearProbe``'s Dense) appear in no public attribute.
    """
    return list(layer._flatten_layers(include_self=False, recursive=True))


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
