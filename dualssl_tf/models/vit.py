"""Vision Transformer encoders (Dosovitskiy et al. 2021) as Keras functional models, after
the DeiT / timm ``VisionTransformer`` definition.

``x [B, S, S, C] -> representation [B, D]``, the final-LayerNorm output of the [CLS] token
(timm's ``global_pool="token"``, no classifier). The layers, in order:

* ``patch_embed``: Conv2D of kernel = stride = patch P (with bias), flattened to the
  N = (S / P)^2 patch tokens [B, N, D] (:class:`PatchTokens`);
* ``tokens``: :class:`ClassTokenPositions`, the learned [CLS] token prepended and the
  learned position embeddings [1, 1 + N, D] added (the [CLS] token has its own; resampled
  as timm does when the image size differs from the one they were made for);
* ``block<i>`` for i < depth, pre-norm: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``,
  LayerNorm epsilon 1e-6, multi-head self-attention with a qkv bias
  (:class:`MultiHeadSelfAttention`), MLP D -> 4 D -> D with exact (erf) GELU;
* ``norm``: the final LayerNorm [B, 1 + N, D]; ``cls``: its token 0.

The model is built for one side S (its ``input_shape``, what an export's signature and
the FLOP count use) but takes any side S' that the patch divides, e.g. DINO's smaller local
crops: its ``input_spec`` asks only for rank 4 and C channels, and the position embeddings
are resampled to the (S' / P)^2 grid in the call (timm's ``dynamic_img_size``); at S they
are the stored variable itself. Each side is a static shape, so a ``tf.function`` (and
XLA) traces once per side.

Sizes (depth / width D / heads): tiny 12/192/3, small 12/384/6, base 12/768/12 (DeiT).
Initialisation as timm's: Dense and patch kernels truncated normal std 0.02, biases 0,
position embeddings std 0.02, the [CLS] token std 1e-6, LayerNorm 1 / 0. (Keras truncates at
2 std, timm at +-2 absolute; at std 0.02 that changes the tails only.)

Written here rather than taken from KerasHub: keras-hub 0.32 needs Python >= 3.11 (this
package supports 3.10) and pulls tensorflow-text, tokenizers, sentencepiece and kagglehub
into the install; its ViT also does not resample position embeddings.

Example:
  >>> enc = vit("vit_tiny", image_size=32, patch_size=4)
  >>> enc(tf.zeros([2, 32, 32, 3])).shape
  TensorShape([2, 192])
  >>> enc(tf.zeros([2, 16, 16, 3])).shape        # a 4 x 4 grid: positions resampled
  TensorShape([2, 192])
"""

import math

import keras
import numpy as np
from keras import ops

from dualssl_tf.models.stems import default_patch_size

# name -> (depth, width D, heads).
SIZES = {"vit_tiny": (12, 192, 3), "vit_small": (12, 384, 6), "vit_base": (12, 768, 12)}
LN_EPS = 1e-6
MLP_RATIO = 4


def _dense_init():
    return keras.initializers.TruncatedNormal(stddev=0.02)


def _cubic(x, a=-0.5):
    """Keys' cubic convolution kernel (PIL's and PyTorch's antialiased bicubic: a = -0.5)."""
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def resize_matrix(n_in, n_out):
    """[n_out, n_in] float64 weights of a 1-D bicubic resize as PyTorch's
    ``interpolate(mode="bicubic", antialias=True, align_corners=False)`` (timm's
    ``resample_abs_pos_embed``) computes them: pixel centres aligned, the kernel widened by
    the scale when shrinking, each row normalised to sum 1. The identity when n_in == n_out.
    """
    scale = n_in / n_out
    support = 2.0 * max(scale, 1.0)
    inv = 1.0 / max(scale, 1.0)
    m = np.zeros([n_out, n_in])
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        w = np.array([_cubic((j - centre + 0.5) * inv) for j in range(lo, hi)])
        m[i, lo:hi] = w / w.sum()
    return m


@keras.saving.register_keras_serializable(package="dualssl_tf")
class PatchTokens(keras.layers.Layer):
    """``[image [B, S, S, C], patch map [B, S/P, S/P, D]] -> patch tokens [B, (S/P)^2, D]``
    (row-major). The image is there for its side only: a side the patch P does not divide
    is a ValueError (the strided patch convolution would silently drop the last pixels)."""

    def __init__(self, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)

    def call(self, inputs):
        image, patches = inputs
        sides = tuple(image.shape[1:3])
        if any(s is not None and s % self.patch_size for s in sides):
            raise ValueError(f"a ViT of patch {self.patch_size} takes image sides that "
                             f"{self.patch_size} divides; got {sides[0]} x {sides[1]}")
        return ops.reshape(patches, (-1, patches.shape[1] * patches.shape[2],
                                     patches.shape[3]))

    def compute_output_shape(self, input_shape):
        _, (batch, h, w, dim) = input_shape
        return (batch, None if h is None or w is None else h * w, dim)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


