"""SimCLR views made on the accelerator: batched, XLA-compilable twins of the host ops.

The host path (:mod:`dualssl_tf.data.augment`) augments one image at a time in tf.data
on the CPU. Here a whole batch ``[B, H, W, 3]`` (uint8 or float in [0, 1]) becomes two
views ``[B, size, size, 3]`` float32 with batched ops only: gathers, elementwise maths,
reductions over the image axes; no ``tf.map_fn``, no per-image Python loop and no
``tf.cond``, so the step compiles with ``jit_compile=True`` and XLA fuses it. The
transforms, their order and their maths are the host's (:func:`augment.simclr_view`):

1. random resized crop: the host's integer window, resized with TF's bilinear kernel
   arithmetic (half-pixel centres, indices clamped to the window) by gathering rows and
   columns per image (``tf.image.crop_and_resize`` samples with align-corners spacing and
   fills outside the image with zeros, which differs at every upsampled border);
2. horizontal flip (p ``flip_prob``);
3. colour jitter with p 0.8: per-image brightness (multiplicative), contrast, saturation
   and hue factors, in a per-image random order (at each of the 4 positions every image
   takes the op its order names: the four are computed and selected); clipped to [0, 1]
   after every op;
4. grayscale with p 0.2;
5. optionally Gaussian blur with p 0.5 (``blur_prob``) and a per-image sigma: reflect
   padding and a separable sum of shifted copies weighted by each image's own kernel;
6. optionally solarisation (p ``solarize_prob``);
7. a final clip to [0, 1].

The blur and solarisation probabilities may differ between the two views of a pair
(BYOL's asymmetric views): both views are one batch of 2B, so a per-view probability
becomes a [2B] tensor of the sampler's comparison.

Parameters and pixels are separate steps: :func:`sample_params` draws every random
parameter of a batch of views from per-image seeds, :func:`apply_params` makes the views
from them, so tests can feed the host path's parameters to the device ops.

Randomness. :func:`sample_params` is :func:`augment.sample_view_params`, the host's own
sampler, run with a :class:`BatchedRandom` instead of ``augment.HOST``: a batched
re-implementation of the Philox-4x32-10 draws ``tf.random.stateless_uniform`` and
``stateless_split`` make on CPU/GPU (``StatelessRandomGetKeyCounter``'s seed scrambling,
then one Philox block per 4 words), on B seeds at once in uint64 arithmetic. The same
seed gives the same numbers as the host (bit for bit in eager mode; XLA may fuse
``u * (max - min) + min`` into one FMA, 1 ulp), and the result does not depend on the
device (``tf.random`` ops are not used on the device: XLA's own stateless RNG differs
from the CPU kernels'). Integer draws (crop windows, flips, orders) stayed exact under
XLA in the tests; a float landing within 1 ulp of a rounding boundary could move a crop
by one pixel there (not seen). :func:`device_view_pairs`
derives the pair seed of image i from ``(seed, step, replica)`` and i, so a resumed run
(its step comes from the checkpointed optimizer) draws the same views and replicas draw
different ones.
"""

import math

import tensorflow as tf

from dualssl_tf.data import augment

_U = tf.uint64
# Philox-4x32 constants (tensorflow/core/lib/random/philox_random.h).
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
# The fixed key StatelessRandomGetKeyCounter scrambles a seed with.
_SCRAMBLE_KEY = (0x3EC8F720, 0x02461E29)


def _u(x):
    return tf.constant(x, _U)


_M32 = _u(0xFFFFFFFF)


def _shr32(x):
    return tf.bitwise.right_shift(x, _u(32))


