"""Non-contrastive dual networks: BYOL, SimSiam, and DirectPred's closed-form predictor.

No negatives: the online network (encoder, projector = ``build_head``'s, by default the
task's ``--proj_*`` head, predictor) predicts a target projection of the other view, and
the loss is a cosine between the two
(:func:`dualssl_tf.losses.byol_loss`, :func:`dualssl_tf.losses.simsiam_loss`), summed over
both view orders. What keeps the representation from collapsing is the subject of the
paper's conference version (BatchNorm, the predictor, the moving-average target) and of its
authors' follow-up (Tian, Chen & Ganguli 2021, "Understanding self-supervised learning
dynamics without contrastive pairs"), so each of these is a switch:

* :class:`BYOLMethod` (Grill et al. 2020): the target is a copy of the online encoder and
  projector that moves by an exponential moving average of the online weights after every
  optimizer step, ``target <- tau target + (1 - tau) online``, with tau rising from
  ``base_momentum`` (0.996) to ``final_momentum`` (1) by a cosine over the run
  (:func:`target_momentum`). ``ema=False``: the target is the online network under
  stop-gradient.
* :class:`SimSiamMethod` (Chen & He 2021): the target is the online projection itself under
  stop-gradient (``stop_gradient=False``: the collapsing variant of the paper).
* ``predictor``: ``mlp`` (Linear-BN-ReLU-Linear, trained; ``pred_bn=False`` drops its
  BatchNorm), ``none`` (the projection is compared with the target directly), or
  ``directpred``: a linear predictor that takes no gradient and is set every ``every``
  steps to ``W = U diag(s) U^T`` from the eigen-decomposition ``F = U diag(p) U^T`` of the
  moving average ``F <- rate F + (1 - rate) E[z z^T]`` of the online projections, with
  ``s_j = sqrt(p_j) / max_i sqrt(p_i) + eps`` (:class:`DirectPredictor`,
  :func:`directpred_weights`).
* BatchNorm in the projector is the task's (``--noproj_bn`` for images).

Each view passes the networks on its own (BatchNorm statistics per view, as BYOL's and
SimSiam's code do). The target's BatchNorm runs in training mode like the online network's
(batch statistics); its moving statistics follow its own forward passes, while its weights
move only by the moving average (never by a gradient: they are left out of the optimizer by
:meth:`SSLMethod.frozen_variables`). Under a distribution strategy the average runs on
every replica from identical (synchronised) online weights, so the replicas' targets stay
identical without communication; DirectPred's ``E[z z^T]`` is a global-batch mean. The
target, the predictor and DirectPred's ``F`` are variables of the model, so checkpoints
hold them and a resumed run continues bit-identically.
"""

import keras
import tensorflow as tf

from dualssl_tf import cross_replica, losses
from dualssl_tf.methods.base import SSLMethod
# target_momentum and clone_network live in momentum.py; named here too (byol.target_momentum).
from dualssl_tf.methods.momentum import (MomentumTargets, clone_network,  # noqa: F401
                                         momentum_copies, target_momentum)
from dualssl_tf.models import heads
from dualssl_tf.models.taps import tap_outputs
from dualssl_tf.optim import rate_groups

PREDICTORS = ("mlp", "none", "directpred")
# Floor of DirectPred's eigenvalue map s_j (the official code clamps at 1e-4).
DIRECTPRED_MIN = 1e-4


def directpred_weights(corr, eps):
    """DirectPred's predictor from the correlation matrix ``corr`` [D, D] (symmetric).

    ``corr = U diag(p) U^T``; ``W = U diag(s) U^T`` with ``s_j = sqrt(p_j^+ / max_i p_i^+)
    + eps`` (= sqrt(p_j) / max sqrt(p) + eps; negative rounding eigenvalues count as 0),
    floored at 1e-4 as in the authors' code (luckmatters ssl/real-dataset,
    ``balance_type=boost_scale``). Returns [D, D] float32.
    """
    corr = tf.cast(corr, tf.float32)
    p, u = tf.linalg.eigh(corr)
    p = tf.maximum(p, 0.0)
    s = tf.sqrt(p / tf.maximum(tf.reduce_max(p), 1e-30)) + eps
    s = tf.maximum(s, DIRECTPRED_MIN)
    return tf.matmul(u * s[tf.newaxis, :], u, transpose_b=True)


