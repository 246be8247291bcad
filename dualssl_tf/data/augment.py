"""SimCLR image augmentations as stateless TF ops (docs/theory.md section 6).

Every function takes a float32 image in [0, 1] of shape [H, W, 3] and a *seed*: an int
tensor of shape [2], as used by ``tf.random.stateless_*``. The same (image, seed) always
gives the same output, so a tf.data pipeline that derives one seed per element from a
global seed and the element index is deterministic (see :mod:`dualssl_tf.data.pipeline`).
Batches go through :func:`augment_batch` (one seed per image, ``tf.map_fn``).

A SimCLR view (:func:`simclr_view`) is, in order (the defaults are SimCLR's):

1. random resized crop: area fraction U(0.08, 1) (``area_range``), aspect ratio
   log-uniform in (3/4, 4/3), resized (bilinear) to a fixed ``size x size``;
2. horizontal flip with p 0.5 (``flip_prob``);
3. colour jitter of strength s with p 0.8: brightness, contrast, saturation factors in
   [1 - 0.8s, 1 + 0.8s] and a hue shift in [-0.2s, 0.2s], the four in a random order;
4. grayscale with p 0.2;
5. optionally (STL-10) Gaussian blur with p 0.5 (``blur_prob``): kernel 10% of the side,
   sigma U(0.1, 2);
6. optionally solarisation with p ``solarize_prob`` (0 by default; BYOL's second view
   0.2): values >= 0.5 become 1 - x (PIL's ``ImageOps.solarize`` at 128, as solo-learn and
   lightly apply it).

:func:`two_views` takes the blur and solarisation probabilities per view (BYOL's
asymmetric recipe: blur 1.0 / 0.1, solarisation 0 / 0.2).

Brightness is multiplicative (as torchvision and SimCLR v2); contrast, saturation and hue
are ``tf.image.adjust_*`` with the factors ``tf.image.stateless_random_*`` would draw.
Values are clipped to [0, 1] after every colour op.

The random parameters of a view (crop window, flip, jitter factors and order, grayscale,
blur sigma, solarisation) are drawn by :func:`sample_view_params` from the seed alone,
before any pixel is touched, through a small ``rng`` object (``split``, ``uniform``). The
host path passes :data:`HOST` (``tf.random``'s stateless ops on one [2] seed); the device
path (:mod:`dualssl_tf.data.device_augment`) passes a batched re-implementation of the
same Philox draws on [B] seeds, so both paths draw the same parameters for the same seeds
by construction (one sampling function, the same random numbers).
"""

import math

import tensorflow as tf

# Colour-jitter ops in the order of their index in the random permutation.
_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def to_float(image):
    """uint8 [.., H, W, C] in [0, 255] (or float already in [0, 1]) -> float32 in [0, 1]."""
    return tf.image.convert_image_dtype(image, tf.float32)


