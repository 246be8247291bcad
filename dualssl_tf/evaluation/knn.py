"""kNN evaluation of frozen features (InstDisc / DINO).

Cosine similarity between L2-normalised features; each of the k most similar train examples
adds ``exp(sim / temperature)`` to its class; the class with the largest vote wins.

Shapes: train features ``[N, F]`` with labels ``[N]``, queries ``[M, F]`` -> votes
``[M, C]``.

Example:
  >>> knn_probe(xtr, ytr, xte, yte, num_classes=10, k=200)["top1"]
"""

import keras
import numpy as np
import tensorflow as tf

from dualssl_tf.evaluation.metrics import check_labels, topk_accuracy


def knn_scores(train_x, train_y, query_x, num_classes, k=200, temperature=0.07,
               batch_size=256, verbose=0):
    """Temperature-weighted kNN votes (InstDisc / DINO).

    Cosine similarity s between L2-normalised features; each of the k most similar train
    examples adds ``exp(s / temperature)`` to its class. k is clipped to N.

    Args:
      train_x [N, F], train_y [N] int, query_x [M, F].
      batch_size: queries per similarity block ([batch_size, N] floats at a time).
      verbose: 1 shows a progress bar over the ceil(M / batch_size) blocks.
    Returns:
      [M, C] float32 class votes; argmax is the prediction.
    """
    train = tf.math.l2_normalize(tf.convert_to_tensor(train_x, tf.float32), axis=1)
    labels = tf.one_hot(tf.convert_to_tensor(train_y, tf.int64), num_classes)
    k = int(min(k, len(train_x)))
    out = []
    bar = keras.utils.Progbar(-(-len(query_x) // batch_size), verbose=verbose,
                              unit_name="block")
    for i, start in enumerate(range(0, len(query_x), batch_size)):
        q = tf.math.l2_normalize(tf.convert_to_tensor(query_x[start:start + batch_size],
                                                      tf.float32), axis=1)
        sim = tf.matmul(q, train, transpose_b=True)                     # [m, N]
        top_sim, top_idx = tf.math.top_k(sim, k=k)                        # [m, k]
        weights = tf.exp(top_sim / temperature)
        votes = tf.einsum("mk,mkc->mc", weights, tf.gather(labels, top_idx))
        out.append(votes.numpy())
        bar.update(i + 1)
    return np.concatenate(out) if out else np.zeros([0, num_classes], np.float32)


def knn_probe(train_x, train_y, test_x, test_y, num_classes, k=200, temperature=0.07,
              verbose=0):
    """kNN evaluation.

    Args:
      train_x [N, F], train_y [N], test_x [M, F], test_y [M]: features and int labels.
      num_classes: C; k: neighbours (clipped to N); temperature: T of ``exp(sim / T)``.
      verbose: 1 shows the progress of the test queries, with their total.
    Returns:
      dict ``top1``, ``top5`` (None if C <= 5), ``k``, ``temperature``, ``num_train``,
      ``num_test``.
    """
    if k < 1:
        raise ValueError(f"--knn_k: must be >= 1, got {k}")
    if len(train_x) < 1 or len(test_x) < 1:
        raise ValueError(f"knn_probe: need train and test examples, got {len(train_x)} and "
                         f"{len(test_x)}")
    check_labels(train_y, test_y, num_classes)
    scores = knn_scores(train_x, train_y, test_x, num_classes, k, temperature,
                        verbose=verbose)
    return {"top1": topk_accuracy(scores, test_y, 1), "top5": topk_accuracy(scores, test_y, 5),
            "k": int(min(k, len(train_x))), "temperature": float(temperature),
            "num_train": int(len(train_x)), "num_test": int(len(test_x))}
