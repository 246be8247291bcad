"""Twin networks with a batch-level loss: the base of Barlow Twins and VICReg.

Both views pass the same encoder and the method's own projector, each view on its own
(BatchNorm statistics per view, as both papers' code does); the loss is a function of the
two projections' statistics over the global batch (:meth:`SSLMethod.batch_loss`), with no
predictor, no target network and no negatives.

The projector is the method's (:meth:`TwinMethod.build_head`, from its ``--<method>_proj_*``
options): ``proj_layers`` Dense layers with BatchNorm + ReLU after all but the last, the
papers' 3 x 8192 by default. Its BatchNorm is synchronised across replicas whenever the
run has more than one (the trainer's ``--sync_bn`` rule, as the papers' multi-GPU runs
convert it to SyncBatchNorm), so its statistics are the global batch's too and a step on R
replicas equals one device's on the global batch (tests/methods/test_twin_distributed.py).
"""

import tensorflow as tf

from dualssl_tf import losses
from dualssl_tf.methods.base import SSLMethod
from dualssl_tf.models import heads
from dualssl_tf import cross_replica


class TwinMethod(SSLMethod):
    """Encoder + projector on both views and a batch-level loss (see the module docstring).

    Subclasses set ``section`` (their options' attribute of the TrainConfig),
    ``metric_names`` and :meth:`batch_loss`, and map their options to constructor
    arguments in :meth:`method_options`.

    Args:
      encoder: Keras model ``x -> representation [B, R]``.
      head: the projector ``[B, R] -> [B, D]`` (:meth:`build_head`'s); identity when None.
      probe: optional online probe on ``stop_gradient(representation)`` of view 1.
    """

    section = None

    def __init__(self, encoder, head=None, probe=None, **kwargs):
        super().__init__(**kwargs)
        # Assignment order = checkpoint variable order: encoder, projector, probe.
        self.encoder = encoder
        self.head = head
        self.attach_probe(probe)

    @classmethod
    def build_head(cls, cfg, rep_dim, head_spec, sync_bn):
        """The method's projector from its own ``proj_*`` options (not the task's
        ``--proj_*``), on tasks that have a projector; None on the head-less toy tasks."""
        if head_spec is None:
            return None
        o = getattr(cfg, cls.section)
        return heads.projection_head(rep_dim, o.proj_hidden_dim, o.proj_dim, o.proj_layers,
                                     sync_bn)

    @classmethod
    def from_options(cls, cfg, task, gather_fn=None):
        """The method of a run on ``task``'s encoder and projector (``gather_fn``: unused,
        the global statistics go through :func:`cross_replica.replica_sum`)."""
        o = getattr(cfg, cls.section)
        return cls(task.encoder, task.head, probe=task.probe, name=cls.section,
                   **cls.method_options(o))

    @staticmethod
    def method_options(o):
        """The constructor arguments of a subclass's own options."""
        return {}

    def _project(self, x, training):
        h = self.encoder(x, training=training)
        z = self.head(h, training=training) if self.head is not None else h
        return h, z

    def forward(self, batch, training):
        """Returns dict: ``h1`` [B, R] view 1's representation (for the probe); ``z1``,
        ``z2`` [B, D] the views' projections (the compute dtype)."""
        h1, z1 = self._project(batch["view1"], training)
        _, z2 = self._project(batch["view2"], training)
        return {"h1": h1, "z1": z1, "z2": z2}

    def embed(self, x, training=False):
        """The projection of inputs x [B, ...] -> [B, D], float32 (not normalised: neither
        loss lives on the sphere)."""
        return tf.cast(self._project(x, training)[1], tf.float32)

    def pair_logs(self, outputs):
        """``pos_cos``: mean cosine of the two views' projections (every method logs it)."""
        return {"pos_cos": losses.mean_cosine(outputs["z1"], outputs["z2"])}

    @staticmethod
    def sum_fn(x):
        """A partial statistic summed over the replicas (identity on one device)."""
        return cross_replica.replica_sum(x)