@keras.saving.register_keras_serializable(package="dualssl_tf")
class ClassTokenPositions(keras.layers.Layer):
    """Patch tokens [B, N, D] -> [B, 1 + N, D]: the learned [CLS] token prepended, the learned
    position embeddings added.

    ``grid``: the side of the patch grid the embeddings are made for (their variable is
    [1, 1 + grid^2, D]); an input with another grid side g (N = g^2) gets them resampled to
    g x g by :func:`resize_matrix` in each direction, the [CLS] token's own left as is, as
    timm's ``resample_abs_pos_embed`` does when a model is used at another image size;
    at each call, from the grid of the tokens it gets (a static shape), so one model takes
    several sizes. At ``grid`` the embeddings are the variable itself, unresampled.
    """

    def __init__(self, grid, **kwargs):
        super().__init__(**kwargs)
        self.grid = int(grid)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.cls_token = self.add_weight(
            shape=(1, 1, dim), name="cls_token",
            initializer=keras.initializers.RandomNormal(stddev=1e-6))
        self.pos_embed = self.add_weight(
            shape=(1, 1 + self.grid ** 2, dim), name="pos_embed", initializer=_dense_init())

    def positions(self, grid):
        """Position embeddings for a ``grid`` x ``grid`` patch grid: [1, 1 + grid^2, D]."""
        if grid == self.grid:
            return self.pos_embed
        r = ops.convert_to_tensor(resize_matrix(self.grid, grid).astype("float32"))
        dim = self.pos_embed.shape[-1]
        patches = ops.reshape(self.pos_embed[:, 1:], (self.grid, self.grid, dim))
        patches = ops.einsum("ia,jb,abd->ijd", r, r, ops.cast(patches, "float32"))
        patches = ops.cast(ops.reshape(patches, (1, grid * grid, dim)), self.pos_embed.dtype)
        return ops.concatenate([self.pos_embed[:, :1], patches], axis=1)

    def call(self, x):
        grid = math.isqrt(int(x.shape[1]))
        if grid * grid != x.shape[1]:
            raise ValueError(f"ClassTokenPositions: {x.shape[1]} tokens are not a square grid")
        cls = ops.broadcast_to(ops.cast(self.cls_token, x.dtype),
                               (ops.shape(x)[0], 1, x.shape[-1]))
        return ops.concatenate([cls, x], axis=1) + ops.cast(self.positions(grid), x.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] + 1, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "grid": self.grid}


@keras.saving.register_keras_serializable(package="dualssl_tf")
class MultiHeadSelfAttention(keras.layers.Layer):
    """timm's ``Attention``: [B, T, D] -> [B, T, D]; one Dense ``qkv`` D -> 3 D (with bias;
    its output ordered [q | k | v], each split into ``heads`` heads of D / heads), softmax of
    q k^T / sqrt(D / heads) over the keys (in float32 whatever the compute dtype), then the
    Dense ``proj`` D -> D."""

    def __init__(self, heads, **kwargs):
        super().__init__(**kwargs)
        self.heads = int(heads)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if dim % self.heads:
            raise ValueError(f"width {dim} is not divisible by heads={self.heads}")
        self.qkv = keras.layers.Dense(3 * dim, kernel_initializer=_dense_init(),
                                      dtype=self.dtype_policy, name="qkv")
        self.proj = keras.layers.Dense(dim, kernel_initializer=_dense_init(),
                                       dtype=self.dtype_policy, name="proj")
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def call(self, x):
        tokens, dim = x.shape[1], x.shape[2]
        head_dim = dim // self.heads
        qkv = ops.reshape(self.qkv(x), (-1, tokens, 3, self.heads, head_dim))
        q, k, v = [ops.transpose(qkv[:, :, i], (0, 2, 1, 3)) for i in range(3)]  # [B, H, T, d]
        logits = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * (head_dim ** -0.5)
        weights = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), v.dtype)
        out = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))
        return self.proj(ops.reshape(out, (-1, tokens, dim)))

    def forward_flops(self, tokens):
        """Forward FLOPs of one example of ``tokens`` tokens: the two Dense layers and the
        two attention matmuls (q k^T and weights v), 2 T^2 D each."""
        dim = self.proj.kernel.shape[0]
        return 2 * tokens * dim * 4 * dim + 4 * tokens * tokens * dim

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "heads": self.heads}


