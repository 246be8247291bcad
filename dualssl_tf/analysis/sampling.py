"""Base points x augmentations, the input layout of the covariance operator.

Every sampler returns ``x_aug`` [M, A, ...]: M independent base points ``x0`` and A
augmentations of each (the HLTM keeps the root latent and resamples the rest; the
translation toy keeps the object and moves it).
"""

import numpy as np
import tensorflow as tf


def hltm_augmented(tree, num_points, num_aug, seed):
    """M HLTM base points (root values), A augmented leaf samples of each.

    Args:
      tree: :class:`dualssl_tf.data.hltm.HLTM`.
      num_points: M; num_aug: A; seed: int.
    Returns:
      (x_aug [M, A, c**L] float32 numpy, roots [M] int numpy).
    """
    seeds = tf.random.experimental.stateless_split(tf.constant([seed, 7919], tf.int64), 2)
    _, lat = tree.sample(num_points, seeds[0])
    root = lat[tree.depth]                                            # [M, 1]
    x, _ = tree.sample(num_points * num_aug, seeds[1], root=tf.repeat(root, num_aug, axis=0))
    x = x.numpy().reshape(num_points, num_aug, tree.num_leaves)
    return x, root.numpy()[:, 0]


def translation1d_augmented(toy, num_aug=None, seed=0):
    """The 1-D translation toy's two objects, each at A locations.

    Args:
      toy: :class:`dualssl_tf.data.translation1d.Translation1D`.
      num_aug: A; ``None`` enumerates every location (A = length), which makes
        ``Kbar`` an exact average over translations.
    Returns:
      x_aug [2, A, length, 1] float32 numpy (row k = object z0 = k + 1).
    """
    if num_aug is None:
        locs = np.arange(toy.length)
    else:
        locs = np.random.default_rng(seed).integers(0, toy.length, num_aug)
    objs = np.repeat(np.arange(2), len(locs))
    x = toy.signals(objs, np.tile(locs, 2))
    return x.reshape(2, len(locs), toy.length, 1)
