"""The method base class: one training step for every self-supervised method.

:class:`SSLMethod` is a ``keras.Model`` whose ``train_step`` reads as the method does::

    outputs = forward(batch)                  # the networks on the views
    per_example, logs = per_example_loss(batch, outputs)
    loss = sum(per_example) / (examples * replicas)   # this replica's share
    #   or: loss, logs = batch_loss(batch, outputs); loss = loss / replicas
    apply(gradient(scale(loss + regularisation)))     # the method's optimizer
    after_apply(outputs)                      # e.g. BYOL's moving-average target
    probe_step(batch, outputs)                # online probe, its own optimizer
    metrics                                   # global-batch values on every replica

A subclass implements :meth:`forward` and one of the two loss hooks: :meth:`per_example_loss`
(a loss that is a mean of per-example terms) or :meth:`batch_loss` (a loss of global-batch
statistics, e.g. Barlow Twins' cross-correlation or VICReg's variance, taken through
``cross_replica.global_sum / global_mean / global_gather``). Optionally :meth:`after_apply`,
:meth:`frozen_variables` (networks that take no gradient, e.g. a moving-average target),
:meth:`embed` (what ``model(x)`` returns for inputs) and :meth:`export_outputs`. Why
``per_example_loss`` and not ``keras.Model.compute_loss``: Keras'
``compute_loss(x, y, y_pred, sample_weight)`` is the supervised contract that ``fit``'s
default step calls; a self-supervised loss has no ``y``, and overriding it with another
signature would break that public method for callers who rely on it.

Why the per-replica share: Keras sums gradients over replicas, so dividing each replica's
sum by the global example count (or a global-batch loss by the replica count) makes the
update equal the single-device update on the global batch (docs/distributed.md and
:mod:`dualssl_tf.cross_replica`). What is logged is not that share: every log (``loss``
included) is the global batch's value, the same on 1, 2 or R replicas (:meth:`global_logs`).

The online probe (a classifier on ``stop_gradient(representation)``) is trained by its own
optimizer (Adam, no weight decay, no schedule, as in the keras-io SimCLR example): the
method's optimizer (LARS trust ratio, weight decay, warmup/cosine) never acts on it, and
its loss never enters the method's. Its variables and optimizer state are checkpointed
with the rest (:mod:`dualssl_tf.run.checkpoints`).
"""

import keras
import tensorflow as tf

from dualssl_tf import cross_replica, keras_internals
from dualssl_tf.models import heads


