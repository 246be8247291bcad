"""One-layer circular-convolution ReLU encoder of the 1-D translation toy (Figure 3)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dualssl_tf")
class CircularConv1D(keras.layers.Layer):
    """1-D convolution with circular (wrap-around) padding, stride 1, "same" length.

    The signal is extended by its own last ``kernel_size - 1`` cells on the left (a concat,
    so the translation toy's circular shifts commute with the layer exactly), then a VALID
    convolution is applied. ``y[:, i] = sum_t x[:, (i - (k-1) + t) mod d] . kernel[t]``.

    Args:
      filters: output channels.
      kernel_size: k >= 1 (at most the signal length).
      use_bias: add a bias (off by default: the bias-free net keeps reversibility).
      kernel_initializer: Keras initializer.

    Input [B, d, C] -> output [B, d, filters]. Kernel [k, C, filters].

    Example:
      >>> conv = CircularConv1D(filters=8, kernel_size=3)
      >>> y = conv(keras.ops.ones([2, 12, 1]))     # [2, 12, 8]
    """

    def __init__(self, filters, kernel_size=3, use_bias=False,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel",
                                      shape=(self.kernel_size, input_shape[-1], self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
                     if self.use_bias else None)

    def call(self, x):
        if self.kernel_size > 1:
            x = ops.concatenate([x[:, -(self.kernel_size - 1):], x], axis=1)
        y = ops.conv(x, self.kernel, strides=1, padding="valid")
        return y + self.bias if self.use_bias else y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      use_bias=self.use_bias,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


def conv1d_encoder(length, filters=8, kernel_size=3, pooling="avg", use_bias=False,
                   seed=None, dtype=None, name="conv1d_encoder"):
    """x [B, length, 1] -> relu(circular conv) -> global pooling over positions -> [B, filters].

    Pooling over all positions makes the representation exactly translation invariant for
    circular shifts, so learning must pick *what* each filter detects, not where.

    Args:
      length: signal length d; filters: number of filters; kernel_size: k <= d.
      pooling: "avg" or "max".
      use_bias: conv bias (off: bias-free net, reversible f = K^T vec(W)).
      seed: initializer seed; dtype: layer dtype (e.g. "float64" for analysis).
    Returns:
      A built keras.Model named ``name`` whose conv layer is named "conv".
    """
    if not 1 <= kernel_size <= length:
        raise ValueError(f"kernel_size: must be in [1, length={length}], got {kernel_size}")
    if pooling not in ("avg", "max"):
        raise ValueError(f"pooling: expected 'avg' or 'max', got {pooling!r}")
    inp = keras.Input((length, 1), dtype=dtype)
    h = CircularConv1D(filters, kernel_size, use_bias=use_bias, dtype=dtype, name="conv",
                       kernel_initializer=keras.initializers.GlorotUniform(seed))(inp)
    h = keras.layers.ReLU(dtype=dtype, name="relu")(h)
    pool = (keras.layers.GlobalAveragePooling1D if pooling == "avg"
            else keras.layers.GlobalMaxPooling1D)
    out = pool(dtype=dtype, name="pool")(h)
    return keras.Model(inp, out, name=name)
