"""Experiment builders: one per ``--dataset`` family, each turning a TrainConfig into data,
networks and dataset-specific callbacks (ARCHITECTURE.md)."""

import dataclasses
from typing import Any, Callable, Optional

from dualssl_tf.config import ConfigError, is_image_dataset


@dataclasses.dataclass
class Experiment:
    """What the trainer needs from a dataset family.

    train_data: endless tf.data of batch dicts (``view1``, ``view2``, optional
      ``negatives``, ``label``), static batch shapes.
    steps_per_epoch: steps in one epoch.
    encoder: keras.Model x -> representation [B, R] (already built).
    head: optional keras.Model representation -> projection [B, D].
    probe: optional online linear probe on the representation.
    callbacks: dataset-specific Keras callbacks; those with ``initial_logs()`` also
      contribute to the epoch-0 line of metrics.jsonl.
    input_shape: shape of one example (no batch dim), for export.
    norm_eps: epsilon of the embedding normalisation ``f / (||f|| + eps)``.
    metadata: JSON-able facts saved with the run (e.g. the HLTM polarities).
    summarize: optional ``(initial_logs, final_logs) -> str`` printed at the end.
    eval_data: optional ``(train, test)`` tf.data of (x, label) for probing.
    make_train_data: optional ``(per_replica_batch_size, input_context) -> tf.data`` of
      endless per-replica batches for ``strategy.distribute_datasets_from_function``
      (several replicas). It must give each input pipeline (host) its own stream, e.g. by
      ``distribute.replica_seed(seed, input_context)``; without it the trainer splits
      ``train_data``'s global batches across replicas.

    Builders run inside ``strategy.scope()``; models with BatchNorm take
    ``sync_bn=cfg.sync_bn``, which the trainer sets when there is more than one replica.
    """
    train_data: Any
    steps_per_epoch: int
    encoder: Any
    head: Any = None
    probe: Any = None
    callbacks: list = dataclasses.field(default_factory=list)
    input_shape: tuple = ()
    norm_eps: float = 1e-4
    metadata: dict = dataclasses.field(default_factory=dict)
    summarize: Optional[Callable] = None
    eval_data: Any = None
    make_train_data: Optional[Callable] = None


def _build_images(cfg, start_step=0):
    from dualssl_tf.experiments import images
    return images.build(cfg, start_step=start_step)


def _registry():
    # Imported lazily so that building one family never imports another's dependencies.
    from dualssl_tf.experiments import hltm, translation1d
    return {"hltm": hltm.build, "translation1d": translation1d.build,
            "generated_images": _build_images, "folder": _build_images}


def build(cfg, start_step=0):
    """Builds the Experiment for ``cfg.dataset``; start_step resumes the data stream.

    Names without a builder of their own are TensorFlow Datasets image data sets.
    """
    builders = _registry()
    if cfg.dataset in builders:
        return builders[cfg.dataset](cfg, start_step=start_step)
    if is_image_dataset(cfg.dataset):
        return _build_images(cfg, start_step=start_step)
    raise ConfigError("dataset", f"unknown dataset {cfg.dataset!r}; allowed: "
                      f"{', '.join(sorted(builders))} or a TensorFlow Datasets name")
