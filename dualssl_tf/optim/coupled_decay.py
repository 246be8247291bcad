"""Coupled weight decay (L2 in the gradient): SGD and Adam as PyTorch defines them.

Keras' ``weight_decay`` argument is decoupled: each step it shrinks ``w -= lr * wd * w`` apart
from the gradient (Loshchilov & Hutter's AdamW form, also for SGD). PyTorch's
``torch.optim.SGD(weight_decay=)`` and ``torch.optim.Adam(weight_decay=)`` add the L2 term
to the gradient instead, before momentum / the moment estimates::

    g' = g + wd * w                 (unless w is excluded from weight decay)
    (the optimizer's own update with g' in place of g)

With momentum m the coupled decay accumulates in the velocity: with a zero gradient its
shrinkage per step approaches ``lr * wd / (1 - m)``, 10x Keras' ``lr * wd`` at m = 0.9.
With Adam it is divided by sqrt(v) like the gradient, unlike AdamW's.

Variables are excluded by the rule Keras' decoupled path uses after
``exclude_from_weight_decay(var_names=...)`` in :func:`dualssl_tf.optim.build_optimizer`:
``re.search("|".join(names), variable.name)``, decided once per variable at ``build``.
"""

import keras
from keras import ops

from dualssl_tf.optim.lars import DEFAULT_EXCLUDE, decay_mask


class _CoupledDecay:
    """Mixin before a Keras optimizer class: adds ``wd * w`` to each gradient, then runs
    that class's ``update_step``. Its own (decoupled) ``weight_decay`` stays None."""

    def __init__(self, *args, weight_decay=0.0, exclude_from_decay=DEFAULT_EXCLUDE, **kwargs):
        super().__init__(*args, weight_decay=None, **kwargs)
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay}: must be >= 0")
        self.coupled_weight_decay = float(weight_decay)
        self.exclude_from_decay = tuple(exclude_from_decay or ())

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._decay = decay_mask(variables, self.exclude_from_decay)

    def update_step(self, gradient, variable, learning_rate):
        # Under tf.distribute Keras all-reduces (sums) the replicas' gradients before
        # update_step, which then runs once per mirrored copy with that same sum and the
        # same w: the L2 term is added once per step, as on one device (the loss is
        # already divided by the replica count, so the sum is the global-batch gradient).
        # With a LossScaleOptimizer the gradient arrives here already unscaled.
        if self.coupled_weight_decay > 0 and self._decay[self._get_variable_index(variable)]:
            # convert_to_tensor, not cast: cast would round wd to float32 first.
            wd = ops.convert_to_tensor(self.coupled_weight_decay, dtype=variable.dtype)
            gradient = ops.cast(gradient, variable.dtype) + wd * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update({"weight_decay": self.coupled_weight_decay,
                       "exclude_from_decay": list(self.exclude_from_decay)})
        return config


@keras.saving.register_keras_serializable(package="dualssl_tf")
class CoupledSGD(_CoupledDecay, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` with PyTorch's weight decay (``wd * w`` added to the
    gradient before momentum). With a constant learning rate the update equals
    ``torch.optim.SGD(lr, momentum, weight_decay=wd)``'s (dampening 0): Keras keeps the
    velocity in units of ``lr * g``, PyTorch in units of ``g``, which differ only when the
    rate changes between steps.

    Args:
      learning_rate, momentum, nesterov, name, kwargs: as ``keras.optimizers.SGD``.
      weight_decay: L2 coefficient (>= 0) added to the gradient.
      exclude_from_decay: regular expressions (plain substrings by default) searched in
        ``variable.name``; a match is not decayed.

    Example:
      >>> opt = CoupledSGD(0.03, momentum=0.9, weight_decay=4e-4)
    """


@keras.saving.register_keras_serializable(package="dualssl_tf")
class CoupledAdam(_CoupledDecay, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with PyTorch's ``Adam(weight_decay=)``: ``wd * w`` added
    to the gradient before the moment estimates (L2 regularisation, not AdamW's decay).
    Keras' epsilon placement is kept: Keras adds ``epsilon`` to ``sqrt(v)`` before the bias
    correction, so it acts as PyTorch's ``epsilon / sqrt(1 - beta_2^t)``.

    Args:
      learning_rate, beta_1, beta_2, epsilon, name, kwargs: as ``keras.optimizers.Adam``.
      weight_decay, exclude_from_decay: as :class:`CoupledSGD`.
    """