def _philox(counter, key):
    """Philox-4x32-10 of 4 counter words and 2 key words (uint64 tensors holding 32-bit
    values, broadcastable); returns the 4 output words. A 32 x 32-bit product fits in
    uint64, so a round is two multiplies, shifts and xors. The 10 rounds are a
    ``tf.while_loop``: XLA compiles one round instead of ten (its compile time, not the
    run time, is what a deep unrolled integer graph costs)."""
    zero = counter[0] * 0 + key[0] * 0  # the broadcast shape (loop variables keep it)
    words = [c + zero for c in counter]
    keys = [k + zero for k in key]

    def one_round(r, c0, c1, c2, c3, k0, k1):
        p0, p1 = _u(_PHILOX_M[0]) * c0, _u(_PHILOX_M[1]) * c2
        c0, c1, c2, c3 = _shr32(p1) ^ c1 ^ k0, p1 & _M32, _shr32(p0) ^ c3 ^ k1, p0 & _M32
        # The key moves on after every round (after the last one it is not used).
        k0, k1 = (k0 + _u(_PHILOX_W[0])) & _M32, (k1 + _u(_PHILOX_W[1])) & _M32
        return r + 1, c0, c1, c2, c3, k0, k1

    out = tf.while_loop(lambda r, *_: r < 10, one_round, [tf.constant(0)] + words + keys)
    return tuple(out[1:5])


def seed_words(seeds):
    """int seeds [..., 2] -> their four 32-bit words [..., 4] uint64 (lo, hi of each)."""
    s = tf.bitcast(tf.cast(seeds, tf.int64), _U)
    a, b = s[..., 0], s[..., 1]
    return tf.stack([a & _M32, _shr32(a), b & _M32, _shr32(b)], axis=-1)


def words_to_seeds(words):
    """[..., 4] words -> int64 seeds [..., 2] (inverse of :func:`seed_words`)."""
    def join(lo, hi):
        return tf.bitcast(tf.bitwise.left_shift(hi, _u(32)) | lo, tf.int64)
    return tf.stack([join(words[..., 0], words[..., 1]), join(words[..., 2], words[..., 3])],
                    axis=-1)


def _blocks(words, num):
    """Philox output blocks 0..num-1 of each seed: words [..., 4] -> [..., num, 4] uint64,
    the 32-bit words ``tf.random``'s stateless ops draw from that seed, in order: the seed
    is scrambled into a key and a counter (StatelessRandomGetKeyCounter), block g is
    Philox of counter + g."""
    w = tf.unstack(words, axis=-1)
    z = tf.zeros_like(w[0])
    mix = _philox(w, (z + _u(_SCRAMBLE_KEY[0]), z + _u(_SCRAMBLE_KEY[1])))
    key = (mix[0][..., None], mix[1][..., None])
    g = tf.range(num, dtype=tf.int64)
    g = tf.cast(g, _U) + z[..., None]  # block index = the low counter word
    out = _philox((g, g * 0, mix[2][..., None] + g * 0, mix[3][..., None] + g * 0), key)
    return tf.stack(out, axis=-1)


def _to_unit_float(bits):
    """32-bit words -> float32 in [0, 1): 23 mantissa bits, as TF's Uint32ToFloat."""
    ones = tf.cast((bits & _u(0x7FFFFF)) | _u(0x3F800000), tf.int32)
    return tf.bitcast(ones, tf.float32) - 1.0


class _Seed:
    """A node of the tree of draws: how it was used (split / uniform) and, once drawn, its
    children's words or its value."""

    def __init__(self):
        self.kind = None
        self.children = []
        self.words = self.value = None


