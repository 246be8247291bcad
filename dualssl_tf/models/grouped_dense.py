"""GroupedDense: independent fully connected layers applied to groups of features."""

import math

import keras
import numpy as np
from keras import ops


def derive_seed(*entropy):
    """An int seed in [0, 2**31) mixed from ints (``numpy.random.SeedSequence``): distinct
    entropy tuples give independent streams (e.g. (run seed, depth, 0 = kernel / 1 = bias))."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0] >> 1)


class GroupedDense(keras.layers.Layer):
    """``y[:, g] = x[:, g] @ kernel[g] + bias[g]`` for each of ``groups`` groups.

    The block-diagonal layer behind the HLTM tree network: each latent's group of units is
    fully connected to its own children's units and to nothing else. Initialised like
    PyTorch's ``nn.Linear`` (uniform in +-1/sqrt(fan_in), bias too), as in the paper's code,
    so lucky-node statistics at initialisation match it. Kernel and bias are independent
    draws (as in ``nn.Linear``): one seeded initializer shared by both would hand Keras'
    same stream to each, giving ``bias == kernel.ravel()[:bias.size]``.

    Args:
      groups: number of groups g.
      units: output units per group.
      use_bias: add a per-group bias.
      seed: int, or None for Keras' global seed stream; the kernel is drawn from
        ``derive_seed(seed, 0)``, the bias from ``derive_seed(seed, 1)``. A list of S ints
        makes S *blocks* of ``groups`` groups each (S independent experiments side by side,
        e.g. HLTM seeds): block s is drawn exactly as a layer with ``seed=seeds[s]``.

    Input [B, S*g, fan_in] -> output [B, S*g, units]. Kernel [S*g, fan_in, units] (S = 1
    without a seed list). ``call(x, block=s)`` applies block s alone to x [B, g, fan_in].

    Example:
      >>> layer = GroupedDense(groups=16, units=10)
      >>> y = layer(keras.ops.ones([4, 16, 2]))   # [4, 16, 10]
    """

    def __init__(self, groups, units, use_bias=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        self.units = units
        self.use_bias = use_bias
        self.seed = list(seed) if isinstance(seed, (list, tuple)) else seed
        self.blocks = len(self.seed) if isinstance(self.seed, list) else 1

    def build(self, input_shape):
        fan_in = input_shape[-1]
        bound = 1.0 / math.sqrt(fan_in)

        seeds = self.seed if isinstance(self.seed, list) else [self.seed]

        def init(which):  # a fresh initializer per weight and block: independent streams
            inits = [keras.initializers.RandomUniform(
                -bound, bound, seed=None if s is None else derive_seed(s, which))
                for s in seeds]

            def draw(shape, dtype=None):
                block = (shape[0] // self.blocks, *shape[1:])
                parts = [i(block, dtype=dtype) for i in inits]
                return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=0)
            return draw

        g = self.blocks * self.groups
        self.kernel = self.add_weight(name="kernel", shape=(g, fan_in, self.units),
                                      initializer=init(0))
        self.bias = (self.add_weight(name="bias", shape=(g, self.units),
                                     initializer=init(1)) if self.use_bias else None)

    def call(self, x, block=None):
        kernel, bias = self.kernel, self.bias
        if block is not None:  # block s alone: its slice of the groups
            start = block * self.groups
            kernel = ops.slice(kernel, (start, 0, 0), (self.groups, *kernel.shape[1:]))
            bias = ops.slice(bias, (start, 0), (self.groups, self.units)) if self.use_bias else None
        y = ops.einsum("bgi,giu->bgu", x, kernel)
        return y + bias if self.use_bias else y

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(groups=self.groups, units=self.units, use_bias=self.use_bias,
                      seed=self.seed)
        return config
