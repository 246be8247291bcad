"""The 1-D translation toy of Tian et al. (2020), Figure 3 (docs/theory.md section 5).

A circular binary signal of length d holds one object at location z': pattern "11"
(z0 = 1, label 0) or "101" (z0 = 2, label 1), starting at z' and wrapping around. Augmentation
draws a new location z' for the same object, so a translation-invariant representation that
separates the two objects is what contrastive training should find.

Batches follow ARCHITECTURE.md: ``view1``, ``view2`` [B, d, 1] float32 (same object, two
independent locations) and ``label`` [B] int32 (z0 - 1). Sampling is stateless: batch k of a
run is drawn with seed (seed, k), so every step is fresh yet reproducible.
"""

import numpy as np
import tensorflow as tf

# Object patterns, indexed by label = z0 - 1.
PATTERNS = ((1, 1), (1, 0, 1))


class Translation1D:
    """Generator of the translation toy.

    Args:
      length: d >= 4, signal length (the longer pattern "101" needs 3 cells, and a
        location change must be able to move it).

    Example:
      >>> toy = Translation1D(length=12)
      >>> batch = toy.training_batch(32, seed=(0, 0))   # view1/view2: [32, 12, 1]
      >>> toy.signals([1], [10])[0, :, 0]              # "101" starting at 10, wrapping
      array([1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 1., 0.], dtype=float32)
    """

    def __init__(self, length=12):
        if length < 4:
            raise ValueError(f"length: must be >= 4 to hold the pattern '101', got {length}")
        self.length = int(length)
        base = np.zeros((len(PATTERNS), self.length), np.float32)
        for k, pattern in enumerate(PATTERNS):
            base[k, :len(pattern)] = pattern
        self.base = base                                 # [2, d], objects at location 0
        self._base_t = tf.constant(base)

    @property
    def num_objects(self):
        return len(PATTERNS)

    def signals(self, labels, locations):
        """Signals of objects ``labels`` [n] (0: "11", 1: "101") at ``locations`` [n].

        NumPy version, for analysis. Returns [n, d, 1] float32.
        """
        labels = np.asarray(labels)
        idx = (np.arange(self.length)[None, :] - np.asarray(locations)[:, None]) % self.length
        return self.base[labels[:, None], idx][..., None]

    def _signals_tf(self, labels, locations):
        idx = tf.math.floormod(tf.range(self.length)[None, :] - locations[:, None], self.length)
        return tf.gather(tf.gather(self._base_t, labels), idx, batch_dims=1)[..., None]

    def training_batch(self, batch_size, seed):
        """One SimCLR batch: ``view1``, ``view2`` [B, d, 1], ``label`` [B] int32."""
        s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
        labels = tf.random.stateless_uniform([batch_size], s[0], 0, 2, dtype=tf.int32)
        loc1 = tf.random.stateless_uniform([batch_size], s[1], 0, self.length, dtype=tf.int32)
        loc2 = tf.random.stateless_uniform([batch_size], s[2], 0, self.length, dtype=tf.int32)
        return {"view1": self._signals_tf(labels, loc1), "view2": self._signals_tf(labels, loc2),
                "label": labels}

    def dataset(self, batch_size, seed, start_step=0):
        """Endless tf.data of training batches; batch k uses seed (seed, k)."""
        ds = tf.data.Dataset.counter(start=start_step)
        ds = ds.map(lambda k: self.training_batch(
            batch_size, tf.stack([tf.cast(seed, tf.int64), k])),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    def eval_arrays(self):
        """Every (object, location) once: (x [2d, d, 1] float32, label [2d] int32)."""
        labels = np.repeat(np.arange(self.num_objects), self.length)
        locs = np.tile(np.arange(self.length), self.num_objects)
        return self.signals(labels, locs), labels.astype(np.int32)

    def eval_dataset(self, batch_size=None):
        """(x, label) batches of :meth:`eval_arrays` (one batch by default)."""
        x, y = self.eval_arrays()
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size or len(y))

    def to_dict(self):
        return {"length": self.length, "patterns": [list(p) for p in PATTERNS]}