class BatchedRandom:
    """The batched twin of :class:`augment.HostRandom`: one seed per image.

    ``split(seed, num)`` -> ``num`` seeds (``s[i]`` is seed i of every image) and
    ``uniform(seed, minval, maxval, shape=())`` -> ``[B, *shape]`` float32 give, image by
    image, what ``stateless_split`` and ``stateless_uniform`` give for that image's seed.

    Use it through :func:`draw`: the sampler runs twice. The first run records which seed
    is split or drawn from and how (values are placeholders); then every seed of one depth
    of the tree is scrambled and expanded in one vectorised Philox call (4 depths for a
    pair of views: 8 Philox calls, instead of two per draw: ~70), which keeps the graph
    small enough for XLA to compile in seconds; the second run returns the drawn values.
    """

    def __init__(self, batch_size):
        self.batch_size = batch_size
        self.recording = True

    def split(self, seed, num):
        if self.recording:
            seed.kind = ("split", num)
            seed.children = [_Seed() for _ in range(num)]
        return seed.children

    def uniform(self, seed, minval, maxval, shape=()):
        if self.recording:
            seed.kind = ("uniform", tuple(shape), minval, maxval)
            return tf.zeros(tf.concat([[self.batch_size], list(shape)], 0) if shape
                            else [self.batch_size])
        return seed.value

    @staticmethod
    def _evaluate(root):
        level = [root]
        while level:
            level = [n for n in level if n.kind is not None]
            if not level:
                return
            sizes = [n.kind[1] if n.kind[0] == "split" else -(-math.prod(n.kind[1]) // 4)
                     for n in level]
            blocks = _blocks(tf.stack([n.words for n in level]), max(sizes))  # [N, B, nb, 4]
            below = []
            for i, n in enumerate(level):
                if n.kind[0] == "split":
                    for j, child in enumerate(n.children):
                        child.words = blocks[i, :, j, :]
                    below += n.children
                    continue
                _, shape, minval, maxval = n.kind
                count = math.prod(shape)
                bits = tf.reshape(blocks[i, :, :sizes[i], :], [-1, sizes[i] * 4])[:, :count]
                lo, hi = tf.constant(minval, tf.float32), tf.constant(maxval, tf.float32)
                u = _to_unit_float(bits) * (hi - lo) + lo  # stateless_uniform's scaling
                n.value = u[:, 0] if not shape else tf.reshape(u, [-1, *shape])
            level = below


def draw(sampler, seeds):
    """Runs ``sampler(rng, seed)`` on B seeds at once with a :class:`BatchedRandom`.

    Args:
      sampler: ``(rng, seed) -> structure of tensors`` written against the
        :class:`augment.HostRandom` interface (e.g. :func:`augment.sample_view_params`);
        it may not branch on drawn values.
      seeds: [B, 2] int, one seed per image.
    Returns:
      The sampler's result, every draw [B, ...]: image b's values are those the sampler
      gives on the host for ``seeds[b]``.
    """
    return _draw_words(sampler, seed_words(seeds))


def _draw_words(sampler, words):
    rng = BatchedRandom(tf.shape(words)[0])
    root = _Seed()
    sampler(rng, root)
    root.words = words
    rng._evaluate(root)
    rng.recording = False
    return sampler(rng, root)


def _mix64(z):
    """splitmix64's finaliser (a bijection of uint64 with full avalanche)."""
    z = (z ^ tf.bitwise.right_shift(z, _u(30))) * _u(0xBF58476D1CE4E5B9)
    z = (z ^ tf.bitwise.right_shift(z, _u(27))) * _u(0x94D049BB133111EB)
    return z ^ tf.bitwise.right_shift(z, _u(31))


def _as_u64(x):
    return tf.bitcast(tf.cast(x, tf.int64), _U)


def pair_seeds(seed, step, replica_id, batch_size):
    """Per-image pair seeds of one step on one replica: [B, 2] int64.

    Image i gets ``(c, i)``, ``c = mix(mix(mix(seed) ^ step) ^ replica_id)`` (splitmix64's
    finaliser): the host pipeline's ``(seed, element)`` layout with the step and the
    replica folded into the first half. Feed these to ``augment.two_views`` per image to
    get the host's views of the same draws.

    Args:
      seed: int (the run's ``--seed``) or scalar int tensor.
      step: scalar int (the optimizer's ``iterations``).
      replica_id: scalar int (``replica_id_in_sync_group``; 0 on one device).
      batch_size: B (python int or scalar tensor).
    """
    c = _mix64(_mix64(_mix64(_as_u64(seed)) ^ _as_u64(step)) ^ _as_u64(replica_id))
    index = tf.range(tf.cast(batch_size, tf.int64), dtype=tf.int64)
    return tf.stack([tf.zeros_like(index) + tf.bitcast(c, tf.int64), index], axis=1)


def sample_params(seeds, height, width, color_jitter_strength=1.0, blur=False, **kwargs):
    """Every random parameter of B views, one view per seed.

    Args:
      seeds: [B, 2] int, one per image (a view seed: ``split(pair_seed, 2)[v]``).
      height, width: the input images' size (python ints or scalar int tensors).
      color_jitter_strength, blur, kwargs: as :func:`augment.simclr_view` (``flip``,
        ``flip_prob``, ``color_jitter_prob``, ``grayscale_prob``, ``blur_prob``,
        ``solarize_prob``, ``area_range``, ``aspect_range``).
    Returns:
      dict of per-image tensors (:func:`augment.sample_view_params`): ``y0, x0, crop_h,
      crop_w`` [B] int32, ``flip`` [B] bool, ``jitter`` [B] bool, ``brightness,
      contrast, saturation, hue`` [B] float32, ``order`` [B, 4] int32, ``gray`` [B] bool,
      ``blur`` [B] bool and ``sigma`` [B] float32, ``solarize`` [B] bool (absent keys:
      transform off). Image b's values are those the host draws for ``seeds[b]``.
    """
    kwargs.pop("crop", None)  # the device path always crops
    return draw(lambda rng, seed: augment.sample_view_params(
        seed, height, width, rng, crop=True, color_jitter_strength=color_jitter_strength,
        blur=blur, **kwargs), seeds)


# -- the transforms, batched ------------------------------------------------------------


def _b(x):
    """[B] -> [B, 1, 1, 1], to scale or select whole images."""
    return tf.reshape(x, [-1, 1, 1, 1])


def _resize_taps(start, length, size):
    """TF's bilinear half-pixel sampling of a window, per image.

    start, length: [B] int32 (the window on one axis); size: output side (python int).
    Returns ``(lower, upper, lerp)``: [B, size] absolute int32 source indices and float32
    weights, computed as tensorflow/core/kernels/image/resize_bilinear_op.cc does:
    ``in = (i + 0.5) * (length / size) - 0.5``, lower ``max(floor(in), 0)``, upper
    ``min(ceil(in), length - 1)``, lerp ``in - floor(in)``.
    """
    scale = tf.cast(length, tf.float32)[:, None] / tf.constant(float(size), tf.float32)
    x = (tf.range(size, dtype=tf.float32)[None, :] + 0.5) * scale - 0.5
    floor = tf.floor(x)
    lower = tf.maximum(tf.cast(floor, tf.int32), 0)
    upper = tf.minimum(tf.cast(tf.math.ceil(x), tf.int32), length[:, None] - 1)
    return start[:, None] + lower, start[:, None] + upper, x - floor


def crop_resize(images, y0, x0, h, w, size):
    """Per-image crop windows resized (bilinear, half-pixel centres) to size x size.

    images: [B, H, W, C] uint8 or float; y0, x0, h, w: [B] int32 windows inside the
    images. Returns [B, size, size, C] float32 (uint8 scaled to [0, 1]), equal to
    ``tf.image.resize(images[b, y0:y0+h, x0:x0+w], [size, size])`` image by image: the
    same taps, weights and ``top + (bottom - top) * y_lerp`` arithmetic as TF's kernel.
    """
    y_lo, y_hi, y_lerp = _resize_taps(y0, h, size)
    x_lo, x_hi, x_lerp = _resize_taps(x0, w, size)
    # Gather in the input dtype (uint8 moves a quarter of the bytes), convert after: the
    # conversion is elementwise, so the values are those of converting first.
    top = tf.gather(images, y_lo, axis=1, batch_dims=1)      # [B, size, W, C]
    bottom = tf.gather(images, y_hi, axis=1, batch_dims=1)

    def cols(rows):
        return (augment.to_float(tf.gather(rows, x_lo, axis=2, batch_dims=1)),
                augment.to_float(tf.gather(rows, x_hi, axis=2, batch_dims=1)))

    tl, tr = cols(top)
    bl, br = cols(bottom)
    xl = x_lerp[:, None, :, None]
    yl = y_lerp[:, :, None, None]
    t = tl + (tr - tl) * xl
    b = bl + (br - bl) * xl
    return t + (b - t) * yl


def solarize(images, bits):
    """Solarisation (:func:`augment.solarize`) of the images whose bit is set. bits [B]."""
    return tf.where(_b(bits), augment.solarize(images), images)


def flip(images, bits):
    """Horizontal flip of the images whose bit is set. images [B, H, W, C], bits [B]."""
    return tf.where(_b(bits), tf.reverse(images, [2]), images)


def brightness(images, factor):
    """Multiplicative brightness, clipped. images [B, H, W, 3] in [0, 1], factor [B]."""
    return tf.clip_by_value(images * _b(factor), 0.0, 1.0)


def contrast(images, factor):
    """``tf.image.adjust_contrast`` per image: ``(x - mean) * f + mean`` with the mean
    of each channel over the image, clipped. factor [B]."""
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((images - mean) * _b(factor) + mean, 0.0, 1.0)


def saturation(images, factor):
    """``tf.image.adjust_saturation`` per image, clipped. factor [B] >= 0.

    The kernel scales HSV saturation ``s = (max - min) / max`` by f, clips it to [0, 1]
    and keeps hue and value; in RGB that moves every channel towards the max channel:
    ``x' = v - (v - x) * min(s f, 1) / s`` (unchanged where max == min).
    """
    v = tf.reduce_max(images, axis=-1, keepdims=True)
    rng = v - tf.reduce_min(images, axis=-1, keepdims=True)
    s = rng / tf.where(v > 0, v, 1.0)
    scale = tf.where(rng > 0, tf.minimum(s * _b(factor), 1.0) / tf.where(rng > 0, s, 1.0),
                     1.0)
    return tf.clip_by_value(v - (v - images) * scale, 0.0, 1.0)


def hue(images, delta):
    """``tf.image.adjust_hue`` per image: hue rotated by ``delta`` turns ([B], in
    [-0.5, 0.5]), value and chroma kept, clipped.

    Hue in [0, 6) from the max channel, shifted by ``6 delta`` and wrapped; back with
    ``c_n = max - chroma * clip(min(k, 4 - k), 0, 1)``, ``k = (n + h) mod 6`` and
    n = 5, 3, 1 for r, g, b (the kernel's hv-range conversion, written without branches).
    """
    r, g, b = tf.unstack(images, axis=-1)
    mx = tf.maximum(r, tf.maximum(g, b))
    mn = tf.minimum(r, tf.minimum(g, b))
    chroma = mx - mn
    d = tf.where(chroma > 0, chroma, 1.0)
    h = tf.where(r == mx, (g - b) / d, tf.where(g == mx, (b - r) / d + 2.0, (r - g) / d + 4.0))
    h = tf.where(chroma > 0, h, 0.0) + 6.0 * tf.reshape(delta, [-1, 1, 1])
    h = h - 6.0 * tf.floor(h / 6.0)

    def channel(n):
        k = n + h
        k = k - 6.0 * tf.floor(k / 6.0)
        return mx - chroma * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)

    out = tf.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)
    return tf.clip_by_value(out, 0.0, 1.0)


