"""Scores -> accuracies, and label checks shared by the probes.

Shapes: scores ``[N, C]`` (logits, votes; larger is more likely), labels ``[N]`` int in
``[0, C)``.
"""

import numpy as np


def topk_accuracy(scores, labels, k):
    """Fraction of rows whose label is among the k highest scores.

    scores: [N, C]; labels: [N] int. Returns a float, or None when k >= C (trivially 1).
    Ties are broken by the lower class index.
    """
    scores = np.asarray(scores)
    if k >= scores.shape[1] and k > 1:
        return None
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(topk == np.asarray(labels)[:, None], axis=1)))


def check_labels(train_y, test_y, num_classes):
    """Raises ValueError (naming ``num_classes``) if a label of train_y [N] or test_y [M] lies
    outside [0, num_classes)."""
    for name, y in (("train", train_y), ("test", test_y)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"num_classes: {name} labels span [{y.min()}, {y.max()}], "
                             f"outside [0, {num_classes})")
