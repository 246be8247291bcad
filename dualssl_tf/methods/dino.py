"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers").

A student (the task's encoder + a DINO head) is trained to match a teacher (a copy of
both, moved only by a moving average of the student) across crops of one image:

* the DINO head (:func:`dino_head`): an MLP ``R -> hidden -> ... -> bottleneck``
  (Linear-GELU blocks, optional BatchNorm), the bottleneck L2-normalised, then a
  weight-normalised linear layer to K prototypes without bias (:class:`DINOLastLayer`;
  with ``norm_last_layer`` its scale is fixed at 1, so the logits are cosines);
* the teacher sees the 2 global crops (``view1``, ``view2``), the student every crop (the
  globals and the batch's ``local_views``); the loss is, for each global crop i of the
  teacher and each OTHER crop v of the student, the cross-entropy
  ``-sum_k softmax((t_i - c) / tau_t)_k log softmax(s_v / tau_s)_k``, averaged over the
  ``2 (V - 1)`` pairs and the global batch (:func:`dino_loss`: the reference's DINOLoss);
* centring: ``c <- m c + (1 - m) mean(t)`` after every step, the mean over the teacher's
  outputs of both global crops of the GLOBAL batch (all replicas), m = 0.9;
* the teacher temperature rises linearly per epoch from ``warmup_teacher_temp`` to
  ``teacher_temp`` over ``warmup_teacher_temp_epochs`` (:func:`teacher_temperature`, the
  reference's ``np.linspace`` schedule);
* the teacher momentum rises from 0.996 to 1 by a cosine over the run (BYOL's
  :func:`~dualssl_tf.methods.byol.target_momentum`, the reference's cosine_scheduler);
* the last layer is frozen for the first ``freeze_last_layer`` epochs (its gradient is
  zero and its weights are put back after each step, so weight decay does not move them
  either).

Each crop size passes the encoder as one batch (the 2B global crops together, then the NB
local crops), and the head sees all crops at once, as the reference's MultiCropWrapper
does, so BatchNorm statistics are those of the reference. The teacher runs in training
mode (batch statistics), as in the reference. The teacher, the centre and the student are
variables of the model, so checkpoints hold them and a resumed run continues
bit-identically; under a distribution strategy the moving average runs on every replica
from the synchronised student and the centre from a global mean, so replicas stay equal.
"""

import keras
import tensorflow as tf

from dualssl_tf import cross_replica
from dualssl_tf.methods.base import SSLMethod
from dualssl_tf.methods.momentum import clone_network, target_momentum

# The reference's F.normalize floor on the norm.
NORMALIZE_EPS = 1e-12


def teacher_temperature(epoch, warmup_temp, final_temp, warmup_epochs):
    """The teacher temperature of (0-based) ``epoch``: ``linspace(warmup_temp, final_temp,
    warmup_epochs)[epoch]`` during the warm-up, ``final_temp`` after (the reference's
    schedule; with one warm-up epoch that epoch is at ``warmup_temp``). float32 tensor."""
    epoch = tf.cast(epoch, tf.float32)
    if warmup_epochs <= 0:
        return tf.constant(final_temp, tf.float32) + 0.0 * epoch
    span = float(max(warmup_epochs - 1, 1))
    ramp = warmup_temp + (final_temp - warmup_temp) * tf.minimum(epoch, span) / span
    if warmup_epochs == 1:
        ramp = tf.constant(warmup_temp, tf.float32) + 0.0 * epoch
    return tf.where(epoch < warmup_epochs, ramp, tf.constant(final_temp, tf.float32))


def dino_loss(student, teacher, center, student_temp, teacher_temp, num_crops):
    """DINO's cross-entropy, per example.

    Args:
      student: [V B, K] student outputs, crop-major (crop 0's B rows, then crop 1's, ...);
        crops 0 and 1 are the global crops.
      teacher: [2 B, K] teacher outputs of the two global crops, crop-major.
      center: [K] the centre.
      student_temp, teacher_temp: temperatures (python floats or scalar tensors).
      num_crops: V >= 2 (python int).
    Returns:
      (per_example [B], teacher_probs [2, B, K]): the mean over the ``2 (V - 1)`` pairs
      (teacher crop i, student crop v != i) of the cross-entropy, and the teacher's
      distributions. The mean of per_example over the batch is the reference's loss.
    """
    student = tf.cast(student, tf.float32)
    teacher = tf.cast(teacher, tf.float32)
    k = tf.shape(student)[-1]
    log_p = tf.nn.log_softmax(tf.reshape(student, [num_crops, -1, k]) / student_temp, axis=-1)
    q = tf.nn.softmax(tf.reshape((teacher - center) / teacher_temp, [2, -1, k]), axis=-1)
    cross = -tf.einsum("ibk,vbk->ivb", q, log_p)                        # [2, V, B]
    mask = 1.0 - tf.one_hot(tf.range(2), num_crops, dtype=tf.float32)   # no (i, i) pair
    per_example = tf.einsum("ivb,iv->b", cross, mask) / float(2 * (num_crops - 1))
    return per_example, q


@keras.saving.register_keras_serializable(package="dualssl_tf")
class DINOLastLayer(keras.layers.Layer):
    """DINO's last layer: ``x / max(|x|, 1e-12)`` then a weight-normalised linear map
    without bias, ``[B, D] -> [B, K]``.

    ``kernel`` v [D, K] is the direction, ``w_k = g_k v_k / |v_k|`` (PyTorch's
    ``weight_norm`` over each output unit); with ``norm_last_layer`` there is no scale
    variable (g = 1, the reference's frozen ``weight_g``), else ``scale`` g [K] is trained
    (initialised at 1). ``freeze``: an optional callable -> bool scalar tensor, set by
    :class:`DINOMethod` on the student's layer (-> a bool scalar tensor, or None outside
    the method's train step: the export's training-mode signature must not capture the
    optimizer's step); while it is true the kernel takes no gradient. It is not part of
    the config, so a clone (the teacher's) has none.
    """

    def __init__(self, units, norm_last_layer=True, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.norm_last_layer = bool(norm_last_layer)
        self.freeze = None

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel", shape=(int(input_shape[-1]), self.units),
            initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.scale = (None if self.norm_last_layer else
                      self.add_weight(name="scale", shape=(self.units,), initializer="ones"))

    def call(self, x, training=False):
        x = x / tf.maximum(tf.norm(x, axis=-1, keepdims=True),
                           tf.cast(NORMALIZE_EPS, x.dtype))
        v = tf.convert_to_tensor(self.kernel)
        frozen = self.freeze() if self.freeze is not None and training else None
        if frozen is not None:
            v = tf.where(frozen, tf.stop_gradient(v), v)
        w = v / tf.norm(v, axis=0, keepdims=True)
        if self.scale is not None:
            w = w * tf.convert_to_tensor(self.scale)
        return tf.matmul(x, tf.cast(w, x.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "norm_last_layer": self.norm_last_layer}


def dino_head(input_dim, out_dim=65536, hidden_dim=2048, bottleneck_dim=256, num_layers=3,
              batch_norm=False, norm_last_layer=True, sync_bn=False, name="dino_head"):
    """The DINO head ``[B, input_dim] -> [B, out_dim]`` (a functional keras.Model).

    ``num_layers`` Dense layers (``num_layers - 1`` of ``hidden_dim`` with GELU, BatchNorm
    before it with ``batch_norm``, then one of ``bottleneck_dim``; one layer: just the
    bottleneck), then :class:`DINOLastLayer` ``last_layer`` to ``out_dim``. Dense weights
    start from N(0, 0.02^2) and biases at 0 (the reference's ``trunc_normal_(std=.02)``
    truncates at +-2, i.e. +-100 std: a plain normal).
    """
    init = keras.initializers.RandomNormal(stddev=0.02)
    inputs = keras.Input([input_dim], name="representation")
    x = inputs
    for i in range(num_layers - 1):
        x = keras.layers.Dense(hidden_dim, kernel_initializer=init, name=f"dense{i + 1}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                                synchronized=sync_bn, name=f"bn{i + 1}")(x)
        x = keras.layers.Activation("gelu", name=f"gelu{i + 1}")(x)
    x = keras.layers.Dense(bottleneck_dim, kernel_initializer=init,
                           name=f"dense{num_layers}")(x)
    x = DINOLastLayer(out_dim, norm_last_layer, name="last_layer")(x)
    return keras.Model(inputs, x, name=name)


@keras.saving.register_keras_serializable(package="dualssl_tf")
class Center(keras.layers.Layer):
    """The centre c [K] of the teacher's outputs (a non-trainable variable, zeros at the
    start as in the reference)."""

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.center = self.add_weight(name="center", shape=(self.dim,), initializer="zeros",
                                      trainable=False)
        self.built = True

    def call(self, x):
        return x - tf.cast(tf.convert_to_tensor(self.center), x.dtype)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


class DINOMethod(SSLMethod):
    """DINO (see the module docstring).

    ``fit`` reports ``loss``, ``teacher_entropy`` (mean entropy of the teacher's
    distributions, in nats: ln K at a uniform collapse, 0 at a one-hot one) and
    ``teacher_temp``, plus ``probe_loss``/``probe_acc`` with a probe.

    Args:
      encoder: Keras model ``x -> representation [B, R]`` (built); it must take the local
        crops' size too (a ResNet with global pooling does; so does a ViT that
        interpolates its position embeddings).
      head: the DINO head ``[B, R] -> [B, K]`` (:func:`dino_head`; ``build_head``'s).
      total_steps: optimizer steps of the run (the momentum schedule spans them).
      steps_per_epoch: for the per-epoch teacher temperature and the frozen last layer.
      student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs: the
        temperatures (:func:`teacher_temperature`).
      center_momentum: m of the centre's moving average.
      base_momentum, final_momentum: the teacher momentum schedule.
      freeze_last_layer: epochs with the head's last layer frozen.
      clip_grad: each variable's gradient clipped to this norm by the optimizer
        (:meth:`gradient_clip`; DINO's ``clip_gradients``), 0 = none.
      input_shape: one example's shape (default: the encoder's input).
      probe: optional online probe on ``stop_gradient(representation)`` of view 1.
    """

    section = "dino"
    metric_names = ("loss", "teacher_entropy", "teacher_temp")

    def __init__(self, encoder, head, total_steps=1, steps_per_epoch=1, student_temp=0.1,
                 teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=30,
                 center_momentum=0.9, base_momentum=0.996, final_momentum=1.0,
                 freeze_last_layer=1, clip_grad=0.0, input_shape=None, probe=None,
                 **kwargs):
        super().__init__(**kwargs)
        if head is None:
            raise ValueError("DINOMethod needs its head (dino_head / DINOMethod.build_head)")
        self.input_shape_ = self.example_shape(encoder, input_shape)
        h = encoder(tf.zeros([1, *self.input_shape_]), training=False)
        dim = int(head(h, training=False).shape[-1])
        # Assignment order = variable order of the checkpoints: student, teacher, centre,
        # probe.
        self.encoder = encoder
        self.head = head
        self.teacher_encoder = clone_network(encoder, self.input_shape_)
        self.teacher_head = clone_network(head, h.shape[1:])
        self.center = Center(dim, name="center")
        self.out_dim = dim
        self.total_steps = max(int(total_steps), 1)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.student_temp = float(student_temp)
        self.teacher_temp = float(teacher_temp)
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.warmup_teacher_temp_epochs = int(warmup_teacher_temp_epochs)
        self.center_momentum = float(center_momentum)
        self.base_momentum = float(base_momentum)
        self.final_momentum = float(final_momentum)
        self.freeze_steps = int(freeze_last_layer) * self.steps_per_epoch
        self.clip_grad = float(clip_grad)
        self._in_train_step = False
        last = self.last_layer()
        if last is not None and self.freeze_steps > 0:
            last.freeze = self._frozen
        self.attach_probe(probe)

    def last_layer(self):
        """The student head's :class:`DINOLastLayer` (None for another head). Looked up,
        not stored: an attribute would track its variables a second time."""
        layers = [layer for layer in self.head.layers if isinstance(layer, DINOLastLayer)]
        return layers[-1] if layers else None

    @classmethod
    def build_head(cls, cfg, rep_dim, head_spec, sync_bn):
        """The DINO head of ``--dino_*`` (the task's ``--proj_*`` head is not used)."""
        o = cfg.dino
        return dino_head(rep_dim, o.out_dim, o.hidden_dim, o.bottleneck_dim, o.head_layers,
                         batch_norm=o.head_bn, norm_last_layer=o.norm_last_layer,
                         sync_bn=sync_bn)

    @classmethod
    def from_options(cls, cfg, task, gather_fn=None):
        o = cfg.dino
        head = task.head
        if head is None:  # a head-less toy task: the head is made here, after its encoder
            sync_bn = cfg.run.sync_bn or cross_replica.use_sync_bn()
            rep = task.encoder(tf.zeros([1, *task.input_shape]), training=False)
            head = cls.build_head(cfg, int(rep.shape[-1]), None, sync_bn)
        return cls(task.encoder, head, total_steps=cfg.optim.epochs * task.steps_per_epoch,
                   steps_per_epoch=task.steps_per_epoch, student_temp=o.student_temp,
                   teacher_temp=o.teacher_temp, warmup_teacher_temp=o.warmup_teacher_temp,
                   warmup_teacher_temp_epochs=o.warmup_teacher_temp_epochs,
                   center_momentum=o.center_momentum, base_momentum=o.base_momentum,
                   final_momentum=o.final_momentum, freeze_last_layer=o.freeze_last_layer,
                   clip_grad=o.clip_grad, input_shape=task.input_shape, probe=task.probe,
                   name="dino")

    # -- schedules ----------------------------------------------------------------------

    def _step(self):
        """The 0-based index of the step being taken (the optimizer's iterations before
        its update); 0 without an optimizer."""
        if getattr(self, "optimizer", None) is None:
            return tf.constant(0, tf.int64)
        return tf.cast(self.optimizer.iterations, tf.int64)

    def _frozen(self):
        if not self._in_train_step:
            return None
        return self._step() < self.freeze_steps

    def train_step(self, batch):
        # The last layer reads the step only while this step is traced (DINOLastLayer).
        self._in_train_step = True
        try:
            return super().train_step(batch)
        finally:
            self._in_train_step = False

    def temperature(self, step):
        """The teacher temperature at (0-based) optimizer step ``step``."""
        epoch = tf.math.floordiv(tf.cast(step, tf.int64), self.steps_per_epoch)
        return teacher_temperature(epoch, self.warmup_teacher_temp, self.teacher_temp,
                                   self.warmup_teacher_temp_epochs)

    def momentum(self, step):
        """The teacher momentum used after the optimizer step ``step`` (0-based)."""
        return target_momentum(step, self.total_steps, self.base_momentum, self.final_momentum)

    # -- networks -----------------------------------------------------------------------

    def embed(self, x, training=False):
        """The student's head output (prototype scores). x: [B, ...] -> [B, K] float32."""
        return tf.cast(self.head(self.encoder(x, training=training), training=training),
                       tf.float32)

    def forward(self, batch, training):
        """The student on every crop, the teacher on the global crops.

        Returns dict: ``h1`` [B, R] (view 1's representation, for the probe), ``student``
        [V B, K] float32 (crop-major: view 1, view 2, then each local crop), ``teacher``
        [2 B, K] float32 (under stop-gradient), ``crops`` V (python int), and while the
        last layer is frozen its weights before the step (``last_before``).
        """
        v1, v2 = batch["view1"], batch["view2"]
        b = tf.shape(v1)[0]
        globals_ = tf.concat([v1, v2], axis=0)
        reps = [self.encoder(globals_, training=training)]
        crops = 2
        local = batch.get("local_views")
        if local is not None:
            n = int(local.shape[1])
            # [B, N, h, w, C] -> [N B, h, w, C], crop-major like the global crops.
            perm = [1, 0] + list(range(2, len(local.shape)))
            flat = tf.reshape(tf.transpose(local, perm),
                              tf.concat([[-1], tf.shape(local)[2:]], axis=0))
            reps.append(self._encode_any_size(flat, training))
            crops += n
        student = self.head(tf.concat(reps, axis=0) if len(reps) > 1 else reps[0],
                            training=training)
        teacher = self.teacher_head(self.teacher_encoder(globals_, training=training),
                                    training=training)
        out = {"h1": reps[0][:b], "student": tf.cast(student, tf.float32),
               "teacher": tf.stop_gradient(tf.cast(teacher, tf.float32)), "crops": crops}
        last = self.last_layer()
        if training and last is not None and self.freeze_steps > 0:
            out["last_before"] = [tf.identity(v) for v in last.trainable_variables]
        return out

    def _encode_any_size(self, x, training):
        """The student encoder on crops of another size than its input's. A functional
        model checks its input's shape against its Input; a convolutional encoder with
        global pooling (the ResNet) computes on any size, so the check is relaxed to the
        rank and channels (Keras' public ``input_spec``) the first time local crops come.
        An encoder that cannot take the size fails in its own layers."""
        spec = keras.layers.InputSpec(ndim=len(x.shape), axes={-1: int(x.shape[-1])})
        if tuple(x.shape[1:]) != self.input_shape_ and not getattr(
                self.encoder, "_dino_any_size", False):
            self.encoder.input_spec = spec
            self.encoder._dino_any_size = True
        return self.encoder(x, training=training)

    def per_example_loss(self, batch, outputs):
        temp = self.temperature(self._step())
        per_example, q = dino_loss(outputs["student"], outputs["teacher"],
                                   tf.convert_to_tensor(self.center.center),
                                   self.student_temp, temp, outputs["crops"])
        entropy = -tf.reduce_mean(tf.reduce_sum(q * tf.math.log(tf.maximum(q, 1e-30)),
                                                axis=-1))
        return per_example, {"teacher_entropy": entropy, "teacher_temp": temp}

    # -- what the optimizer does not do ---------------------------------------------------

    def online_pairs(self):
        """[(teacher variable, student variable)] moved by the moving average."""
        return (list(zip(self.teacher_encoder.trainable_variables,
                         self.encoder.trainable_variables))
                + list(zip(self.teacher_head.trainable_variables,
                           self.head.trainable_variables)))

    def frozen_variables(self):
        return [t for t, _ in self.online_pairs()]

    def gradient_clip(self):
        return self.clip_grad

    def regularization_loss(self):
        """The student's regularisation only (the teacher takes no gradient)."""
        terms = [tf.cast(l, tf.float32) for n in (self.encoder, self.head) for l in n.losses]
        if not terms:
            return None
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        return tf.add_n(terms) / replicas

    def after_apply(self, outputs):
        step = tf.cast(self.optimizer.iterations, tf.int64) - 1   # this update's index
        if "last_before" in outputs:
            # While frozen, weight decay (which does not need a gradient) must not move
            # the last layer either: its pre-step weights are put back.
            frozen = step < self.freeze_steps
            for v, before in zip(self.last_layer().trainable_variables,
                                 outputs["last_before"]):
                v.assign(tf.where(frozen, before, tf.convert_to_tensor(v)))
        tau = self.momentum(step)
        for teacher, student in self.online_pairs():
            t = tf.convert_to_tensor(teacher)
            teacher.assign(tau * t + (1.0 - tau) * tf.convert_to_tensor(student))
        # The centre: the mean of both global crops' teacher outputs over the global batch.
        batch_center = cross_replica.global_mean(outputs["teacher"], axis=0)
        m = self.center_momentum
        self.center.center.assign(m * tf.convert_to_tensor(self.center.center)
                                  + (1.0 - m) * batch_center)