_OPS = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}


def color_jitter(images, params):
    """The four jitter ops in each image's own order. params: ``brightness, contrast,
    saturation, hue`` [B] and ``order`` [B, 4] (:func:`augment.jitter_params`).

    At position k every op is computed on the whole batch and each image keeps the one
    its ``order[:, k]`` names: four batched ops per position instead of per-image control
    flow, which XLA fuses (contrast reads a reduction over the image).
    """
    order = params["order"]

    def position(k, x):
        outs = [_OPS[name](x, params[name]) for name in augment._JITTER_OPS]
        pick = tf.gather(order, k, axis=1)
        out = outs[-1]
        for i in range(len(outs) - 2, -1, -1):
            out = tf.where(_b(tf.equal(pick, i)), outs[i], out)
        return k + 1, out

    # A loop over the positions: XLA compiles the four ops once, not once per position.
    _, images = tf.while_loop(lambda k, _: k < len(augment._JITTER_OPS), position,
                              (tf.constant(0), images))
    return images


def grayscale(images, bits):
    """Luma grayscale (3 channels) of the images whose bit is set."""
    gray = tf.tile(tf.image.rgb_to_grayscale(images), [1, 1, 1, 3])
    return tf.where(_b(bits), gray, images)


def gaussian_kernels(sigma, size):
    """Normalised 1-D Gaussians, one per image: sigma [B] -> [B, size] (size odd)."""
    radius = size // 2
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)[None, :]
    k = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32)[:, None])))
    return k / tf.reduce_sum(k, axis=-1, keepdims=True)


