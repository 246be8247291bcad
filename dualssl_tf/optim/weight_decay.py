"""A weight decay whose coefficient follows a schedule (DINO's 0.04 -> 0.4 cosine).

DINO (facebookresearch/dino ``main_dino.py``) sets, before step ``it`` (0-based, over the
run's ``T = epochs * steps_per_epoch`` steps), the regularised parameter group's AdamW
``weight_decay`` to ``utils.cosine_scheduler(wd, wd_end, epochs, steps_per_epoch)[it]``::

    wd(t) = wd_end + (wd - wd_end) (1 + cos(pi t / T)) / 2          (t clipped to T)

Keras holds one constant ``weight_decay`` per optimizer and applies it outside
``update_step``, so a scheduled coefficient is applied here, in ``update_step`` (the
mixin :class:`_ScheduledDecay` before a Keras optimizer class whose own decay is off),
in the form of the run's ``--weight_decay_mode``:

* ``decoupled`` (sgd, adam, adamw): ``w -= lr * wd(t) * w`` before the class's update,
  as Keras' own decoupled decay and PyTorch's AdamW (``p *= 1 - lr * wd``) do;
* ``coupled`` (sgd, adam with ``--weight_decay_mode=coupled``; lars): ``wd(t) * w`` added
  to the gradient before the class's update (PyTorch's SGD/Adam, SimCLR's LARS).

``lr`` is the rate ``update_step`` receives (a learning-rate group's, see
:mod:`dualssl_tf.optim.rate_groups`, as PyTorch decays a parameter group at its own rate).
The step is the optimizer's ``iterations`` before its increment, so a resumed run (whose
checkpoint holds ``iterations``) continues the schedule where it stopped. Variables are
excluded as :mod:`dualssl_tf.optim.coupled_decay` excludes them (``re.search`` of the
names in ``variable.name``; biases and norm parameters by default, DINO's
``get_params_groups`` rule for its networks).
"""

import math

import keras
from keras import ops

from dualssl_tf.optim.lars import DEFAULT_EXCLUDE, decay_mask

DECAY_FORMS = ("decoupled", "coupled")


@keras.saving.register_keras_serializable(package="dualssl_tf")
class CosineWeightDecay:
    """``wd(t) = end + (start - end) (1 + cos(pi min(t, T) / T)) / 2``: DINO's per-step
    cosine from ``start`` (step 0) towards ``end`` over ``total_steps`` T.

    Example:
      >>> wd = CosineWeightDecay(0.04, 0.4, total_steps=1000)
      >>> float(wd(0)), round(float(wd(500)), 6)
      (0.04, 0.22)
    """

    def __init__(self, start, end, total_steps):
        if total_steps < 1 or start < 0 or end < 0:
            raise ValueError(f"need start ({start}) >= 0, end ({end}) >= 0 and total_steps "
                             f"({total_steps}) >= 1")
        self.start, self.end = float(start), float(end)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        """The coefficient at (0-based) ``step``: float32 scalar tensor."""
        progress = ops.minimum(ops.cast(step, "float32"), float(self.total_steps))
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress / self.total_steps))
        return self.end + (self.start - self.end) * cosine

    def get_config(self):
        return {"start": self.start, "end": self.end, "total_steps": self.total_steps}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _ScheduledDecay:
    """Mixin before a Keras optimizer class (whose own weight decay is off): the decay of
    ``weight_decay_schedule(iterations)`` in ``decay_form`` (see the module docstring).

    Args (besides the optimizer's own):
      weight_decay_schedule: callable (0-based step) -> coefficient, e.g.
        :class:`CosineWeightDecay`.
      decay_form: ``decoupled`` | ``coupled``.
      exclude_from_decay: regular expressions searched in ``variable.name``; a match is not
        decayed.
    """

    def __init__(self, *args, weight_decay_schedule=None, decay_form="decoupled",
                 exclude_from_decay=DEFAULT_EXCLUDE, **kwargs):
        super().__init__(*args, **kwargs)
        if weight_decay_schedule is None:
            raise ValueError("weight_decay_schedule: required (e.g. CosineWeightDecay)")
        if decay_form not in DECAY_FORMS:
            raise ValueError(f"decay_form={decay_form!r}: allowed {', '.join(DECAY_FORMS)}")
        self.weight_decay_schedule = weight_decay_schedule
        self.decay_form = decay_form
        self.scheduled_exclude = tuple(exclude_from_decay or ())

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._scheduled_decay = decay_mask(variables, self.scheduled_exclude)

    def update_step(self, gradient, variable, learning_rate):
        # Under tf.distribute the gradient is already the replicas' sum (the global batch's)
        # and this runs once per mirrored copy, as the coupled decay does.
        if self._scheduled_decay[self._get_variable_index(variable)]:
            wd = ops.cast(self.weight_decay_schedule(self.iterations), variable.dtype)
            if self.decay_form == "coupled":
                gradient = ops.cast(gradient, variable.dtype) + wd * variable
            else:
                self.assign_sub(variable, ops.cast(learning_rate, variable.dtype) * wd
                                * variable)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update({"weight_decay_schedule": keras.saving.serialize_keras_object(
                           self.weight_decay_schedule),
                       "decay_form": self.decay_form,
                       "exclude_from_decay": list(self.scheduled_exclude)})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["weight_decay_schedule"] = keras.saving.deserialize_keras_object(
            config["weight_decay_schedule"], custom_objects=custom_objects)
        return super().from_config(config, custom_objects=custom_objects)
