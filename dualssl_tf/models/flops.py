"""FLOPs of the networks, counted from their Keras layers (for throughput and MFU).

Analytic: every ``Conv2D`` and ``Dense`` layer of a functional model (nested models
included) contributes its multiply-adds x 2, from its kernel and output shapes (a Dense on
tokens [B, T, D] once per token), and a layer with a ``forward_flops(tokens)`` method (the
ViT's self-attention: its projections and the two T x T attention matmuls) its own count;
BatchNorm, LayerNorm, ReLU, GELU, softmax, pooling, additions and the loss are not counted
(a few % of a ResNet's or a ViT's FLOPs).
Training costs 3 x the forward pass (forward, gradient of the input, gradient of the
weights), less the first convolution's input gradient, which nothing needs.
"""

import math

import keras


def forward_flops(model):
    """``{"total": F, "first_conv": F0}``: forward FLOPs of one example through ``model``
    (a built functional Keras model) and those of its first Conv2D (0 when none)."""
    total, first = 0, None
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            f = 2 * h * w * kh * kw * cin * cout // layer.groups
            first = f if first is None else first
            total += f
        elif isinstance(layer, keras.layers.Dense):
            tokens = math.prod(layer.output.shape[1:-1])
            total += 2 * tokens * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif callable(getattr(layer, "forward_flops", None)):
            total += layer.forward_flops(int(layer.output.shape[1]))
        elif isinstance(layer, keras.Model):
            inner = forward_flops(layer)
            total += inner["total"]
            if first is None and inner["first_conv"]:
                first = inner["first_conv"]
    return {"total": int(total), "first_conv": int(first or 0)}


def simclr_train_flops(encoder, head=None, probe_classes=0):
    """``(train FLOPs per pair, forward FLOPs per view)`` of a SimCLR step: both views
    through encoder and head, ``3 x forward - first conv`` each, plus an online linear
    probe of ``probe_classes`` outputs on one view's representation (x3)."""
    enc = forward_flops(encoder)
    fwd = enc["total"] + (forward_flops(head)["total"] if head is not None else 0)
    rep = int(encoder.output_shape[-1])
    return 2 * (3 * fwd - enc["first_conv"]) + 3 * 2 * rep * probe_classes, fwd