def gaussian_blur(images, sigma, size):
    """Separable Gaussian blur with each image's own sigma and reflect padding.

    images [B, H, W, C], sigma [B], size: odd kernel side (python int; <= 1: unchanged).
    Each image has its own kernel, which one conv cannot take; the blur is a sum of
    ``size`` shifted copies weighted per image, along W then along H (the host's order),
    elementwise work that XLA fuses.
    """
    if size <= 1:
        return images
    radius = size // 2
    height, width = images.shape[1], images.shape[2]
    k = gaussian_kernels(sigma, size)
    x = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    x = tf.add_n([x[:, :, j:j + width, :] * _b(k[:, j]) for j in range(size)])
    return tf.add_n([x[:, j:j + height, :, :] * _b(k[:, j]) for j in range(size)])


def apply_params(images, params, size):
    """SimCLR views of a batch from its parameters (:func:`sample_params`).

    Args:
      images: [B, H, W, 3] uint8 (0..255) or float in [0, 1], all of one size.
      params: dict of per-image tensors; a missing key skips its transform (crop keys
        missing: the images must already be size x size).
      size: output side (python int); the blur kernel is 10% of it, as on the host.
    Returns:
      [B, size, size, 3] float32 in [0, 1].
    """
    if "y0" in params:
        x = crop_resize(images, params["y0"], params["x0"], params["crop_h"],
                        params["crop_w"], size)
    else:
        x = augment.to_float(images)
    if "flip" in params:
        x = flip(x, params["flip"])
    if "jitter" in params:
        x = tf.where(_b(params["jitter"]), color_jitter(x, params), x)
    if "gray" in params:
        x = grayscale(x, params["gray"])
    if "blur" in params:
        blurred = gaussian_blur(x, params["sigma"], augment.blur_kernel_size(size))
        x = tf.where(_b(params["blur"]), blurred, x)
    if "solarize" in params:
        x = solarize(x, params["solarize"])
    return tf.clip_by_value(x, 0.0, 1.0)


