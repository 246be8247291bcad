"""kNN evaluation of frozen features (InstDisc / DINO).

Cosine similarity between L2-normalised features; each of the k most similar train examples
adds ``exp(sim / temperature)`` to its class; the class with the largest vote wins.

Shapes: train features ``[N, F]`` with labels ``[N]``, queries ``[M, F]`` -> votes
``[M, C]``.

Several k in one pass: the neighbours are found once for the largest k (``tf.math.top_k``
sorts them and keeps the lower index first on ties, so its first k are those of a run at
k) and each k sums the votes of its first k. k is clipped to N: on small data k = 200
votes over other classes, so ``knn_probe`` reports each requested k with the k it used.

Example:
  >>> knn_probe(xtr, ytr, xte, yte, num_classes=10, k=(20, 200))["top1@20"]
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
    return knn_scores_at(train_x, train_y, query_x, num_classes, [k], temperature,
                         batch_size, verbose)[0]


def knn_scores_at(train_x, train_y, query_x, num_classes, ks, temperature=0.07,
                  batch_size=256, verbose=0):
    """:func:`knn_scores` at several k in one pass: a list of [M, C] float32 votes, one
    per k of ``ks`` (each clipped to N), equal to separate :func:`knn_scores` runs.

    The neighbours of a query block are found once, for the largest k; ``top_k`` returns
    them sorted (ties: lower index first), so the first k of them are the k nearest.
    """
    train = tf.math.l2_normalize(tf.convert_to_tensor(train_x, tf.float32), axis=1)
    labels = tf.one_hot(tf.convert_to_tensor(train_y, tf.int64), num_classes)
    ks = [int(min(k, len(train_x))) for k in ks]
    out = [[] for _ in ks]
    bar = keras.utils.Progbar(-(-len(query_x) // batch_size), verbose=verbose,
                              unit_name="block")
    for i, start in enumerate(range(0, len(query_x), batch_size)):
        q = tf.math.l2_normalize(tf.convert_to_tensor(query_x[start:start + batch_size],
                                                      tf.float32), axis=1)
        sim = tf.matmul(q, train, transpose_b=True)                     # [m, N]
        top_sim, top_idx = tf.math.top_k(sim, k=max(ks))                  # [m, kmax]
        neighbours = tf.gather(labels, top_idx)                           # [m, kmax, C]
        for j, k in enumerate(ks):
            # exp of the [m, k] slice, not a slice of exp over [m, kmax]: a vectorised exp
            # can round its tail elements differently (1 ulp), and a run at k alone sees
            # [m, k].
            weights = tf.exp(top_sim[:, :k] / temperature)
            votes = tf.einsum("mk,mkc->mc", weights, neighbours[:, :k])
            out[j].append(votes.numpy())
        bar.update(i + 1)
    return [np.concatenate(o) if o else np.zeros([0, num_classes], np.float32) for o in out]


def knn_probe(train_x, train_y, test_x, test_y, num_classes, k=200, temperature=0.07,
              verbose=0):
    """kNN evaluation at one k or several (one pass).

    Args:
      train_x [N, F], train_y [N], test_x [M, F], test_y [M]: features and int labels.
      num_classes: C; k: neighbours, an int or a list of ints (each clipped to N);
      temperature: T of ``exp(sim / T)``.
      verbose: 1 shows the progress of the test queries, with their total.
    Returns:
      dict, for every requested k K: ``top1@K``, ``top5@K`` (None if C <= 5) and ``k@K``
      (the k used: min(K, N)); ``top1``, ``top5``, ``k`` of the first requested k (the
      keys of a single-k probe); ``ks`` (the requested k, in order), ``clipped`` (those
      above N, which gave the result of k = N), ``temperature``, ``num_train``,
      ``num_test``.
    """
    ks = [int(v) for v in (k if isinstance(k, (list, tuple)) else [k])]
    if not ks or min(ks) < 1:
        raise ValueError(f"--knn_k: must be one or more integers >= 1, got "
                         f"{','.join(map(str, ks))}")
    if len(train_x) < 1 or len(test_x) < 1:
        raise ValueError(f"knn_probe: need train and test examples, got {len(train_x)} and "
                         f"{len(test_x)}")
    check_labels(train_y, test_y, num_classes)
    ks = list(dict.fromkeys(ks))  # a repeated k once
    scores = knn_scores_at(train_x, train_y, test_x, num_classes, ks, temperature,
                           verbose=verbose)
    n = int(len(train_x))
    out = {}
    for kk, sc in zip(ks, scores):
        out.update({f"top1@{kk}": topk_accuracy(sc, test_y, 1),
                    f"top5@{kk}": topk_accuracy(sc, test_y, 5), f"k@{kk}": min(kk, n)})
    first = ks[0]
    out.update(top1=out[f"top1@{first}"], top5=out[f"top5@{first}"], k=out[f"k@{first}"],
               ks=ks, clipped=[kk for kk in ks if kk > n], temperature=float(temperature),
               num_train=n, num_test=int(len(test_x)))
    return out
