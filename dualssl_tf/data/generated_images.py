"""A generated image data set with known latent factors (no download).

Every example ``i`` is one object on a plain background. Its *class* z0 (one of up to six
shapes/textures: disc, square, triangle, ring, cross, checker) is fixed per example; the
*nuisance factors* z' are drawn afresh for every rendering:

=========  =======================================================================
factor     range
=========  =======================================================================
cx, cy     object centre, fraction of the side, U(0.3, 0.7)
scale      object half-size, fraction of the side, U(0.2, 0.35)
r, g, b    object colour, U(0, 1) each
bg         background grey: the object's luma shifted by U(0.3, 0.7) modulo 1, so the
           object always stands out
=========  =======================================================================

plus per-pixel Gaussian noise (std ``noise``). Each example has its own factors z'_i (its
un-augmented image, used for probing). The two views of a training pair are renderings of
the same class with z' moved from z'_i towards an independent draw by ``view_jitter``
(0 = the example's own factors, 1 = fully resampled), so "augmentation" keeps z0 and
changes z' (the generative view ``x = g(z0, z')`` of docs/theory.md section 3). The interpolation
is done on the
uniforms behind z', so every view stays in the ranges above. Everything is a stateless
function of (seed, index), so any stream is reproducible from any position.
"""

import tensorflow as tf

from dualssl_tf.data import augment

SHAPES = ("disc", "square", "triangle", "ring", "cross", "checker")
NUM_FACTORS = 7  # cx, cy, scale, r, g, b, bg
FACTOR_NAMES = ("cx", "cy", "scale", "r", "g", "b", "bg")
# Index bases of the two splits; far apart so their seed streams never meet.
SPLIT_OFFSETS = {"train": 0, "test": 1 << 40}


def factors_from_uniforms(u):
    """Maps 7 numbers in [0, 1) to the nuisance factors z'. u: [7] -> [7] float32."""
    cx, cy = 0.3 + 0.4 * u[0], 0.3 + 0.4 * u[1]
    scale = 0.2 + 0.15 * u[2]
    rgb = u[3:6]
    luma = 0.2989 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    bg = tf.math.floormod(luma + 0.3 + 0.4 * u[6], 1.0)
    return tf.stack([cx, cy, scale, rgb[0], rgb[1], rgb[2], bg])


def sample_uniforms(seed):
    """The 7 uniforms behind z'. seed: [2] int -> [7] float32 in [0, 1)."""
    return tf.random.stateless_uniform([NUM_FACTORS], seed)


def sample_factors(seed):
    """Nuisance factors z'. seed: [2] int -> [7] float32 (see FACTOR_NAMES)."""
    return factors_from_uniforms(sample_uniforms(seed))


def shape_masks(factors, size):
    """Masks of every shape at the given position/scale: [len(SHAPES), size, size] float32.

    Coordinates are pixel centres in units of the object's half-size, y pointing down.
    """
    coords = (tf.range(size, dtype=tf.float32) + 0.5) / size
    y, x = tf.meshgrid(coords, coords, indexing="ij")
    u = (x - factors[0]) / factors[2]
    v = (y - factors[1]) / factors[2]
    r = tf.sqrt(u * u + v * v)
    au, av = tf.abs(u), tf.abs(v)
    box = tf.maximum(au, av)
    masks = [
        r <= 1.0,                                                         # disc
        box <= 0.85,                                                      # square
        (v >= -0.9) & (v <= 0.8) & (au <= 0.55 * (v + 0.9)),              # triangle
        (r <= 1.0) & (r >= 0.55),                                         # ring
        ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0)),        # cross
        (box <= 0.9) & tf.equal(tf.math.floormod(
            tf.floor((u + 1.0) * 2.0) + tf.floor((v + 1.0) * 2.0), 2.0), 0.0),  # checker
    ]
    return tf.cast(tf.stack(masks), tf.float32)


def render(label, factors, size, noise_seed=None, noise=0.0):
    """One image of class ``label`` with nuisance factors ``factors``.

    Args:
      label: scalar int, index into SHAPES.
      factors: [7] float32 from :func:`sample_factors`.
      size: image side (python int).
      noise_seed: [2] int seed of the pixel noise (needed when noise > 0).
      noise: std of additive Gaussian pixel noise.
    Returns:
      [size, size, 3] float32 in [0, 1].
    """
    mask = tf.gather(shape_masks(factors, size), label)[..., None]       # [S, S, 1]
    colour = factors[3:6][None, None, :]
    image = mask * colour + (1.0 - mask) * factors[6]
    if noise > 0:
        image += noise * tf.random.stateless_normal([size, size, 3], noise_seed)
    return tf.clip_by_value(image, 0.0, 1.0)


