"""Small labelled data shared by the evaluation tests."""

import numpy as np


def blobs(n, seed, num_classes=3, dim=10, sep=4.0):
    """n points [n, dim] float32 around num_classes fixed Gaussian centres (scale ``sep``),
    and their int labels [n]."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(num_classes, dim)) * sep
    y = rng.integers(0, num_classes, n)
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y
