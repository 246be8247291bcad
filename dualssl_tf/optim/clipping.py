"""Per-variable gradient clipping as DINO does it (facebookresearch/dino
``utils.clip_gradients``): each variable's gradient g is scaled, on its own, to a norm of at
most c::

    g <- g * min(1, c / (||g||_2 + 1e-6))

(not one global norm over all variables as ``torch.nn.utils.clip_grad_norm_``). Applied in
``update_step`` (the mixin :class:`_PerVariableClip` before a Keras optimizer class), so it
sees the gradient of the GLOBAL batch: Keras' own ``clipnorm`` clips each replica's share
before the replicas' gradients are summed, which under a distribution strategy is not the
one-device update. The gradient is clipped before any coupled weight decay is added to it
(DINO clips ``p.grad``; the optimizer's step adds its decay after), and a
``LossScaleOptimizer`` hands it over unscaled.
"""

from keras import ops

# DINO's guard on the norm (utils.clip_gradients).
CLIP_EPS = 1e-6


def clip_by_norm(gradient, clip_norm):
    """``gradient * min(1, clip_norm / (||gradient|| + 1e-6))`` (any shape)."""
    norm = ops.sqrt(ops.sum(ops.square(gradient)))
    coef = ops.cast(clip_norm, gradient.dtype) / (norm + ops.cast(CLIP_EPS, gradient.dtype))
    return gradient * ops.minimum(coef, ops.cast(1.0, gradient.dtype))


class _PerVariableClip:
    """Mixin before a Keras optimizer class: each variable's gradient clipped to a norm of
    ``clip_norm`` (> 0) by :func:`clip_by_norm`, then the class's ``update_step``."""

    def __init__(self, *args, clip_norm=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not clip_norm > 0:
            raise ValueError(f"clip_norm={clip_norm}: must be > 0")
        self.clip_norm = float(clip_norm)

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(clip_by_norm(gradient, self.clip_norm), variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["clip_norm"] = self.clip_norm
        return config
