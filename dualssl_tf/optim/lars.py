"""LARS: layer-wise adaptive rate scaling (You et al. 2017), as used by SimCLR.

For each variable w with gradient g, per step (SimCLR's ``LARSOptimizer``)::

    g'    = g + wd * w                         (unless w is excluded from weight decay)
    ratio = eta * ||w|| / ||g'||               (1 if either norm is 0, or w is excluded
                                                from adaptation)
    v     = momentum * v + lr * ratio * g'
    w     = w - v

Biases and BatchNorm parameters are excluded from both weight decay and adaptation by
matching substrings of ``variable.path`` (default: ``bias``, ``gamma``, ``beta``).
"""

import re

import keras
from keras import ops

# Substrings of variable.path excluded by default: biases and BatchNorm scale/shift.
DEFAULT_EXCLUDE = ("bias", "gamma", "beta")


def decay_mask(variables, exclude):
    """One bool per variable, by index: True where no pattern of ``exclude`` is found in
    ``variable.name`` (``re.search`` of ``"|".join(exclude)``), i.e. the variable decays.
    By index because under tf.distribute ``update_step`` may get a per-replica handle, and
    on ``.name`` (not ``.path``) to decay exactly what Keras' decoupled path decays."""
    pattern = "|".join(exclude or ())
    return [not pattern or re.search(pattern, v.name) is None for v in variables]


@keras.saving.register_keras_serializable(package="dualssl_tf")
class LARS(keras.optimizers.Optimizer):
    """LARS optimizer (Keras 3, any backend).

    Args:
      learning_rate: float or a ``LearningRateSchedule``.
      momentum: heavy-ball momentum in [0, 1).
      weight_decay: L2 coefficient added to the gradient (coupled, as in SimCLR), >= 0.
      eta: trust coefficient of the layer-wise ratio ``eta ||w|| / ||g||``.
      exclude_from_decay: substrings of ``variable.path``; a match skips weight decay.
      exclude_from_adaptation: substrings of ``variable.path``; a match skips the trust
        ratio (plain momentum SGD). Default: the same as ``exclude_from_decay``.
      name, kwargs: passed to ``keras.optimizers.Optimizer`` (e.g. ``clipnorm``).

    Example:
      >>> opt = LARS(learning_rate=0.3, momentum=0.9, weight_decay=1e-6)
      >>> model.compile(optimizer=opt)
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, weight_decay=0.0, eta=0.001,
                 exclude_from_decay=DEFAULT_EXCLUDE, exclude_from_adaptation=None,
                 name="lars", **kwargs):
        kwargs.pop("weight_decay", None)
        # The base class's weight decay is decoupled; LARS's is part of the gradient, so
        # the base class gets none and this class keeps its own coefficient.
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum={momentum}: must be in [0, 1)")
        if weight_decay < 0 or eta <= 0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0 and eta={eta} > 0")
        self.momentum = float(momentum)
        self.lars_weight_decay = float(weight_decay)
        self.eta = float(eta)
        self.exclude_from_decay = tuple(exclude_from_decay or ())
        self.exclude_from_adaptation = tuple(
            self.exclude_from_decay if exclude_from_adaptation is None
            else exclude_from_adaptation)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        # Decided once per variable from its path; update_step looks them up by index
        # (under tf.distribute it may receive a per-replica handle without a path).
        paths = [getattr(v, "path", v.name) for v in variables]
        self._decay = [not any(s in p for s in self.exclude_from_decay) for p in paths]
        self._adapt = [not any(s in p for s in self.exclude_from_adaptation) for p in paths]

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        if self._decay[i] and self.lars_weight_decay > 0:
            g = g + ops.cast(self.lars_weight_decay, dtype) * variable
        if self._adapt[i]:
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(g)))
            # Divide by a safe norm: the where() must not see an inf/nan branch.
            ratio = ops.where(
                ops.logical_and(w_norm > 0, g_norm > 0),
                ops.cast(self.eta, dtype) * w_norm / ops.where(g_norm > 0, g_norm, 1.0),
                ops.ones_like(w_norm))
            lr = lr * ratio
        m = self.momentums[i]
        self.assign(m, ops.cast(self.momentum, dtype) * m + lr * g)
        self.assign_sub(variable, m)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "weight_decay": self.lars_weight_decay,
                       "eta": self.eta, "exclude_from_decay": list(self.exclude_from_decay),
                       "exclude_from_adaptation": list(self.exclude_from_adaptation)})
        return config