def _both_views(kwargs, batch_size):
    """The sampler's kwargs for the batch of both views (view 1 of every image, then view
    2): a :data:`augment.PER_VIEW` pair of two values becomes a [2B] tensor of per-image
    probabilities; a pair of equal values stays one number (the sampler's graph and draws
    are then those of a single setting)."""
    out = {}
    for key, value in kwargs.items():
        if key in augment.PER_VIEW and isinstance(value, (tuple, list)):
            v1, v2 = (float(v) for v in value)
            value = v1 if v1 == v2 else tf.repeat(tf.constant([v1, v2], tf.float32),
                                                  tf.stack([batch_size, batch_size]))
        out[key] = value
    return out


def pair_params(seeds, height, width, color_jitter_strength=1.0, blur=False, **kwargs):
    """The parameters of both views of B pairs: a :func:`sample_params` dict of [2B]
    tensors, view 1 of every image then view 2, view v of image b drawn from
    ``split(seeds[b], 2)[v]`` as ``augment.two_views`` draws it on the host.

    kwargs: as ``augment.two_views`` (``blur_prob`` and ``solarize_prob`` may be per-view
    pairs).
    """
    # split(pair seed, 2) = Philox blocks 0 and 1 of the pair seed; both views are then
    # one batch of 2B (view 1 of every image, then view 2): one sampler, one set of ops.
    words = _blocks(seed_words(seeds), 2)
    kwargs = _both_views(kwargs, tf.shape(seeds)[0])
    return _draw_words(lambda rng, seed: augment.sample_view_params(
        seed, height, width, rng, crop=True, color_jitter_strength=color_jitter_strength,
        blur=blur, **kwargs), tf.concat([words[:, 0], words[:, 1]], axis=0))


