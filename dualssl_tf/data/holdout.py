"""A seeded, stratified held-out split of a labelled collection (``--holdout_fraction``).

For image folders without their own ``train/`` and ``val/`` (or ``test/``) sub-folders:
a fraction of every class is set aside, never pretrained on, for the online probe's test
accuracy and ``tools/linear_eval.py``. The choice depends only on the labels in their
(sorted file) order, the fraction and the seed, so a resumed run sets aside the same
files; the run's model card records them by name as well, so an evaluation after export
uses exactly those files even when the folder has changed since. TensorFlow-free.
"""

import math
import os

import numpy as np

UNLABELLED = -1
# Sub-folders that make a folder's own held-out split (ImageNet's layout is train/ + val/).
OWN_TRAIN, OWN_HELD_OUT = "train", ("test", "val")


def own_split(path, isdir=os.path.isdir):
    """``(train_dir, held_out_dir)`` when ``path`` has ``train/`` and ``test/`` (or
    ``val/``) sub-folders, else None. ``isdir``: ``os.path.isdir`` before TensorFlow is
    imported, ``tf.io.gfile.isdir`` for URLs (gs://)."""
    if not path:
        return None
    train = os.path.join(path, OWN_TRAIN)
    for name in OWN_HELD_OUT:
        held = os.path.join(path, name)
        if isdir(train) and isdir(held):
            return train, held
    return None


def class_holdout_count(n, fraction):
    """How many of a class's ``n`` elements are held out: ``fraction * n`` rounded half
    up, at least 1 and at most ``n - 1`` (a class keeps at least one training element)
    when ``n >= 2`` and ``fraction > 0``; 0 for a class of one element."""
    if fraction <= 0 or n < 2:
        return 0
    return min(max(int(math.floor(fraction * n + 0.5)), 1), n - 1)


def stratified_holdout(labels, fraction, seed):
    """Indices of the held-out elements.

    Args:
      labels: [N] ints, class ids >= 0 or ``UNLABELLED`` (-1: never held out, they cannot
        be scored).
      fraction: in [0, 1).
      seed: int; class c's elements are drawn by a permutation seeded with (seed, c), so
        one class's choice does not depend on the others' sizes.
    Returns:
      sorted int64 array of held-out indices into ``labels`` (class c contributes
      :func:`class_holdout_count` of its elements).
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    held = []
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        k = class_holdout_count(len(members), fraction)
        if k:
            order = np.random.default_rng([int(seed), int(c)]).permutation(len(members))
            held.append(members[order[:k]])
    return np.sort(np.concatenate(held)) if held else np.zeros([0], np.int64)