@keras.saving.register_keras_serializable(package="dualssl_tf")
class ClassToken(keras.layers.Layer):
    """[B, 1 + N, D] -> [B, D]: the [CLS] token (token 0)."""

    def call(self, x):
        return x[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


def _block(x, dim, heads, name):
    y = keras.layers.LayerNormalization(epsilon=LN_EPS, name=f"{name}_norm1")(x)
    y = MultiHeadSelfAttention(heads, name=f"{name}_attn")(y)
    x = keras.layers.Add(name=f"{name}_add1")([x, y])
    y = keras.layers.LayerNormalization(epsilon=LN_EPS, name=f"{name}_norm2")(x)
    y = keras.layers.Dense(MLP_RATIO * dim, kernel_initializer=_dense_init(),
                           name=f"{name}_fc1")(y)
    # Keras' "gelu" is the exact (erf) one, as torch.nn.GELU().
    y = keras.layers.Activation("gelu", name=f"{name}_gelu")(y)
    y = keras.layers.Dense(dim, kernel_initializer=_dense_init(), name=f"{name}_fc2")(y)
    return keras.layers.Add(name=f"{name}_out")([x, y])


def vit(size="vit_tiny", image_size=32, patch_size=0, channels=3, depth=None, width=None,
        heads=None, name=None):
    """Builds a ViT encoder ``x [B, S, S, C] float32 -> representation [B, D]``.

    Args:
      size: ``vit_tiny`` | ``vit_small`` | ``vit_base`` (:data:`SIZES`).
      image_size: input side S of the model's input shape (the position embeddings' grid
        S / P); other sides that P divides are taken too (resampled positions).
      patch_size: P, dividing S; 0 = :func:`~dualssl_tf.models.stems.default_patch_size`.
      channels: input channels C.
      depth, width, heads: override the size's (e.g. a small test model).
      name: model name, default ``size``.
    Returns:
      keras.Model (functional: ``clone_model`` and ``get_config`` / ``from_config`` work);
      its ``output_shape[-1]`` is D.
    """
    if size not in SIZES:
        raise ValueError(f"size={size!r}: allowed {', '.join(SIZES)}")
    d0, w0, h0 = SIZES[size]
    depth, width, heads = depth or d0, width or w0, heads or h0
    patch_size = patch_size or default_patch_size(image_size)
    if image_size % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide image_size={image_size}")
    grid = image_size // patch_size
    inputs = keras.Input([image_size, image_size, channels], name="image")
    x = keras.layers.Conv2D(width, patch_size, strides=patch_size,
                            kernel_initializer=_dense_init(), name="patch_embed")(inputs)
    x = PatchTokens(patch_size, name="patch_tokens")([inputs, x])
    x = ClassTokenPositions(grid, name="tokens")(x)
    for i in range(depth):
        x = _block(x, width, heads, f"block{i}")
    x = keras.layers.LayerNormalization(epsilon=LN_EPS, name="norm")(x)
    x = ClassToken(name="cls")(x)
    model = keras.Model(inputs, x, name=name or size)
    any_side(model)
    return model


def any_side(model):
    """Lets a functional image model take inputs of any side (Keras checks a call's input
    against the Input's full shape otherwise): its ``input_spec`` asks for rank 4 and the
    Input's channels only. Its ``input_shape`` stays the one it was built for. A copy by
    ``keras.models.clone_model`` / ``from_config`` gets the full check back; call this on it
    (``methods.momentum.clone_network`` does)."""
    shape = model.inputs[0].shape
    model.input_spec = keras.layers.InputSpec(ndim=len(shape), axes={-1: int(shape[-1])})
    return model


def is_vit(encoder):
    """Whether ``encoder`` is a functional model built by :func:`vit`."""
    layers = {layer.name for layer in getattr(encoder, "layers", [])}
    return {"tokens", "norm", "cls"} <= layers


def patch_mean(encoder):
    """The symbolic mean of the patch tokens after the final LayerNorm, [B, D], of a
    :func:`vit` encoder (for an export's ``patch_mean`` output, one forward pass with the
    representation)."""
    return ops.mean(encoder.get_layer("norm").output[:, 1:], axis=1)