@keras.saving.register_keras_serializable(package="dualssl_tf")
class DirectPredictor(keras.layers.Layer):
    """DirectPred's linear predictor ``p = z W`` (W symmetric), set in closed form.

    Variables (none trainable): ``kernel`` W [D, D] (identity until the first update),
    ``corr`` F [D, D], ``updates`` (how many batches F has seen). :meth:`update` folds a
    batch's ``E[z z^T]`` into F (the first batch sets F, as the authors' accumulator does)
    and, every ``every``-th step, sets W = :func:`directpred_weights` (F, eps).

    Args:
      dim: D, the projection size.
      rate: rho of ``F <- rho F + (1 - rho) E[z z^T]``.
      every: steps between predictor updates.
      eps: eps of the eigenvalue map.
    """

    def __init__(self, dim, rate=0.3, every=1, eps=0.01, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.rate, self.every, self.eps = int(dim), float(rate), int(every), float(eps)
        self.kernel = self.add_weight(name="kernel", shape=(self.dim, self.dim),
                                      initializer="identity", trainable=False)
        self.corr = self.add_weight(name="corr", shape=(self.dim, self.dim),
                                    initializer="zeros", trainable=False)
        self.updates = self.add_weight(name="updates", shape=(), initializer="zeros",
                                       trainable=False)
        self.built = True

    def call(self, z):
        return keras.ops.matmul(z, self.kernel)

    def update(self, z, step):
        """Folds the batch ``z`` [n, D] (this replica's rows) into F and, when ``step``
        (0-based, this update's) is a multiple of ``every``, sets the kernel from F."""
        z = tf.cast(tf.stop_gradient(z), tf.float32)
        # E[z z^T] over the global batch; the sum z^T z of this replica's rows as one matmul.
        batch = cross_replica.replica_sum(tf.matmul(z, z, transpose_a=True)) / tf.cast(
            tf.shape(z)[0] * cross_replica.num_replicas(), tf.float32)
        first = tf.equal(tf.convert_to_tensor(self.updates), 0.0)
        corr = tf.where(first, batch, self.rate * tf.convert_to_tensor(self.corr)
                        + (1.0 - self.rate) * batch)
        self.corr.assign(corr)
        self.updates.assign_add(1.0)

        def set_kernel():
            self.kernel.assign(directpred_weights(corr, self.eps))
            return tf.constant(True)

        tf.cond(tf.equal(tf.math.floormod(tf.cast(step, tf.int64), self.every), 0),
                set_kernel, lambda: tf.constant(False))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.dim,)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "rate": self.rate,
                "every": self.every, "eps": self.eps}


class PredictionOutputs(tf.Module):
    """The export's extra outputs: the task's taps plus ``prediction`` = the predictor on
    the online projection, [B, D]. Passed to the export as its ``intermediate_layers``
    callable (a tf.Module, so the export tracks and saves the predictor's variables)."""

    def __init__(self, encoder, head, predictor, taps=None):
        super().__init__(name="prediction_outputs")
        self.encoder, self.head, self.predictor = encoder, head, predictor
        self.taps = taps if callable(taps) or taps is None else None
        self.tap_model = None
        if taps is not None and not callable(taps):
            names = {t: t for t in taps} if isinstance(taps, (list, tuple)) else dict(taps)
            outputs = tap_outputs(encoder, names)
            self.tap_model = keras.Model(encoder.inputs, outputs, name=f"{encoder.name}_taps")

    def __call__(self, x, training=False):
        out = {}
        if self.taps is not None:
            out.update(self.taps(x, training))
        if self.tap_model is not None:
            out.update(dict(self.tap_model(x, training=training)))
        z = self.encoder(x, training=training)
        if self.head is not None:
            z = self.head(z, training=training)
        out["prediction"] = self.predictor(z, training=training)
        return out


