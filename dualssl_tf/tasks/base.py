"""What a task is: the :class:`TaskSpec` it registers and the :class:`Task` it builds.

TensorFlow-free (the Task's fields hold TensorFlow objects, the class does not need them).
"""

import dataclasses
import importlib
from typing import Any, Callable, Optional


@dataclasses.dataclass
class Task:
    """What the trainer gets from a task for one run.

    make_data: ``(batch_size, input_context=None) -> tf.data.Dataset`` of endless batch
      dicts (``view1``, ``view2`` [b, ...]; optional ``negatives`` [b, H, ...], ``label``
      [b]), static shapes, resumed at the run's start step. ``input_context=None``: the
      single pipeline of global batches. With a ``tf.distribute.InputContext`` (several
      replicas, when ``per_replica_data``): per-replica batches of one input pipeline,
      each pipeline its own stream (``cross_replica.replica_seed``), the replicas of a host
      taking consecutive batches.
    steps_per_epoch: steps in one epoch.
    encoder: keras.Model ``x -> representation [B, R]`` (built).
    input_shape: shape of one example (no batch dim).
    head: optional keras.Model ``representation -> projection [B, D]``: the method's
      projector, made by the method's hook (``methods.build_head``, i.e.
      ``SSLMethod.build_head``) from ``head_spec``; the task calls it right after making
      the encoder, because creation order fixes the initial values (Keras draws each
      initializer's seed when the layer is made) and the checkpoint's variable order.
      None: no projector (the toy tasks' head-less networks).
    probe: optional online linear probe on the representation (batches carry labels).
    callbacks: the task's Keras callbacks (``initial_logs()`` ones add to epoch 0).
    metadata: JSON-able facts saved with the run (run.json, the model card).
    summarize: optional ``(initial_logs, final_logs) -> str`` printed at the end.
    per_replica_data: False when ``make_data`` has no per-replica form; several replicas
      then split its global batches.
    norm_eps: epsilon of the embedding normalisation ``f / (||f|| + eps)``.
    head_spec: the task's default projector (:class:`HeadSpec`, e.g. from ``--proj_*``),
      which a method's ``build_head`` takes or overrides; None on head-less tasks.
    device_views: optional ``(images, step, replica_id) -> (view1, view2)`` when
      ``make_data``'s batches carry un-augmented ``image`` [b, H, W, C] instead of the
      views (``--augment_on=device``): the method makes the views at the start of its
      compiled step (``SSLMethod.make_views``).

    Built inside the trainer's ``strategy.scope()``; models with BatchNorm take
    ``sync_bn=cfg.run.sync_bn``, set by the trainer when there is more than one replica.
    """
    make_data: Callable
    steps_per_epoch: int
    encoder: Any
    input_shape: tuple
    head: Any = None
    probe: Any = None
    callbacks: list = dataclasses.field(default_factory=list)
    metadata: dict = dataclasses.field(default_factory=dict)
    summarize: Optional[Callable] = None
    per_replica_data: bool = True
    norm_eps: float = 1e-4
    device_views: Optional[Callable] = None
    head_spec: Optional["HeadSpec"] = None


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """A projection MLP ``[B, R] -> [B, out_dim]`` (``models.heads.projection_head``):
    ``layers - 1`` blocks Dense(hidden_dim)-BN-ReLU (BN only with ``batch_norm``), then
    Dense(out_dim); ``layers == 0``: no projector (identity)."""
    hidden_dim: int
    out_dim: int
    layers: int
    batch_norm: bool = True


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A registered task: its option sections, validation and modules."""
    name: str
    sections: dict                 # TrainConfig attribute -> options Section class
    serves: Callable               # dataset name -> bool
    validate: Callable             # cfg -> None, raises ConfigError
    module: str                    # "dualssl_tf.tasks.<name>.task"
    analysis: Optional[str] = None  # "dualssl_tf.tasks.<name>.analysis"
    # The --dataset values it serves by name, with what each is: ((name, words), ...);
    # the one list of data set names (dualssl_tf.tasks.dataset_names).
    datasets: tuple = ()
    also: str = ""                 # what else it serves, in words (images: tfds names)

    def load(self):
        """The task's TensorFlow module (``build``, ``eval_data``)."""
        return importlib.import_module(self.module)

    def load_analysis(self):
        """The task's analysis hooks, or None when the analysis does not support it."""
        return importlib.import_module(self.analysis) if self.analysis else None
