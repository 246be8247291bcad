"""Label-free collapse monitors of the normalised embedding (``embed_std``,
``effective_rank``; :mod:`dualssl_tf.analysis.collapse` draws them from a run)."""

import tensorflow as tf

from dualssl_tf.monitors.base import EpochMetric


def effective_rank(x):
    """Effective rank of ``x`` [N, D] (Roy & Vetterli 2007): ``exp(H(p))`` of the singular
    values normalised to sum 1, ``p_j = s_j / sum(s)``; H the entropy (``0 log 0 = 0``).

    1 for a rank-1 matrix (every row on one line: complete collapse), ``min(N, D)`` when
    every singular value is equal; a float32 scalar tensor. The rows are not centred, so a
    collapse to one point gives 1 rather than the rank of rounding noise.
    """
    s = tf.linalg.svd(tf.cast(x, tf.float32), compute_uv=False)
    p = s / tf.maximum(tf.reduce_sum(s), 1e-30)
    return tf.exp(-tf.reduce_sum(tf.math.xlogy(p, p)))


class EmbeddingSpread(EpochMetric):
    """Adds ``embed_std`` and ``effective_rank``: collapse monitors of the normalised
    embedding (label-free).

    ``embed_std``: the per-dimension standard deviation over a fixed batch of the
    normalised embedding ``f / (||f|| + eps)``, averaged over dimensions: 0 when every
    input maps to the same point (collapse), about ``1/sqrt(D)`` when embeddings spread
    over the sphere. ``effective_rank``: :func:`effective_rank` of the same [N, D] matrix,
    1 at complete collapse, falling with dimensional collapse (few directions used).

    Args:
      encoder, head: the dual network's towers (head may be None).
      x: [N, ...] fixed inputs (e.g. un-augmented images).
      norm_eps: the method's normalisation epsilon.
    """

    def __init__(self, encoder, head, x, norm_eps=1e-4):
        super().__init__()
        self.encoder, self.head, self.x, self.norm_eps = encoder, head, x, norm_eps

    def compute(self, epoch=0):
        f = self.encoder(self.x, training=False)
        if self.head is not None:
            f = self.head(f, training=False)
        f = tf.cast(f, tf.float32)  # mixed precision: the monitor in float32, as the loss
        f = f / (tf.norm(f, axis=-1, keepdims=True) + self.norm_eps)
        return {"embed_std": float(tf.reduce_mean(tf.math.reduce_std(f, axis=0))),
                "effective_rank": float(effective_rank(f))}