class SiameseMethod(MomentumTargets, SSLMethod):
    """Online encoder + projector + predictor against a stop-gradient target (base of
    :class:`BYOLMethod` and :class:`SimSiamMethod`; see the module docstring).

    ``fit`` reports ``loss``, ``pos_cos`` (mean cosine of the two views' online
    projections), ``pred_cos`` (mean cosine of each prediction to the other view's target,
    what the loss maximises), plus ``probe_loss``/``probe_acc`` with a probe.

    Args:
      encoder: Keras model ``x -> representation [B, R]`` (built).
      head: optional projector ``[B, R] -> [B, D]``; identity when None.
      predictor: ``mlp`` | ``none`` | ``directpred``.
      pred_hidden_dim, pred_bn: the mlp predictor's hidden width and BatchNorm.
      ema: a moving-average target (a copy of encoder and head); False: the target is the
        online projection.
      base_momentum, final_momentum, total_steps: the momentum schedule
        (:func:`target_momentum`) over the run's ``total_steps`` optimizer steps.
      stop_gradient: stop the gradient through the target (always, with ``ema``).
      directpred_rate, directpred_every, directpred_eps: :class:`DirectPredictor`.
      pred_lr_mult, pred_fixed_lr: the mlp predictor's learning rate, x ``pred_lr_mult``
        and with ``pred_fixed_lr`` unscheduled (:meth:`rate_group`).
      sync_bn: cross-replica BatchNorm in the predictor.
      input_shape: one example's shape (default: the encoder's input).
      probe: optional online probe on ``stop_gradient(representation)`` of view 1.

    Example:
      >>> model = BYOLMethod(encoder, head, total_steps=1000)
      >>> model.compile(optimizer="sgd")
      >>> model.fit(dataset_of_view_dicts, epochs=1, steps_per_epoch=1000)
    """

    metric_names = ("loss", "pos_cos", "pred_cos")
    loss_fn = None          # (p1, p2, t1, t2) -> [B]
    default_ema = False

    def __init__(self, encoder, head=None, predictor="mlp", pred_hidden_dim=512, pred_bn=True,
                 ema=None, base_momentum=0.996, final_momentum=1.0, total_steps=1,
                 stop_gradient=True, directpred_rate=0.3, directpred_every=1,
                 directpred_eps=0.01, pred_lr_mult=1.0, pred_fixed_lr=False, sync_bn=False,
                 input_shape=None, probe=None, norm_eps=1e-4, **kwargs):
        super().__init__(**kwargs)
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor: expected one of {', '.join(PREDICTORS)}, got "
                             f"{predictor!r}")
        self.ema = self.default_ema if ema is None else bool(ema)
        self.input_shape_ = self.example_shape(encoder, input_shape)
        h = encoder(tf.zeros([1, *self.input_shape_]), training=False)
        dim = int((head(h, training=False) if head is not None else h).shape[-1])
        # Assignment order = variable order of the checkpoints: online networks, the
        # predictor (with DirectPred's state), the target, the probe.
        self.encoder = encoder
        self.head = head
        self.predictor_kind = predictor
        if predictor == "mlp":
            self.predictor = heads.projection_head(dim, pred_hidden_dim, dim, 2, sync_bn,
                                                   name="predictor", batch_norm=pred_bn)
        elif predictor == "directpred":
            self.predictor = DirectPredictor(dim, directpred_rate, directpred_every,
                                             directpred_eps, name="predictor")
        else:
            self.predictor = None
        if self.ema:
            self.target_encoder, self.target_head = momentum_copies(
                encoder, head, self.input_shape_, h.shape[1:])
        else:
            self.target_encoder = self.target_head = None
        self.base_momentum = float(base_momentum)
        self.final_momentum = float(final_momentum)
        self.total_steps = max(int(total_steps), 1)
        self.stop_gradient = bool(stop_gradient) or self.ema
        self.norm_eps = norm_eps
        self.projection_dim = dim
        self.pred_lr_mult = float(pred_lr_mult)
        self.pred_fixed_lr = bool(pred_fixed_lr)
        self.attach_probe(probe)

    @classmethod
    def from_options(cls, cfg, task, gather_fn=None):
        """The method of a run: its options section on ``task``'s networks; the momentum
        schedule spans ``--epochs`` x the task's steps per epoch."""
        o = getattr(cfg, cls.section)
        return cls(task.encoder, task.head, predictor=o.predictor,
                   pred_hidden_dim=o.pred_hidden_dim, pred_bn=o.pred_bn,
                   directpred_rate=o.directpred_rate, directpred_every=o.directpred_every,
                   directpred_eps=o.directpred_eps, pred_lr_mult=o.pred_lr_mult,
                   pred_fixed_lr=o.pred_fixed_lr,
                   total_steps=cfg.optim.epochs * task.steps_per_epoch,
                   sync_bn=cfg.run.sync_bn or cross_replica.use_sync_bn(),
                   input_shape=task.input_shape, probe=task.probe, norm_eps=task.norm_eps,
                   name=cls.section, **cls.method_options(o))

    @staticmethod
    def method_options(o):
        """The constructor arguments of a subclass's own options."""
        return {}

    # -- networks -----------------------------------------------------------------------

    def embed(self, x, training=False):
        """Normalised online projection (what ``model(x)`` returns). x: [B, ...] -> [B, D]."""
        _, z = self._online(x, training)
        z = tf.cast(z, tf.float32)  # normalised in float32 under mixed precision too
        return z / (tf.norm(z, axis=-1, keepdims=True) + self.norm_eps)

    def _online(self, x, training):
        h = self.encoder(x, training=training)
        z = self.head(h, training=training) if self.head is not None else h
        return h, z

    def _predict(self, z, training):
        return self.predictor(z, training=training) if self.predictor is not None else z

    def _target(self, x, z, training):
        if self.target_encoder is not None:
            t = self.target_encoder(x, training=training)
            if self.target_head is not None:
                t = self.target_head(t, training=training)
        else:
            t = z
        return tf.stop_gradient(t) if self.stop_gradient else t

    def forward(self, batch, training):
        """Each view through the online network, the predictor and the target.

        Returns dict: ``h1`` [B, R] representation of view 1 (for the probe); ``z1``, ``z2``
        online projections, ``p1``, ``p2`` predictions, ``t1``, ``t2`` targets [B, D].
        """
        out = {}
        for i, x in ((1, batch["view1"]), (2, batch["view2"])):
            h, z = self._online(x, training)
            out[f"z{i}"] = z
            out[f"p{i}"] = self._predict(z, training)
            out[f"t{i}"] = self._target(x, z, training)
            if i == 1:
                out["h1"] = h
        return out

    def per_example_loss(self, batch, outputs):
        o = outputs
        per_example = type(self).loss_fn(o["p1"], o["p2"], o["t1"], o["t2"])
        pred_cos = 0.5 * (losses.mean_cosine(o["p1"], o["t2"])
                          + losses.mean_cosine(o["p2"], o["t1"]))
        return per_example, {"pos_cos": losses.mean_cosine(o["z1"], o["z2"]),
                             "pred_cos": pred_cos}

    # -- what the optimizer does not do ---------------------------------------------------

    def momentum_networks(self):
        if self.target_encoder is None:
            return []
        return [(self.target_encoder, self.encoder), (self.target_head, self.head)]

    def rate_group(self):
        """The predictor's learning rate (:class:`~dualssl_tf.optim.rate_groups.RateGroup`):
        its trainable variables, the multiplier and whether it is fixed; None without a
        trained predictor (``none``, ``directpred``: the flags are ignored, as the options
        of a switch that is off)."""
        if self.predictor_kind != "mlp":
            return None
        return rate_groups.RateGroup(tuple(self.predictor.trainable_variables),
                                     self.pred_lr_mult, self.pred_fixed_lr)

    def regularization_loss(self):
        """The online networks' regularisation only (the target's weights take no
        gradient, so their penalties would only shift the reported loss)."""
        nets = [n for n in (self.encoder, self.head, self.predictor) if n is not None]
        terms = [tf.cast(l, tf.float32) for n in nets for l in n.losses]
        if not terms:
            return None
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        return tf.add_n(terms) / replicas

    def after_apply(self, outputs):
        step = tf.cast(self.optimizer.iterations, tf.int64) - 1   # this update's index
        self.update_targets(step)
        if self.predictor_kind == "directpred":
            self.predictor.update(tf.concat([outputs["z1"], outputs["z2"]], axis=0), step)

    def export_outputs(self, intermediate_layers):
        """The task's taps plus ``prediction`` (the predictor's output), when there is a
        predictor."""
        if self.predictor is None:
            return intermediate_layers
        return PredictionOutputs(self.encoder, self.head, self.predictor, intermediate_layers)


class BYOLMethod(SiameseMethod):
    """BYOL: :class:`SiameseMethod` with the moving-average target (``ema=True`` by
    default), BYOL's loss ``2 - 2 cos`` over both view orders and its momentum schedule."""

    section = "byol"
    loss_fn = staticmethod(losses.byol_loss)
    default_ema = True

    @staticmethod
    def method_options(o):
        return {"ema": o.ema, "base_momentum": o.base_momentum,
                "final_momentum": o.final_momentum}


class SimSiamMethod(SiameseMethod):
    """SimSiam: :class:`SiameseMethod` with a stop-gradient target and no moving average,
    and SimSiam's symmetric negative cosine."""

    section = "simsiam"
    loss_fn = staticmethod(losses.simsiam_loss)
    default_ema = False

    @staticmethod
    def method_options(o):
        return {"ema": False, "stop_gradient": o.stop_gradient}
