"""Learning-rate schedules, batch-size scaling and the optimizer factory."""

import math

import keras
from keras import ops

from dualssl_tf.optim.clipping import _PerVariableClip
from dualssl_tf.optim.coupled_decay import CoupledAdam, CoupledSGD
from dualssl_tf.optim.lars import DEFAULT_EXCLUDE, LARS
from dualssl_tf.optim.rates import (LR_SCALINGS, LR_SCHEDULES, OPTIMIZERS,  # noqa: F401
                                    WEIGHT_DECAY_MODES, scale_learning_rate)
from dualssl_tf.optim.rate_groups import grouped
from dualssl_tf.optim.weight_decay import _ScheduledDecay



@keras.saving.register_keras_serializable(package="dualssl_tf")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup then cosine decay (SimCLR)::

        lr(t) = base * t / W                                       for t < W
        lr(t) = base * (alpha + (1 - alpha) * (1 + cos(pi p)) / 2), p = (t - W) / (T - W)

    with p clipped to [0, 1], so the rate stays at ``alpha * base`` after T steps.

    Args:
      base_learning_rate: peak rate, reached at step W.
      total_steps: T, warmup included.
      warmup_steps: W (0 = no warmup).
      alpha: final rate as a fraction of the peak.

    Example:
      >>> sched = WarmupCosineDecay(0.3, total_steps=1000, warmup_steps=100)
      >>> float(sched(100))
      0.3
    """

    def __init__(self, base_learning_rate, total_steps, warmup_steps=0, alpha=0.0,
                 name="warmup_cosine"):
        super().__init__()
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps "
                             f"({total_steps}) and total_steps >= 1")
        self.base_learning_rate = float(base_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.alpha = float(alpha)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        base = self.base_learning_rate
        warm = base * step / max(self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps)
                            / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        cosine = base * (self.alpha + (1 - self.alpha) * 0.5
                         * (1.0 + ops.cos(math.pi * progress)))
        return ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate,
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "alpha": self.alpha, "name": self.name}


def learning_rate_schedule(learning_rate, batch_size=256, scaling="none",
                           schedule="constant", total_steps=1, warmup_steps=0,
                           min_learning_rate=0.0):
    """The learning rate of a run: scaled by batch size, then scheduled.

    Args:
      learning_rate: base rate (before batch-size scaling).
      batch_size, scaling: see :func:`scale_learning_rate`.
      schedule: ``constant`` (after an optional linear warmup) or ``cosine``
        (:class:`WarmupCosineDecay` to ``min_learning_rate`` at ``total_steps``).
      total_steps, warmup_steps: schedule length and warmup, in optimizer steps.
      min_learning_rate: the cosine's end, absolute (DINO's ``min_lr``: its
        ``cosine_scheduler(lr, min_lr, ...)`` is ``min + (peak - min)(1 + cos) / 2``, which is
        ``WarmupCosineDecay``'s form with ``alpha = min / peak``).
    Returns:
      a float (constant, no warmup) or a LearningRateSchedule.
    """
    lr = scale_learning_rate(learning_rate, batch_size, scaling)
    if schedule == "cosine":
        if min_learning_rate > lr:
            raise ValueError(f"min_learning_rate={min_learning_rate} is above the peak rate "
                             f"{lr} (--learning_rate after --lr_scaling)")
        return WarmupCosineDecay(lr, max(total_steps, 1), min(warmup_steps, total_steps),
                                 alpha=min_learning_rate / lr if min_learning_rate else 0.0)
    if schedule != "constant":
        raise ValueError(f"lr_schedule={schedule!r}: allowed {', '.join(LR_SCHEDULES)}")
    if warmup_steps > 0:  # alpha = 1: warmup, then flat
        return WarmupCosineDecay(lr, max(total_steps, warmup_steps), warmup_steps, alpha=1.0)
    return lr


def peak_rate(learning_rate):
    """The unscheduled (base) rate of ``learning_rate``: the float itself, or a
    :class:`WarmupCosineDecay`'s peak (after batch-size scaling, before warmup and decay:
    SimSiam's ``init_lr``, solo-learn's ``static_lr``)."""
    if isinstance(learning_rate, WarmupCosineDecay):
        return learning_rate.base_learning_rate
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        raise ValueError(f"no base rate known for {type(learning_rate).__name__}")
    return float(learning_rate)


_COMPOSED = {}


def with_mixins(base, *mixins):
    """The class ``(*mixins, base)`` (made once, registered for serialisation), e.g.
    ``with_mixins(keras.optimizers.AdamW, _PerVariableClip)``; ``base`` itself without
    mixins."""
    if not mixins:
        return base
    key = (base, *mixins)
    if key not in _COMPOSED:
        name = "".join(m.__name__.strip("_") for m in mixins) + base.__name__
        cls = type(name, (*mixins, base), {
            "__doc__": f"``{base.__name__}`` with {', '.join(m.__name__ for m in mixins)}."})
        _COMPOSED[key] = keras.saving.register_keras_serializable(
            package="dualssl_tf", name=name)(cls)
    return _COMPOSED[key]


def build_optimizer(name, learning_rate, momentum=0.9, weight_decay=0.0,
                    exclude_from_decay=DEFAULT_EXCLUDE, eta=0.001,
                    weight_decay_mode="decoupled", group=None, weight_decay_schedule=None,
                    clip_norm=0.0):
    """Keras optimizer by name.

    * ``sgd``: SGD with (heavy-ball) momentum;
    * ``adam``, ``adamw``: Keras Adam / AdamW (identical in Keras 3 but for defaults);
    * ``lars``: :class:`LARS` (coupled weight decay, trust ratio ``eta``).

    The form of the weight decay, by ``weight_decay_mode``:

    * ``decoupled`` (default): Keras' ``w -= lr * wd * w`` each step for sgd and adam
      (AdamW's form);
    * ``coupled``: PyTorch's ``SGD`` / ``Adam(weight_decay=)``: ``wd * w`` added to the
      gradient before momentum / the moments (:mod:`dualssl_tf.optim.coupled_decay`);
      refused for adamw, decoupled by definition;
    * lars is always coupled (SimCLR's LARS); it does not read the mode.

    Variables whose *name* contains one of ``exclude_from_decay`` (biases, BatchNorm
    gamma/beta) are not decayed, in both forms. For LARS the same substrings are matched
    against ``variable.path``.

    With ``weight_decay_schedule`` (a callable step -> coefficient, e.g.
    :class:`~dualssl_tf.optim.weight_decay.CosineWeightDecay`, DINO's) the coefficient
    follows it instead of ``weight_decay``, in the same form (decoupled, or coupled for the
    coupled mode and lars; :mod:`dualssl_tf.optim.weight_decay`), the exclusions matched
    on ``variable.name`` for every optimizer. ``clip_norm`` > 0 clips each variable's
    gradient to that norm first (DINO's ``clip_gradients``;
    :mod:`dualssl_tf.optim.clipping`). Without either, the optimizer is the same as
    before they existed.

    Args:
      name: one of :data:`OPTIMIZERS`.
      learning_rate: float or ``LearningRateSchedule``.
      momentum: for sgd and lars (ignored by adam/adamw).
      weight_decay: >= 0; 0 disables it.
      weight_decay_mode: one of :data:`WEIGHT_DECAY_MODES` (above).
      weight_decay_schedule: optional callable (0-based step) -> coefficient.
      clip_norm: per-variable gradient clipping (> 0), 0 = none.
      group: optional :class:`~dualssl_tf.optim.rate_groups.RateGroup` (e.g. a method's
        predictor): its variables take ``multiplier`` x the rate, with ``fixed`` the
        :func:`peak_rate` at every step. None or a default group: the optimizer of the
        same arguments without a group. Refused (ValueError) with decoupled weight decay
        > 0, which Keras applies at one rate for all variables.
    Returns:
      a keras.optimizers.Optimizer.
    """
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"weight_decay_mode={weight_decay_mode!r}: allowed "
                         f"{', '.join(WEIGHT_DECAY_MODES)}")
    exclude = list(exclude_from_decay or ())
    if name == "lars":
        cls, kwargs = LARS, dict(momentum=momentum, weight_decay=weight_decay, eta=eta,
                                 exclude_from_decay=exclude)
    elif weight_decay_mode == "coupled" and name in ("sgd", "adam"):
        cls, kwargs = ((CoupledSGD, dict(momentum=momentum)) if name == "sgd"
                       else (CoupledAdam, {}))
        kwargs.update(weight_decay=weight_decay, exclude_from_decay=exclude)
    elif weight_decay_mode == "coupled" and name == "adamw":
        raise ValueError("weight_decay_mode='coupled': AdamW's decay is decoupled by "
                         "definition; Adam with L2 in the gradient is optimizer='adam'")
    elif name == "sgd":
        cls, kwargs = keras.optimizers.SGD, dict(momentum=momentum,
                                                 weight_decay=weight_decay or None)
    elif name == "adam":
        cls, kwargs = keras.optimizers.Adam, dict(weight_decay=weight_decay or None)
    elif name == "adamw":
        cls, kwargs = keras.optimizers.AdamW, dict(weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer={name!r}: allowed {', '.join(OPTIMIZERS)}")
    mixins = []
    if clip_norm:
        mixins.append(_PerVariableClip)
        kwargs["clip_norm"] = clip_norm
    if weight_decay_schedule is not None:
        # The schedule replaces the class's own constant decay, in the same form.
        coupled = name == "lars" or weight_decay_mode == "coupled"
        # (Keras' AdamW is its Adam with the decoupled decay it insists be a float.)
        cls = {CoupledSGD: keras.optimizers.SGD, CoupledAdam: keras.optimizers.Adam,
               keras.optimizers.AdamW: keras.optimizers.Adam}.get(cls, cls)
        for key in ("weight_decay", "exclude_from_decay"):
            kwargs.pop(key, None)
        if cls is LARS:   # its trust ratio keeps its exclusions
            kwargs.update(weight_decay=0.0, exclude_from_adaptation=exclude)
        else:
            kwargs["weight_decay"] = None
        mixins.append(_ScheduledDecay)
        kwargs.update(weight_decay_schedule=weight_decay_schedule,
                      decay_form="coupled" if coupled else "decoupled",
                      exclude_from_decay=exclude)
    base, cls = cls, with_mixins(cls, *mixins)
    if group is not None and not group.is_default:
        return grouped(cls, group.variables, group.multiplier,
                       peak_rate(learning_rate) if group.fixed else None,
                       learning_rate=learning_rate, **kwargs)
    opt = cls(learning_rate, **kwargs)
    if weight_decay and exclude and kwargs.get("weight_decay") and base in (
            keras.optimizers.SGD, keras.optimizers.Adam, keras.optimizers.AdamW):
        opt.exclude_from_weight_decay(var_names=exclude)
    return opt
