"""Scale-out on tf.distribute: strategies, the run's setup and per-replica input.

Everything here runs on TensorFlow's own engine; nothing is home-made:

* :func:`make_strategy` builds ``default | mirrored | multi_worker | tpu`` strategies and
  turns every setup mistake into a one-line :class:`~dualssl_tf.config.ConfigError`.
* :func:`setup` makes a run's strategy, dtype policy, seeds and op determinism.
* :func:`distributed_dataset` feeds each replica its own ``global / replicas`` batch through
  ``strategy.distribute_datasets_from_function``, one input pipeline per host.

What a train step computes across replicas (global-batch statistics, cross-replica
negatives, why the update equals the single-device update on the global batch) is in
:mod:`dualssl_tf.cross_replica`, below ``run/`` so that methods and tasks import it; the Keras
internals shim is :mod:`dualssl_tf.keras_internals`.
"""

import os
import socket

import keras
import tensorflow as tf

from dualssl_tf.config import STRATEGIES, check_tf_config
from dualssl_tf.options import ConfigError


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


def distributed_dataset(strategy, global_batch_size, make_data):
    """Per-replica input: one pipeline per host, each replica gets ``global / R`` pairs.

    Args:
      strategy: the tf.distribute strategy.
      global_batch_size: pairs per step over all replicas (``--batch_size``).
      make_data: ``(per_replica_batch_size, input_context) -> tf.data.Dataset`` of
        endless per-replica batch dicts (the :class:`~dualssl_tf.tasks.Task` contract). It must
        draw a different stream per ``input_context.input_pipeline_id``
        (see :func:`dualssl_tf.cross_replica.replica_seed`); the replicas of one host take
        consecutive batches.
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