def split_seed(seed, num):
    """Derives ``num`` independent seeds from one. seed: [2] int -> [num, 2] int64."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num)


def _uniform(seed, minval, maxval, shape=()):
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


class HostRandom:
    """Stateless draws for one image: ``seed`` is a [2] int tensor (``tf.random``'s ops).

    The interface the parameter samplers use (:func:`sample_view_params`):
    ``split(seed, num)`` -> ``num`` seeds indexable as ``s[i]``; ``uniform(seed, minval,
    maxval, shape=())`` -> float32 of ``shape`` (the device path's batched twin,
    ``device_augment.BatchedRandom``, returns ``[B, *shape]``). Samplers only index
    seeds, split them and draw uniforms, with no branch on a drawn value, so the batched
    twin can record the draws first and make them all at once.
    """

    @staticmethod
    def split(seed, num):
        return split_seed(seed, num)

    @staticmethod
    def uniform(seed, minval, maxval, shape=()):
        return _uniform(seed, minval, maxval, shape)


HOST = HostRandom()


def _take_last(x, index):
    """``x[..., index]`` with one index per leading position: x [..., A], index [...]."""
    return tf.gather(x, index[..., None], axis=-1, batch_dims=index.shape.rank)[..., 0]


def crop_window(height, width, seed, area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3),
                attempts=10, rng=HOST):
    """Samples a random-resized-crop window (torchvision's RandomResizedCrop rule).

    Draws ``attempts`` candidates (area fraction uniform in ``area_range``, aspect ratio
    w/h log-uniform in ``aspect_range``) and keeps the first that fits in the image;
    if none fits, the whole image is used.

    Args:
      height, width: scalar int tensors (or python ints), the image size.
      seed: [2] int seed (``rng=HOST``), or the seeds of ``rng``'s batch.
      rng: the draws (:class:`HostRandom`; the device path's batched one).
    Returns:
      (y0, x0, h, w): int32 scalars (one per image of ``rng``'s batch: [B]), the window's
      top-left corner and size.
    """
    s = rng.split(seed, 4)
    s_area, s_ratio, s_y, s_x = s[0], s[1], s[2], s[3]
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = hf * wf * rng.uniform(s_area, area_range[0], area_range[1], [attempts])
    log_ratio = rng.uniform(s_ratio, math.log(aspect_range[0]), math.log(aspect_range[1]),
                            [attempts])
    ratio = tf.exp(log_ratio)
    cw = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    ch = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (cw >= 1) & (ch >= 1) & (cw <= width) & (ch <= height)
    # First fitting candidate; argmax of a bool vector returns the first True.
    first = tf.argmax(tf.cast(fits, tf.int32), axis=-1, output_type=tf.int32)
    any_fit = tf.reduce_any(fits, axis=-1)
    h = tf.where(any_fit, _take_last(ch, first), height)
    w = tf.where(any_fit, _take_last(cw, first), width)
    # Offsets uniform over the valid positions 0 .. H - h (inclusive).
    y0 = tf.minimum(tf.cast(tf.floor(rng.uniform(s_y, 0.0, 1.0) * tf.cast(height - h + 1,
                                                                           tf.float32)),
                            tf.int32), height - h)
    x0 = tf.minimum(tf.cast(tf.floor(rng.uniform(s_x, 0.0, 1.0) * tf.cast(width - w + 1,
                                                                           tf.float32)),
                            tf.int32), width - w)
    return y0, x0, h, w


def random_resized_crop(image, seed, size, area_range=(0.08, 1.0),
                        aspect_range=(3 / 4, 4 / 3)):
    """Random resized crop. image: [H, W, C] float -> [size, size, C] float32.

    The window is drawn by :func:`crop_window`, then resized bilinearly, which keeps
    values inside the input's range.
    """
    shape = tf.shape(image)
    window = crop_window(shape[0], shape[1], seed, area_range, aspect_range)
    return crop_and_resize(image, window, size)


def crop_and_resize(image, window, size):
    """The crop ``window = (y0, x0, h, w)`` of ``image`` [H, W, C], resized bilinearly
    (half-pixel centres) to [size, size, C] float32."""
    y0, x0, h, w = window
    crop = tf.slice(image, tf.stack([y0, x0, 0]), tf.stack([h, w, -1]))
    out = tf.image.resize(crop, [size, size], method="bilinear")
    return tf.ensure_shape(out, [size, size, image.shape[-1]])


def random_flip(image, seed):
    """Horizontal flip with probability 0.5. image: [H, W, C] -> same.

    The draw of ``tf.image.stateless_random_flip_left_right`` (uniform < 0.5), made by
    :func:`flip_bit` so the device path shares it.
    """
    return tf.cond(flip_bit(seed), lambda: tf.reverse(image, [1]), lambda: image)


def flip_bit(seed, rng=HOST, prob=0.5):
    """Whether to flip: uniform < ``prob`` (at 0.5 ``stateless_random_flip_left_right``'s
    draw); bool, or [B]."""
    return rng.uniform(seed, 0.0, 1.0) < prob


def solarize(image):
    """Solarisation: values >= 0.5 become 1 - x (PIL's ``ImageOps.solarize`` at threshold
    128 on uint8, torchvision's ``RandomSolarize(0.5)`` on floats). [..., C] -> same."""
    return tf.where(image >= 0.5, 1.0 - image, image)


def jitter_ranges(strength):
    """{op: (minval, maxval)} of the four jitter factors at strength s (hue: the shift)."""
    b = 0.8 * strength
    # tf.image's hue shift must stay in [0, 0.5] (half the colour wheel).
    hue = min(0.5, 0.2 * strength)
    return {"brightness": (max(0.0, 1.0 - b), 1.0 + b),
            "contrast": (max(0.0, 1.0 - b), 1.0 + b),
            "saturation": (max(0.0, 1.0 - b), 1.0 + b),
            "hue": (-hue, hue)}


def jitter_params(seed, strength, rng=HOST):
    """The colour-jitter draws of one seed: each op's factor and the order.

    The same draws as ``tf.image.stateless_random_{contrast,saturation,hue}`` with the
    seeds ``split(seed, 5)[i]`` of op i (brightness: a multiplicative factor from seed 0),
    and the order ``argsort`` of 4 uniforms from seed 4.

    Returns:
      dict ``brightness``, ``contrast``, ``saturation``, ``hue`` (float32 scalars, or [B]
      with a batched ``rng``) and ``order`` (int32 [4] or [B, 4]: the op index applied at
      each position).
    """
    seeds = rng.split(seed, len(_JITTER_OPS) + 1)
    ranges = jitter_ranges(strength)
    out = {name: rng.uniform(seeds[i], *ranges[name]) for i, name in enumerate(_JITTER_OPS)}
    out["order"] = tf.argsort(rng.uniform(seeds[-1], 0.0, 1.0, [len(_JITTER_OPS)]), axis=-1)
    return out


def apply_jitter_op(name, image, factor):
    """One colour-jitter op with its factor (hue: its shift); output clipped to [0, 1]."""
    if name == "brightness":
        out = image * factor
    elif name == "contrast":
        out = tf.image.adjust_contrast(image, factor)
    elif name == "saturation":
        out = tf.image.adjust_saturation(image, factor)
    else:
        out = tf.image.adjust_hue(image, factor)
    return tf.clip_by_value(out, 0.0, 1.0)


def _jitter_op(name, image, seed, strength):
    """One colour-jitter op of strength s with its factor drawn from ``seed`` (the op's
    own seed, as ``tf.image.stateless_random_*``); output clipped to [0, 1]."""
    return apply_jitter_op(name, image, _uniform(seed, *jitter_ranges(strength)[name]))


def apply_color_jitter(image, params):
    """The four ops of :func:`jitter_params` ``params`` in its ``order``."""
    order = params["order"]

    def step(k, img):
        # A loop over one switch traces the four ops once (not once per position).
        branches = [(lambda name=name: apply_jitter_op(name, img, params[name]))
                    for name in _JITTER_OPS]
        return k + 1, tf.ensure_shape(tf.switch_case(order[k], branches), img.shape)

    _, image = tf.while_loop(lambda k, _: k < len(_JITTER_OPS), step,
                             (tf.constant(0), image))
    return image


def color_jitter(image, seed, strength):
    """SimCLR colour jitter (always applied; see :func:`simclr_view` for p 0.8).

    Brightness, contrast, saturation (factors in [1 - 0.8s, 1 + 0.8s]) and hue (shift in
    [-0.2s, 0.2s]) in a random order drawn from the seed (:func:`jitter_params`).

    Args:
      image: [H, W, 3] float32 in [0, 1].
      seed: [2] int seed.
      strength: python float s >= 0; s = 0 returns the image unchanged.
    Returns:
      [H, W, 3] float32 in [0, 1].
    """
    if strength <= 0:
        return image
    return apply_color_jitter(image, jitter_params(seed, strength))


def to_grayscale(image):
    """Luma grayscale kept as 3 channels. [H, W, 3] -> [H, W, 3]."""
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def blur_kernel_size(side):
    """SimCLR's odd blur kernel size for an image side: 2 * ((side // 10) // 2) + 1."""
    return 2 * ((side // 10) // 2) + 1


def gaussian_kernel_1d(sigma, size):
    """Normalised 1-D Gaussian. sigma: scalar float, size: odd python int -> [size]."""
    radius = size // 2
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    k = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
    return k / tf.reduce_sum(k)


def gaussian_blur(image, sigma, size):
    """Separable Gaussian blur with reflect padding. image: [H, W, C] -> [H, W, C].

    Reflect padding (not zeros) so the borders do not darken.
    """
    if size <= 1:
        return image
    radius = size // 2
    channels = image.shape[-1]
    k = gaussian_kernel_1d(sigma, size)
    kx = tf.tile(tf.reshape(k, [1, size, 1, 1]), [1, 1, channels, 1])
    ky = tf.tile(tf.reshape(k, [size, 1, 1, 1]), [1, 1, channels, 1])
    x = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
               mode="REFLECT")
    x = tf.nn.depthwise_conv2d(x, kx, [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, ky, [1, 1, 1, 1], "VALID")
    return x[0]


def random_blur(image, seed, side, sigma_range=(0.1, 2.0)):
    """Gaussian blur with a random sigma, kernel 10% of ``side`` (always applied)."""
    sigma = _uniform(seed, sigma_range[0], sigma_range[1])
    return gaussian_blur(image, sigma, blur_kernel_size(side))


BLUR_SIGMA_RANGE = (0.1, 2.0)


def _on(prob):
    """Whether a transform of probability ``prob`` is drawn at all: a python number > 0,
    or a tensor (per-image probabilities of the device path's batch of both views)."""
    return tf.is_tensor(prob) or prob > 0


def sample_view_params(seed, height, width, rng=HOST, crop=True, flip=True,
                       color_jitter_strength=1.0, color_jitter_prob=0.8,
                       grayscale_prob=0.2, blur=False, blur_prob=0.5,
                       area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3),
                       flip_prob=0.5, solarize_prob=0.0):
    """Every random parameter of one SimCLR view, drawn from its seed alone.

    The one sampler of both paths: :func:`simclr_view` calls it with :data:`HOST` and one
    [2] seed, :func:`dualssl_tf.data.device_augment.sample_params` with the batched twin
    and [B] seeds, so the two draw the same distributions by construction (and, for the
    same seeds, the same values). Seed ``split(seed, 8)[k]`` feeds: 0 crop, 1 flip,
    2 jitter-or-not, 3 jitter factors and order, 4 grayscale, 5 blur-or-not, 6 sigma,
    7 solarise-or-not. Child k of a split does not depend on how many children are asked
    for (``stateless_split`` is Philox block k of the seed), so seeds 0-6 are those of the
    7-way split before solarisation existed, and every draw is from its own seed: a view
    without solarisation is the one it was before (tests/data/test_augment_options.py).
    A probability may also be a [B] tensor with a batched ``rng`` (per-view settings of
    the device path's batch of both views); the transform is then drawn for every image.

    Args:
      seed: [2] int (or the batched ``rng``'s seeds).
      height, width: the un-cropped image's size (int or scalar int tensor).
      rng: :data:`HOST` or a batched twin.
      other args: as :func:`simclr_view`.
    Returns:
      dict of scalars (``[B]`` / ``[B, 4]`` with a batched ``rng``); a key is absent when
      its transform is off: ``y0, x0, crop_h, crop_w`` (int32), ``flip`` (bool),
      ``jitter`` (bool) with ``brightness, contrast, saturation, hue`` (float32) and
      ``order`` (int32 [4]), ``gray`` (bool), ``blur`` (bool) with ``sigma`` (float32),
      ``solarize`` (bool).
    """
    s = rng.split(seed, 8)
    p = {}
    if crop:
        p["y0"], p["x0"], p["crop_h"], p["crop_w"] = crop_window(
            height, width, s[0], area_range, aspect_range, rng=rng)
    if flip and _on(flip_prob):
        p["flip"] = flip_bit(s[1], rng, flip_prob)
    if color_jitter_strength > 0 and color_jitter_prob > 0:
        p["jitter"] = rng.uniform(s[2], 0.0, 1.0) < color_jitter_prob
        p.update(jitter_params(s[3], color_jitter_strength, rng))
    if grayscale_prob > 0:
        p["gray"] = rng.uniform(s[4], 0.0, 1.0) < grayscale_prob
    if blur and _on(blur_prob):
        p["blur"] = rng.uniform(s[5], 0.0, 1.0) < blur_prob
        p["sigma"] = rng.uniform(s[6], *BLUR_SIGMA_RANGE)
    if _on(solarize_prob):
        p["solarize"] = rng.uniform(s[7], 0.0, 1.0) < solarize_prob
    return p


def simclr_view(image, seed, size, color_jitter_strength=1.0, blur=False, crop=True,
                flip=True, color_jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5,
                area_range=(0.08, 1.0), flip_prob=0.5, solarize_prob=0.0):
    """One SimCLR augmentation of one image.

    Args:
      image: [H, W, 3] float32 in [0, 1] (any H, W when ``crop``; else resized).
      seed: [2] int seed; the output is a deterministic function of (image, seed).
      size: output side (python int).
      color_jitter_strength: s (1.0 for STL-10/ImageNet, 0.5 for CIFAR); 0 disables it.
      blur: apply Gaussian blur with probability ``blur_prob`` (STL-10).
      crop, flip: random resized crop / horizontal flip (plain resize when ``crop`` is
        False).
      color_jitter_prob, grayscale_prob: probabilities of jitter and grayscale.
      area_range: (min, max) crop area fraction, 0 < min <= max <= 1.
      flip_prob: probability of the flip (0: none).
      solarize_prob: probability of solarisation (:func:`solarize`; 0: none).
    Returns:
      [size, size, 3] float32 in [0, 1].

    Example:
      >>> view = simclr_view(image, tf.constant([1, 2]), size=32,
      ...                    color_jitter_strength=0.5)
    """
    shape = tf.shape(image)
    p = sample_view_params(seed, shape[0], shape[1], HOST, crop=crop, flip=flip,
                           color_jitter_strength=color_jitter_strength,
                           color_jitter_prob=color_jitter_prob,
                           grayscale_prob=grayscale_prob, blur=blur, blur_prob=blur_prob,
                           area_range=area_range, flip_prob=flip_prob,
                           solarize_prob=solarize_prob)
    if crop:
        image = crop_and_resize(image, (p["y0"], p["x0"], p["crop_h"], p["crop_w"]), size)
    else:
        image = tf.ensure_shape(tf.image.resize(image, [size, size]), [size, size, 3])
    if "flip" in p:
        image = tf.cond(p["flip"], lambda: tf.reverse(image, [1]), lambda: image)
    if "jitter" in p:
        image = tf.cond(p["jitter"], lambda: apply_color_jitter(image, p), lambda: image)
    if "gray" in p:
        image = tf.cond(p["gray"], lambda: to_grayscale(image), lambda: image)
    if "blur" in p:
        image = tf.cond(p["blur"],
                        lambda: gaussian_blur(image, p["sigma"], blur_kernel_size(size)),
                        lambda: image)
    if "solarize" in p:
        image = tf.cond(p["solarize"], lambda: solarize(image), lambda: image)
    return tf.clip_by_value(image, 0.0, 1.0)


def center_resize(image, size):
    """Deterministic eval transform: resize the shorter side to ``size``, centre crop.

    image: [H, W, C] float -> [size, size, C] float32; an image already ``size x size``
    is returned unchanged (no resampling).
    """
    if image.shape[0] == size and image.shape[1] == size:
        return tf.cast(image, tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    image = tf.image.resize(image, new, method="bilinear")
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    out = tf.slice(image, tf.stack([top, left, 0]), tf.stack([size, size, -1]))
    return tf.ensure_shape(out, [size, size, image.shape[-1]])


# simclr_view arguments that two_views also takes per view, as a pair (view 1, view 2).
PER_VIEW = ("blur_prob", "solarize_prob")


def per_view(kwargs):
    """``kwargs`` of :func:`two_views` -> the :func:`simclr_view` kwargs of view 1 and of
    view 2 (a :data:`PER_VIEW` argument given as a pair goes one value to each view)."""
    views = ({}, {})
    for key, value in kwargs.items():
        pair = key in PER_VIEW and isinstance(value, (tuple, list))
        for v in (0, 1):
            views[v][key] = value[v] if pair else value
    return views


def two_views(image, seed, size, **kwargs):
    """Two independent SimCLR views of one image: ([size, size, 3], [size, size, 3]).

    kwargs: as :func:`simclr_view`; ``blur_prob`` and ``solarize_prob`` may be pairs
    (view 1, view 2), e.g. BYOL's ``blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2)``.
    """
    s = split_seed(seed, 2)
    kw1, kw2 = per_view(kwargs)
    return (simclr_view(image, s[0], size, **kw1),
            simclr_view(image, s[1], size, **kw2))


# Child seeds of a pair seed: 0 and 1 are the two global views (:func:`two_views`), local
# crop j draws from child LOCAL_SEED_OFFSET + j. Child k of ``stateless_split`` does not
# depend on how many are asked for, so adding local crops leaves the global views as
# they were.
LOCAL_SEED_OFFSET = 2


def local_views(image, seed, size, num, **kwargs):
    """The ``num`` local crops of multi-crop (DINO, SwAV) of one image: [num, size, size, 3].

    Crop j is :func:`simclr_view` from child ``LOCAL_SEED_OFFSET + j`` of the pair seed
    ``seed`` (the one :func:`two_views` splits), with its own ``size`` and kwargs (e.g.
    ``area_range=(0.05, 0.4)``).
    """
    s = split_seed(seed, LOCAL_SEED_OFFSET + num)
    return tf.stack([simclr_view(image, s[LOCAL_SEED_OFFSET + j], size, **kwargs)
                     for j in range(num)])


def augment_batch(images, seeds, size, **kwargs):
    """:func:`simclr_view` on every image of a batch.

    Args:
      images: [B, H, W, 3] float32 in [0, 1].
      seeds: [B, 2] int, one seed per image.
      size, kwargs: as :func:`simclr_view`.
    Returns:
      [B, size, size, 3] float32 in [0, 1].
    """
    return tf.map_fn(lambda a: simclr_view(a[0], a[1], size, **kwargs),
                     (images, tf.cast(seeds, tf.int64)),
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))


def view_pairs(dataset, size, seed=0, **kwargs):
    """SimCLR pairs of your own images: the input of the methods' ``fit``.

    Args:
      dataset: tf.data of images [H, W, 3] (uint8, or float in [0, 1]), or of
        ``(image, label)`` pairs (the label is kept for the online probe).
      size: output side; seed: int, the pair of example i uses seed ``(seed, i)``;
      kwargs: as :func:`simclr_view` (``color_jitter_strength``, ``blur``).
    Returns:
      tf.data of dicts ``view1``, ``view2`` [size, size, 3] float32 (and ``label``), to
      batch with ``drop_remainder=True``.
    """
    def pair(i, element):
        image, label = element if isinstance(element, tuple) else (element, None)
        v1, v2 = two_views(to_float(image), tf.stack([tf.cast(seed, tf.int64), i]), size,
                           **kwargs)
        out = {"view1": v1, "view2": v2}
        if label is not None:
            out["label"] = label
        return out
    return dataset.enumerate().map(pair, num_parallel_calls=tf.data.AUTOTUNE)