class GeneratedImages:
    """The generated shapes data set: class labels, canonical images and training views.

    Args:
      image_size: side of every image.
      num_classes: number of shapes used (2..6), z0 in [0, num_classes).
      num_examples: size of the training split (the test split has ``num_test``).
      num_test: size of the test split.
      noise: pixel-noise std.
      view_jitter: in [0, 1], how far each view's z' moves from the example's own towards a
        fresh draw (1 = independent factors: the pair shares only the class).
      seed: data seed; the whole data set is a function of it.

    Example:
      >>> data = GeneratedImages(image_size=32, seed=0)
      >>> v1, v2 = data.views(tf.constant(5, tf.int64), tf.constant([0, 1], tf.int64))
    """

    def __init__(self, image_size=32, num_classes=len(SHAPES), num_examples=10000,
                 num_test=2000, noise=0.05, view_jitter=0.5, seed=0):
        if not 2 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes={num_classes}: must be in [2, {len(SHAPES)}]")
        if image_size < 8:
            raise ValueError(f"image_size={image_size}: generated images need >= 8 pixels")
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.num_examples = {"train": int(num_examples), "test": int(num_test)}
        if not 0.0 <= view_jitter <= 1.0:
            raise ValueError(f"view_jitter={view_jitter}: must be in [0, 1]")
        self.noise = float(noise)
        self.view_jitter = float(view_jitter)
        self.seed = int(seed)

    def _seed(self, index, stream):
        """Seed of example ``index`` (already offset by split) for one purpose ``stream``."""
        return tf.stack([tf.cast(self.seed, tf.int64) * 7919 + stream,
                         tf.cast(index, tf.int64)])

    def label(self, index):
        """Class z0 of an example: scalar int64 index -> int32 in [0, num_classes)."""
        logits = tf.zeros([1, self.num_classes])
        return tf.cast(tf.random.stateless_categorical(logits, 1, self._seed(index, 0))[0, 0],
                       tf.int32)

    def example(self, index):
        """Canonical (un-augmented) example: -> (image [S, S, 3], label, factors [7])."""
        factors = sample_factors(self._seed(index, 1))
        label = self.label(index)
        return render(label, factors, self.image_size, self._seed(index, 2),
                      self.noise), label, factors

    def views(self, index, seed):
        """Two views of example ``index``: same class, jittered factors, fresh noise.

        Args:
          index: scalar int64 example index (split offset included).
          seed: [2] int seed of this pair.
        Returns:
          (view1, view2) [S, S, 3] float32 in [0, 1].
        """
        label = self.label(index)
        own = sample_uniforms(self._seed(index, 1))
        s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
        out = []
        for v in range(2):
            u = own + self.view_jitter * (sample_uniforms(s[2 * v]) - own)
            out.append(render(label, factors_from_uniforms(u), self.image_size, s[2 * v + 1],
                              self.noise))
        return tuple(out)

    def local_views(self, index, seed, num, size, area_range=(0.05, 0.4)):
        """Multi-crop's local crops of example ``index``: crop j is a random resized crop
        (area fraction in ``area_range``, resized to ``size``) of a view rendered as in
        :meth:`views` from its own seeds (children 4 + 3j, 5 + 3j of ``seed``: the two
        views' children 0-3 are untouched), the crop window from child 6 + 3j.

        Returns [num, size, size, 3] float32 in [0, 1].
        """
        label = self.label(index)
        own = sample_uniforms(self._seed(index, 1))
        s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4 + 3 * num)
        out = []
        for j in range(num):
            u = own + self.view_jitter * (sample_uniforms(s[4 + 3 * j]) - own)
            whole = render(label, factors_from_uniforms(u), self.image_size, s[5 + 3 * j],
                           self.noise)
            window = augment.crop_window(self.image_size, self.image_size, s[6 + 3 * j],
                                         area_range)
            out.append(augment.crop_and_resize(whole, window, size))
        return tf.stack(out)

    def indices(self, split):
        """Finite tf.data of the split's example indices (int64, offset included)."""
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split={split!r}: allowed {', '.join(SPLIT_OFFSETS)}")
        offset = SPLIT_OFFSETS[split]
        return tf.data.Dataset.range(offset, offset + self.num_examples[split])
