"""ResNet-18 / ResNet-50 encoders (He et al. 2016) as Keras functional models.

The representation is the global-average-pooled output of the last stage: [B, 512 w] for
ResNet-18 and [B, 2048 w] for ResNet-50, w the width multiplier (no classifier layer).

Two stems (the paper uses the CIFAR one, also for STL-10; docs/theory.md section 6):

* ``"cifar"``: 3x3 conv, stride 1, no max-pool (total downsampling 8x);
* ``"imagenet"``: 7x7 conv, stride 2, then 3x3 max-pool stride 2 (total 32x);
* ``"auto"``: ``imagenet`` for images of 96 px and up, else ``cifar``.

Convolutions have no bias (each is followed by BatchNorm) and He-normal (fan-out)
initialisation as torchvision; BatchNorm uses momentum 0.9 and epsilon 1e-5 (torchvision's
0.1 / 1e-5) and becomes cross-replica (``synchronized=True``) with ``sync_bn``. BatchNorm
is :class:`~dualssl_tf.models.batchnorm.FusedBatchNormalization` (a
``keras.layers.BatchNormalization`` run as one fused kernel, same variables and results):
Keras' own element-wise version costs ~10% of a CPU train step. Variables have paths
``<layer>/{kernel,gamma,beta}`` so optimizers can
exclude BatchNorm parameters by path (see :mod:`dualssl_tf.optim.lars`).
"""

import keras

from dualssl_tf.models.batchnorm import FusedBatchNormalization
from dualssl_tf.models.stems import MIN_IMAGE_SIZE, STEMS, resolve_stem  # noqa: F401

# Blocks per stage and block type for each depth.
_SPECS = {18: ((2, 2, 2, 2), "basic"), 50: ((3, 4, 6, 3), "bottleneck")}


def _conv(filters, kernel, stride, name):
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                               kernel_initializer=keras.initializers.VarianceScaling(
                                   2.0, mode="fan_out", distribution="untruncated_normal"),
                               name=name)


def _bn(sync_bn, name):
    return FusedBatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=sync_bn,
                                   name=name)


def _basic_block(x, filters, stride, sync_bn, name):
    """Two 3x3 convs; output channels = filters."""
    shortcut = x
    y = _conv(filters, 3, stride, f"{name}_conv1")(x)
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(sync_bn, f"{name}_bn1")(y))
    y = _conv(filters, 3, 1, f"{name}_conv2")(y)
    y = _bn(sync_bn, f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _bn(sync_bn, f"{name}_down_bn")(
            _conv(filters, 1, stride, f"{name}_down_conv")(x))
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")(
        [y, shortcut]))


def _bottleneck_block(x, filters, stride, sync_bn, name):
    """1x1 -> 3x3 (strided, as torchvision v1.5) -> 1x1; output channels = 4 filters."""
    out = 4 * filters
    shortcut = x
    y = _conv(filters, 1, 1, f"{name}_conv1")(x)
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(sync_bn, f"{name}_bn1")(y))
    y = _conv(filters, 3, stride, f"{name}_conv2")(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(_bn(sync_bn, f"{name}_bn2")(y))
    y = _conv(out, 1, 1, f"{name}_conv3")(y)
    y = _bn(sync_bn, f"{name}_bn3")(y)
    if stride != 1 or x.shape[-1] != out:
        shortcut = _bn(sync_bn, f"{name}_down_bn")(_conv(out, 1, stride,
                                                          f"{name}_down_conv")(x))
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")(
        [y, shortcut]))


def resnet(depth=18, image_size=32, stem="auto", width_multiplier=1.0, sync_bn=False,
           channels=3, name=None):
    """Builds a ResNet encoder ``x [B, S, S, C] float32 -> representation [B, R]``.

    Args:
      depth: 18 (basic blocks, R = 512 w) or 50 (bottlenecks, R = 2048 w).
      image_size: input side S (the model's input shape is fixed to S x S).
      stem: ``"cifar"`` | ``"imagenet"`` | ``"auto"`` (see the module docstring).
      width_multiplier: w; stage widths are ``max(1, round(64 w)) * (1, 2, 4, 8)``.
      sync_bn: cross-replica BatchNorm (under a tf.distribute strategy).
      channels: input channels C.
      name: model name, default ``resnet<depth>``.
    Returns:
      keras.Model (functional, so ``get_config`` / ``from_config`` round-trip); its
      ``output_shape[-1]`` is R.

    Example:
      >>> enc = resnet(18, image_size=32, stem="cifar", width_multiplier=0.25)
      >>> enc(tf.zeros([2, 32, 32, 3])).shape
      TensorShape([2, 128])
    """
    if depth not in _SPECS:
        raise ValueError(f"depth={depth}: allowed {sorted(_SPECS)}")
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier={width_multiplier}: must be > 0")
    stem = resolve_stem(stem, image_size)
    if image_size < MIN_IMAGE_SIZE[stem]:
        raise ValueError(f"image_size={image_size} is too small for the {stem} stem "
                         f"(needs >= {MIN_IMAGE_SIZE[stem]}); use stem='cifar' or larger "
                         "images")
    blocks, kind = _SPECS[depth]
    block_fn = _basic_block if kind == "basic" else _bottleneck_block
    base = max(1, int(round(64 * width_multiplier)))

    inputs = keras.Input([image_size, image_size, channels], name="image")
    if stem == "cifar":
        x = _conv(base, 3, 1, "stem_conv")(inputs)
        x = keras.layers.ReLU(name="stem_relu")(_bn(sync_bn, "stem_bn")(x))
    else:
        x = _conv(base, 7, 2, "stem_conv")(inputs)
        x = keras.layers.ReLU(name="stem_relu")(_bn(sync_bn, "stem_bn")(x))
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, num in enumerate(blocks):
        for b in range(num):
            stride = 2 if (stage > 0 and b == 0) else 1
            x = block_fn(x, base * 2 ** stage, stride, sync_bn, f"layer{stage + 1}_{b}")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name=name or f"resnet{depth}")


def resnet18(**kwargs):
    """:func:`resnet` with depth 18."""
    return resnet(18, **kwargs)


def resnet50(**kwargs):
    """:func:`resnet` with depth 50."""
    return resnet(50, **kwargs)