class SSLMethod(keras_internals.OneReplicaSymbolicBuild, keras_internals.ReplicaStepLoop,
                keras.Model):
    """Base of the self-supervised methods (see the module docstring).

    Batches are dicts: ``view1``, ``view2`` [B, ...]; optionally ``negatives`` [B, H, ...]
    and ``label`` [B] int (-1 = unlabelled; used by the online probe only). A batch may
    carry ``image`` [B, H, W, C] (un-augmented) instead of the views when
    :attr:`device_views` is set: :meth:`make_views` makes them first thing in the step,
    inside the compiled function, so every method gets device augmentation unchanged.

    Subclasses set ``metric_names`` (the logs of their loss hook, ``loss`` first), assign
    their networks in ``__init__`` and then call :meth:`attach_probe`.
    """

    metric_names = ("loss",)
    # Whether the method reads a batch's explicit ``negatives`` (the trainer drops them
    # from the data of a method that does not).
    uses_negatives = False
    # ``(images, step, replica_id) -> (view1, view2)`` (with local crops ``(view1, view2,
    # local_views)``) for batches that carry ``image`` (--augment_on=device; set by
    # ``methods.build`` from ``Task.device_views``).
    device_views = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.probe = None
        self.probe_optimizer = None
        self._trackers = {}

    @staticmethod
    def example_shape(encoder, input_shape=None):
        """One example's shape as a tuple of ints: ``input_shape``, else the functional
        ``encoder``'s input (ValueError for another encoder: pass the shape). For methods
        that build copies of their networks (a moving-average target, a teacher)."""
        if input_shape is None:
            try:
                input_shape = tuple(encoder.inputs[0].shape[1:])
            except (AttributeError, ValueError, TypeError):
                raise ValueError(f"input_shape: {encoder.name} is not a functional model; "
                                 "pass the shape of one example") from None
        return tuple(int(d) for d in input_shape)

    # -- views made in the step --------------------------------------------------------------

    def make_views(self, batch):
        """A batch with ``view1``, ``view2``: ``batch`` itself, or for a batch of
        un-augmented ``image`` the views :attr:`device_views` makes of it.

        The step is the optimizer's ``iterations`` (checkpointed, so a resumed run makes
        the views of the uninterrupted one) and the replica is this replica's id in the
        sync group (replicas draw different views). Runs inside ``train_step``, so the
        augmentation is part of the compiled (XLA) step and runs on the accelerator.
        """
        if not isinstance(batch, dict) or "image" not in batch or "view1" in batch:
            return batch
        if self.device_views is None:
            raise ValueError("the batch carries 'image' but this method has no "
                             "device_views to make its views (set by --augment_on=device)")
        ctx = tf.distribute.get_replica_context()
        replica = ctx.replica_id_in_sync_group if ctx is not None else 0
        step = self.optimizer.iterations if getattr(self, "optimizer", None) is not None else 0
        views = self.device_views(batch["image"], step, replica)
        out = {k: v for k, v in batch.items() if k != "image"}
        out.update(view1=views[0], view2=views[1])
        if len(views) > 2:  # multi-crop: the local crops [B, N, s, s, C]
            out["local_views"] = views[2]
        return out

    # -- what a method defines -------------------------------------------------------------

    def forward(self, batch, training):
        """The networks on the batch's views. Returns a dict; ``h1`` [B, R] (the
        representation of view 1) feeds the online probe."""
        raise NotImplementedError

    def per_example_loss(self, batch, outputs):
        """Returns ``(per_example [A], logs)``: the loss of each of the A examples (anchors)
        on this replica (the loss is their mean over the global batch), and scalar logs
        named in ``metric_names`` (``loss`` is added). Each log is a mean over this
        replica's examples or a global-batch value (:meth:`global_logs` averages it over
        the replicas). Define this or :meth:`batch_loss`."""
        raise NotImplementedError(f"{type(self).__name__} defines neither per_example_loss "
                                  "nor batch_loss")

    def batch_loss(self, batch, outputs):
        """Returns ``(loss, logs)``: the loss of the whole global batch as a float32 scalar
        (the same value on every replica: its batch statistics taken through
        ``cross_replica.global_sum / global_mean / global_gather``), and logs as in
        :meth:`per_example_loss`. For losses that are not means of per-example terms
        (Barlow Twins, VICReg). The base class gives the optimizer ``loss / replicas``
        (the gradients of the global statistics are summed back over the replicas, and
        Keras sums the replicas' gradients) and logs ``loss`` itself. A method that
        overrides this is never asked for :meth:`per_example_loss`."""
        raise NotImplementedError

    def uses_batch_loss(self):
        """Whether the method's loss hook is :meth:`batch_loss` (it overrides it)."""
        return type(self).batch_loss is not SSLMethod.batch_loss

    def embed(self, x, training=False):
        """What ``model(x)`` returns for a tensor of inputs x [B, ...]: the method's
        embedding [B, D]. Optional (nothing in training needs it)."""
        raise NotImplementedError(f"{type(self).__name__} has no embed(); call it on a "
                                  "batch dict (-> forward's outputs)")

    def call(self, x, training=False):
        """A batch dict -> :meth:`forward`'s outputs (its views made first); a tensor of
        inputs [B, ...] -> :meth:`embed`. Keras calls this once, symbolically, to build
        the model before ``fit`` under a distribution strategy (one device never calls
        it); training itself runs :meth:`train_step`."""
        if isinstance(x, dict):
            return self.forward(self.make_views(x), training=training)
        return self.embed(x, training=training)

    @classmethod
    def build_head(cls, cfg, rep_dim, head_spec, sync_bn):
        """The method's projector ``[B, rep_dim] -> [B, D]`` (a keras.Model), or None for
        none (identity); the task stores it as ``Task.head`` and ``from_options`` passes it
        on. The default is the task's ``head_spec`` (``--proj_*`` on the images task;
        None on the head-less toy tasks), as SimCLR, BYOL and SimSiam use; a method with
        its own projector (e.g. Barlow Twins' 3 x 8192) overrides this, reading its own
        options from ``cfg``. Called inside the strategy scope; ``sync_bn``: cross-replica
        BatchNorm."""
        if head_spec is None:
            return None
        return heads.projection_head(rep_dim, head_spec.hidden_dim, head_spec.out_dim,
                                     head_spec.layers, sync_bn,
                                     batch_norm=head_spec.batch_norm)

    def after_apply(self, outputs):
        """Runs after each optimizer step on every replica (e.g. a moving-average target);
        ``outputs``: this step's :meth:`forward` (computed before the step)."""

    def frozen_variables(self):
        """Trainable variables the method's optimizer must not update (e.g. BYOL's target,
        which moves only by its moving average); none by default."""
        return []

    def rate_group(self):
        """Variables the method's optimizer runs at another learning rate, as a
        :class:`~dualssl_tf.optim.rate_groups.RateGroup` (e.g. BYOL's predictor), or None
        (one rate for all; the default)."""
        return None

    def gradient_clip(self):
        """The norm (> 0) each variable's gradient is clipped to by the method's optimizer
        (:mod:`dualssl_tf.optim.clipping`, DINO's ``clip_gradients``), or 0 for none (the
        default); the trainer passes it to ``build_optimizer``."""
        return 0.0

    def export_outputs(self, intermediate_layers):
        """The ``intermediate_layers`` argument of the export: the task's taps (None, layer
        names or a callable) plus the method's own named outputs. A method without extra
        outputs returns its argument unchanged."""
        return intermediate_layers

    # -- the probe -------------------------------------------------------------------------

    def attach_probe(self, probe):
        """Sets the online probe (a Keras layer ``[B, R] -> [B, C]`` logits) or None."""
        self.probe = probe
        names = list(self.metric_names) + (["probe_loss", "probe_acc"] if probe is not None
                                           else [])
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}

    def compile(self, optimizer="sgd", probe_optimizer=None, **kwargs):
        """``keras.Model.compile`` plus the probe's own optimizer (default Adam 1e-3)."""
        super().compile(optimizer=optimizer, **kwargs)
        if self.probe is not None:
            self.probe_optimizer = (keras.optimizers.get(probe_optimizer) if probe_optimizer
                                    is not None else keras.optimizers.Adam(1e-3))

    def fit(self, *args, shuffle=False, **kwargs):
        """``keras.Model.fit`` with ``shuffle=False`` by default: the batches come from a
        tf.data pipeline that shuffles (and resumes) on its own; Keras would only warn
        that its default ``shuffle=True`` is ignored for a dataset."""
        return super().fit(*args, shuffle=shuffle, **kwargs)

    @property
    def method_variables(self):
        """The trainable variables of the method's optimizer: all but the probe's and the
        :meth:`frozen_variables`."""
        excluded = list(self.frozen_variables())
        if self.probe is not None:
            excluded += self.probe.trainable_variables
        if not excluded:
            return self.trainable_variables
        ids = {id(v) for v in excluded}
        return [v for v in self.trainable_variables if id(v) not in ids]

    def build_optimizers(self):
        """Creates both optimizers' state now (checkpoints know it from step 0)."""
        if not self.optimizer.built:
            self.optimizer.build(self.method_variables)
        if self.probe_optimizer is not None and not self.probe_optimizer.built:
            self.probe_optimizer.build(self.probe.trainable_variables)

    def probe_step(self, batch, outputs, training):
        """Trains (when ``training``) and scores the online probe; returns its logs."""
        if self.probe is None or "label" not in batch:
            return {}
        with tf.GradientTape() as tape:
            logits = tf.cast(self.probe(tf.stop_gradient(outputs["h1"]), training=training),
                             tf.float32)
            labels = tf.cast(batch["label"], tf.int32)
            # Label -1 marks unlabelled examples (e.g. STL-10's unlabeled split): they take
            # no part in the probe's loss or accuracy.
            valid = tf.cast(labels >= 0, tf.float32)
            # Labelled examples of the global batch (replicas may hold different numbers):
            # this replica's share of the loss is its sum over that count, as for the method.
            n_valid = tf.maximum(cross_replica.global_sum(valid), 1.0)
            probe_loss = tf.reduce_sum(valid * tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.maximum(labels, 0), logits=logits)) / n_valid
            scaled = self.probe_optimizer.scale_loss(probe_loss) if training else None
        if training:
            variables = self.probe.trainable_variables
            self.probe_optimizer.apply_gradients(zip(tape.gradient(scaled, variables),
                                                     variables))
        accuracy = tf.reduce_sum(valid * tf.cast(
            tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels),
            tf.float32)) / n_valid
        replicas = cross_replica.num_replicas()
        if replicas > 1:  # shares of the global values: replicas x share averages to them
            probe_loss, accuracy = probe_loss * replicas, accuracy * replicas
        return {"probe_loss": probe_loss, "probe_acc": accuracy}

    # -- the step --------------------------------------------------------------------------

    def replica_loss(self, batch, outputs):
        """``(share, logs)``: this replica's share of the global-batch loss (what the
        optimizer gets; the replicas' shares sum to the loss) and the logs, whose
        ``loss`` is this replica's mean (per_example_loss) or the global loss
        (batch_loss): its mean over the replicas is the global-batch loss."""
        replicas = cross_replica.num_replicas()
        if self.uses_batch_loss():
            loss, logs = self.batch_loss(batch, outputs)
            loss = tf.cast(loss, tf.float32)
            return (loss if replicas == 1 else loss / replicas), {"loss": loss, **logs}
        per_example, logs = self.per_example_loss(batch, outputs)
        total = tf.reduce_sum(per_example)
        share = total / tf.cast(tf.shape(per_example)[0] * replicas, tf.float32)
        mean = share if replicas == 1 else total / tf.cast(tf.shape(per_example)[0],
                                                            tf.float32)
        return share, {"loss": mean, **logs}

    def regularization_loss(self):
        """Layer regularisation losses divided by the replicas (summed back by Keras), or
        None when the networks have none (so the step's graph holds no dead addition)."""
        if not self.losses:
            return None
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        return tf.add_n([tf.cast(l, tf.float32) for l in self.losses]) / replicas

    def train_step(self, batch):
        batch = self.make_views(batch)
        with tf.GradientTape() as tape:
            outputs = self.forward(batch, training=True)
            loss, logs = self.replica_loss(batch, outputs)
            regularization = self.regularization_loss()
            total = loss if regularization is None else loss + regularization
            scaled = self.optimizer.scale_loss(total)
        variables = self.method_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        self.after_apply(outputs)
        logs.update(self.probe_step(batch, outputs, training=True))
        return self.update_metrics(logs)

    def test_step(self, batch):
        batch = self.make_views(batch)
        outputs = self.forward(batch, training=False)
        _, logs = self.replica_loss(batch, outputs)
        logs.update(self.probe_step(batch, outputs, training=False))
        return self.update_metrics(logs)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def global_logs(self, logs):
        """Each log's mean over the replicas (one all-reduce of the stacked scalars; the
        logs themselves with one replica): the hooks' logs are means over a replica's
        (equally many) examples or global-batch values, so every replica then holds the
        global batch's values, whatever Keras does with the replicas' metrics (a mean on
        GPUs, the first replica's on TPUs)."""
        if cross_replica.num_replicas() == 1 or not logs:
            return logs
        names = list(logs)
        values = tf.stack([tf.cast(tf.stop_gradient(logs[n]), tf.float32) for n in names])
        return dict(zip(names, tf.unstack(cross_replica.global_mean(values[tf.newaxis]))))

    def update_metrics(self, logs):
        logs = self.global_logs(logs)
        for name, value in logs.items():
            self._trackers[name].update_state(value)
        results = {name: t.result() for name, t in self._trackers.items()}
        return cross_replica.step_results(self.distribute_strategy, results)
