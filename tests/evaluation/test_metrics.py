"""top-k accuracy by hand, and the label-range check."""

import numpy as np
import pytest

from dualssl_tf.evaluation import metrics


def test_topk_accuracy_by_hand():
    scores = np.array([[0.1, 0.5, 0.2, 0.0, 0.3, 0.9],
                       [0.9, 0.0, 0.1, 0.2, 0.3, 0.4]])
    labels = np.array([1, 5])
    assert metrics.topk_accuracy(scores, labels, 1) == 0.0
    # Row 0: top-2 {5, 1} holds 1; row 1: top-2 {0, 5} holds 5.
    assert metrics.topk_accuracy(scores, labels, 2) == 1.0
    assert metrics.topk_accuracy(scores[:, :5], np.array([1, 0]), 5) is None


def test_check_labels_names_the_split():
    metrics.check_labels(np.array([0, 2]), np.array([1]), 3)
    with pytest.raises(ValueError, match=r"num_classes: test labels span \[0, 3\]"):
        metrics.check_labels(np.array([0, 2]), np.array([0, 3]), 3)
