"""The seeded, stratified held-out split of --holdout_fraction (TensorFlow-free)."""

import numpy as np
import pytest

from dualssl_tf.data.holdout import class_holdout_count, stratified_holdout


@pytest.mark.parametrize("n,fraction,k", [
    (10, 0.25, 3),    # 2.5 rounds half up
    (10, 0.24, 2),
    (3, 0.1, 1),      # at least one of a class of >= 2
    (2, 0.9, 1),      # at most n - 1: the class keeps a training element
    (1, 0.5, 0),      # a class of one is never held out
    (100, 0.0, 0),
])
def test_class_counts(n, fraction, k):
    assert class_holdout_count(n, fraction) == k


def test_stratified_seeded_and_unlabelled_kept():
    labels = np.array([0] * 10 + [1] * 4 + [-1] * 5 + [2] * 1)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(labels))
    labels = labels[perm]   # classes interleaved, as files of nested folders may be
    held = stratified_holdout(labels, 0.25, seed=3)
    counts = {c: int(np.sum(labels[held] == c)) for c in (-1, 0, 1, 2)}
    assert counts == {-1: 0, 0: 3, 1: 1, 2: 0}
    assert np.all(np.diff(held) > 0)                       # sorted, no repeats
    np.testing.assert_array_equal(held, stratified_holdout(labels, 0.25, seed=3))
    others = [tuple(stratified_holdout(labels, 0.25, seed=s)) for s in range(1, 9)]
    assert len(set(others)) > 1                            # the seed chooses
    assert stratified_holdout(labels, 0.0, seed=3).size == 0


def test_one_class_choice_ignores_other_classes():
    """Class c is drawn with (seed, c) alone: growing class 1 leaves class 0's files."""
    small = np.array([0] * 8 + [1] * 3)
    big = np.array([0] * 8 + [1] * 30)
    a, b = stratified_holdout(small, 0.5, 7), stratified_holdout(big, 0.5, 7)
    np.testing.assert_array_equal(a[a < 8], b[b < 8])
    assert np.sum(b >= 8) == 15
