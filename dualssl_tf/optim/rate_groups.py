"""A learning-rate group: some variables take a multiple of the rate, or a fixed rate.

PyTorch gives a parameter group its own ``lr``; BYOL/SimSiam code uses one for the
predictor: SimSiam's paper and solo-learn keep the predictor's rate fixed at the base rate
while the schedule decays the rest (``fix_lr`` / ``static_lr``), and the predictor's rate
relative to the rest is the alpha_p of Tian, Chen & Ganguli 2021's analysis (DirectPred).
Keras 3 has one rate per optimizer, so the group is a mixin before the optimizer's class:
each step, the group's variables reach the class's own ``update_step`` with::

    lr_group = multiplier * (fixed_rate if fixed_rate is not None else lr(step))

and the other variables with ``lr(step)``. The optimizer's state (velocities, moments,
``iterations``) is the class's own, so checkpoints and resumption are unchanged; the group
is configuration, decided once per variable at ``build`` by identity
(:meth:`_RateGroup.set_group`).

Exactness: every rule the rate enters through ``update_step`` scales as a PyTorch group
``lr`` would: SGD's velocity (Keras keeps it in units of ``lr * g``), Adam's step, LARS'
``lr * trust ratio``, and coupled weight decay (in the gradient). Keras' *decoupled* decay
``w -= lr * wd * w`` runs outside ``update_step`` with the optimizer's single rate, so it
would not follow the group: :func:`grouped` refuses it (weight decay 0 or coupled only).
Scaling the predictor's gradient instead would be exact only for SGD without weight decay
(Adam and LARS divide the scale out, coupled decay adds ``wd * w`` unscaled), and cannot
give a fixed rate under a schedule that passes through 0 (warmup's first step).
"""

import dataclasses

import keras
from keras import ops

from dualssl_tf.optim.coupled_decay import CoupledAdam, CoupledSGD
from dualssl_tf.optim.lars import LARS


class _RateGroup:
    """Mixin before a Keras optimizer class (see the module docstring).

    Args (besides the optimizer's own):
      group_multiplier: factor (> 0) on the group's rate.
      group_fixed_rate: None (the group follows the schedule) or the rate (> 0) it keeps at
        every step, before ``group_multiplier``.
    """

    def __init__(self, *args, group_multiplier=1.0, group_fixed_rate=None, **kwargs):
        super().__init__(*args, **kwargs)
        if not group_multiplier > 0:
            raise ValueError(f"group_multiplier={group_multiplier}: must be > 0")
        if group_fixed_rate is not None and not group_fixed_rate > 0:
            raise ValueError(f"group_fixed_rate={group_fixed_rate}: must be > 0 or None")
        self.group_multiplier = float(group_multiplier)
        self.group_fixed_rate = None if group_fixed_rate is None else float(group_fixed_rate)
        self._group_ids = frozenset()

    def set_group(self, variables):
        """The group's variables (before the optimizer is built)."""
        if self.built:
            raise ValueError("set_group: the optimizer is already built; set the group first")
        self._group_ids = frozenset(id(v) for v in variables)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # By index, as LARS: under tf.distribute update_step may get a per-replica handle.
        self._in_group = [id(v) in self._group_ids for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        if self._in_group[self._get_variable_index(variable)]:
            rate = (learning_rate if self.group_fixed_rate is None
                    else ops.convert_to_tensor(self.group_fixed_rate, "float32"))
            # The product in float32 as Keras holds the rate; a multiplier of 1 adds no op.
            if self.group_multiplier != 1.0:
                rate = ops.cast(rate, "float32") * self.group_multiplier
            learning_rate = rate
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update({"group_multiplier": self.group_multiplier,
                       "group_fixed_rate": self.group_fixed_rate})
        return config


def _grouped_class(base):
    name = f"{base.__name__}RateGroup"
    cls = type(name, (_RateGroup, base), {
        "__doc__": f"``{base.__name__}`` with a learning-rate group "
                   "(:mod:`dualssl_tf.optim.rate_groups`)."})
    return keras.saving.register_keras_serializable(package="dualssl_tf", name=name)(cls)


# One class per optimizer :func:`dualssl_tf.optim.schedules.build_optimizer` makes (and,
# made when first asked for, one per subclass of these it makes with mixins).
_BASES = (keras.optimizers.SGD, keras.optimizers.Adam, keras.optimizers.AdamW, LARS, CoupledSGD,
          CoupledAdam)
GROUPED = {base: _grouped_class(base) for base in _BASES}


@dataclasses.dataclass(frozen=True)
class RateGroup:
    """What a method asks of its optimizer: ``variables`` (e.g. the predictor's) take
    ``multiplier`` x the rate, and with ``fixed`` the schedule's peak (base) rate at every
    step instead of the scheduled one (SimSiam's ``fix_lr``, solo-learn's ``static_lr``)."""
    variables: tuple
    multiplier: float = 1.0
    fixed: bool = False

    @property
    def is_default(self):
        """Whether the group is the rest's rate (no group needed)."""
        return self.multiplier == 1.0 and not self.fixed


def decays_outside_update(optimizer):
    """Whether ``optimizer`` applies Keras' decoupled weight decay (outside update_step)."""
    return bool(getattr(optimizer, "weight_decay", None))


def grouped(base, variables, multiplier=1.0, fixed_rate=None, **kwargs):
    """``base(**kwargs)`` (an optimizer class of :data:`GROUPED`'s keys or a subclass of
    one) with ``variables`` as its rate group. ValueError for an optimizer with Keras'
    decoupled weight decay (see the module docstring).

    Example:
      >>> opt = grouped(keras.optimizers.SGD, model.predictor.trainable_variables,
      ...               multiplier=10.0, learning_rate=0.05, momentum=0.9)
    """
    if base not in GROUPED:
        if not any(issubclass(base, b) for b in _BASES):
            raise ValueError(f"no rate group for {base.__name__}: allowed "
                             f"{', '.join(b.__name__ for b in _BASES)} and their subclasses")
        GROUPED[base] = _grouped_class(base)   # e.g. with clipping (optim/clipping.py)
    opt = GROUPED[base](group_multiplier=multiplier, group_fixed_rate=fixed_rate, **kwargs)
    if decays_outside_update(opt):
        raise ValueError(f"{base.__name__}: Keras' decoupled weight decay uses one rate for "
                         "every variable, so a rate group cannot scale it; use weight decay "
                         "0 or the coupled form (weight_decay_mode='coupled')")
    opt.set_group(variables)
    return opt