def views_from_pair_seeds(images, seeds, size, color_jitter_strength=1.0, blur=False,
                          **kwargs):
    """Two views of each image from its pair seed [B, 2], as ``augment.two_views`` makes
    them on the host (view v from ``split(seed, 2)[v]``; kwargs as there, ``blur_prob``
    and ``solarize_prob`` may be per-view pairs). Returns (view1, view2)."""
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        height, width = tf.shape(images)[1], tf.shape(images)[2]
    params = pair_params(seeds, height, width, color_jitter_strength, blur, **kwargs)
    views = apply_params(tf.concat([images, images], axis=0), params, size)
    return tuple(tf.split(views, 2, axis=0))


def local_views_from_pair_seeds(images, seeds, num, size, color_jitter_strength=1.0,
                                blur=False, **kwargs):
    """The ``num`` local crops of each image from its pair seed [B, 2], as
    ``augment.local_views`` makes them on the host: crop j from child
    ``augment.LOCAL_SEED_OFFSET + j`` of the pair seed. All B num crops are one batch
    (crop-major: one sampler, one set of ops). Returns [B, num, size, size, 3] float32."""
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        height, width = tf.shape(images)[1], tf.shape(images)[2]
    first = augment.LOCAL_SEED_OFFSET
    words = _blocks(seed_words(seeds), first + num)                    # [B, 2 + num, 4]
    words = tf.reshape(tf.transpose(words[:, first:], [1, 0, 2]), [-1, 4])
    params = _draw_words(lambda rng, seed: augment.sample_view_params(
        seed, height, width, rng, crop=True, color_jitter_strength=color_jitter_strength,
        blur=blur, **kwargs), words)
    views = apply_params(tf.concat([images] * num, axis=0), params, size)
    views = tf.reshape(views, tf.concat([[num, -1], tf.shape(views)[1:]], axis=0))
    return tf.transpose(views, [1, 0, 2, 3, 4])


def device_multi_crop(images, seed, step, replica_id, size, local, color_jitter_strength=1.0,
                      blur=False, **kwargs):
    """:func:`device_view_pairs` plus the local crops: (view1, view2, local_views).

    ``local``: ``{"num": N, "size": s, "kwargs": {...}}`` (the local crops' settings, as
    ``tasks.images.local_view_settings`` resolves them); local_views [B, N, s, s, 3]."""
    seeds = pair_seeds(seed, step, replica_id, tf.shape(images)[0])
    view1, view2 = views_from_pair_seeds(images, seeds, size, color_jitter_strength, blur,
                                         **kwargs)
    return view1, view2, local_views_from_pair_seeds(images, seeds, local["num"],
                                                     local["size"], **local["kwargs"])


def device_view_pairs(images, seed, step, replica_id, size, color_jitter_strength=1.0,
                      blur=False, **kwargs):
    """Two SimCLR views of every image of a batch, made where the batch is (GPU/TPU).

    Args:
      images: [B, H, W, 3] uint8 (or float in [0, 1]); H, W static (batched input).
      seed: the run's seed (int).
      step: scalar int tensor, the global step (``optimizer.iterations``), so a resumed
        run draws the views of the uninterrupted one.
      replica_id: scalar int (``replica_id_in_sync_group``), so replicas differ.
      size: output side (python int).
      color_jitter_strength: s (0 = no jitter); blur: Gaussian blur with p 0.5.
      kwargs: the other settings of ``augment.two_views`` (``area_range``, ``flip_prob``,
        ``blur_prob``, ``solarize_prob``; the last two may be per-view pairs).
    Returns:
      (view1, view2): [B, size, size, 3] float32 in [0, 1]. Image i's views are a
      function of (seed, step, replica_id, i) and the image only (:func:`pair_seeds`).
    """
    seeds = pair_seeds(seed, step, replica_id, tf.shape(images)[0])
    return views_from_pair_seeds(images, seeds, size, color_jitter_strength, blur, **kwargs)
