"""The contrastive losses of Tian et al. (2020), as pure functions.

Conventions (docs/theory.md sections 1-2). For an anchor embedding ``f(x)``::

    r+   = 1/2 ||f(x) - f(x+)||^2      positive: another augmentation of the same x0
    r_k- = 1/2 ||f(x) - f(x_k-)||^2    negative k = 1..H

Two layers of functions:

* *Distance builders* turn embeddings into ``(r_pos [B], r_neg [B, H])``:
  :func:`explicit_distances` (H given negatives per anchor) and
  :func:`in_batch_distances` (SimCLR: every view of a batch of N pairs is an anchor, the
  other 2N-2 views are its negatives). The in-batch builder takes optional *global*
  candidates so negatives can be gathered across replicas without changing any loss.
* *Per-anchor losses* map ``(r_pos [B], r_neg [B, H]) -> [B]``: :func:`simple_loss`,
  :func:`soft_triplet_loss`, :func:`info_nce_loss`, :func:`exact_cov_loss`, plus the
  official HLTM code's batch form :func:`batch_mean_nce_loss` and the pair-weighted
  alpha-CL loss of the authors' follow-up (Tian 2022), :func:`alpha_cl_loss`.

The non-contrastive methods (BYOL, SimSiam: :mod:`dualssl_tf.methods.byol`) compare a
prediction with a target by cosine: :func:`cosine`, :func:`byol_loss`, :func:`simsiam_loss`
(symmetric over the two view orders, per example).

The names of ``--loss`` and the choice of a loss by name live with the method that uses
them (:data:`dualssl_tf.methods.contrastive.LOSSES`); this module imports nothing of the
package.

Everything is computed in at least float32 (float16/bfloat16 embeddings from mixed
precision are promoted; float64 stays float64 for exact checks), and no large constant
masks are used: excluded entries are dropped by index.
"""

import tensorflow as tf


def _f32(x):
    """Half-precision inputs are promoted to float32; float32/float64 pass unchanged."""
    x = tf.convert_to_tensor(x)
    return tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x


def half_sq_dist(a, b):
    """``1/2 ||a - b||^2`` over the last axis. a, b: [..., D] -> [...]."""
    a, b = _f32(a), _f32(b)
    return 0.5 * tf.reduce_sum(tf.square(a - b), axis=-1)


def explicit_distances(z, z_pos, z_neg):
    """Distances to one positive and H explicit negatives per anchor.

    Args:
      z: [B, D] anchor embeddings.
      z_pos: [B, D] positive embeddings.
      z_neg: [B, H, D] negative embeddings.
    Returns:
      (r_pos [B], r_neg [B, H]), float32 or wider.
    """
    return half_sq_dist(z, z_pos), half_sq_dist(z[:, None, :], z_neg)


def in_batch_distances(z1, z2, z1_all=None, z2_all=None, offset=0):
    """SimCLR's in-batch distances: 2N anchors, each with 2G-2 negatives.

    Anchors are the local views ``concat([z1, z2])``; candidates are the global views
    ``concat([z1_all, z2_all])``. Anchor ``i`` of ``z1`` sits at global row ``offset + i``
    and its positive is row ``G + offset + i`` (and vice versa for ``z2``). Its own row and
    its positive are removed, so each anchor sees the other ``2G - 2`` views as negatives.

    Args:
      z1, z2: [N, D] local embeddings of view 1 and view 2 (row i = same source image).
      z1_all, z2_all: [G, D] global embeddings (e.g. ``all_gather`` over replicas), with the
        local rows at ``offset:offset+N``. Default: the local batch (G = N, offset = 0).
      offset: int or scalar int tensor, position of this replica's rows in the global batch.
    Returns:
      (r_pos [2N], r_neg [2N, 2G-2]), float32 or wider; row order is ``concat([z1, z2])``.
    """
    z1, z2 = _f32(z1), _f32(z2)
    z1_all = z1 if z1_all is None else _f32(z1_all)
    z2_all = z2 if z2_all is None else _f32(z2_all)
    n = tf.shape(z1)[0]
    g = tf.shape(z1_all)[0]
    anchors = tf.concat([z1, z2], axis=0)                      # [2N, D]
    cands = tf.concat([z1_all, z2_all], axis=0)                # [2G, D]
    sq_a = tf.reduce_sum(tf.square(anchors), axis=1, keepdims=True)
    sq_c = tf.reduce_sum(tf.square(cands), axis=1)[None, :]
    dist = 0.5 * (sq_a + sq_c) - tf.matmul(anchors, cands, transpose_b=True)  # [2N, 2G]

    local = tf.range(n) + tf.cast(offset, tf.int32)
    self_idx = tf.concat([local, local + g], axis=0)           # [2N]
    pos_idx = tf.concat([local + g, local], axis=0)            # [2N]
    r_pos = tf.gather(dist, pos_idx, batch_dims=1)

    # Column j of the kept matrix is original column j, shifted past the two removed ones.
    lo = tf.minimum(self_idx, pos_idx)[:, None]
    hi = tf.maximum(self_idx, pos_idx)[:, None]
    j = tf.range(2 * g - 2)[None, :]
    cols = j + tf.cast(j >= lo, tf.int32)
    cols = cols + tf.cast(cols >= hi, tf.int32)
    r_neg = tf.gather(dist, cols, batch_dims=1)
    return r_pos, r_neg


def simple_loss(r_pos, r_neg):
    """L_simp = r+ - mean_k r_k-  (the paper's H = 1 form, averaged for H > 1).

    r_pos: [B], r_neg: [B, H] -> [B].
    """
    return _f32(r_pos) - tf.reduce_mean(_f32(r_neg), axis=-1)


def soft_triplet_loss(r_pos, r_neg, temperature, margin=0.0):
    """Soft triplet L_tri^tau = tau * log(1 + sum_k exp((r+ - r_k- + r0) / tau)).

    For H = 1 this is the paper's ``tau * log(1 + exp((r+ - r- + r0)/tau))``.
    r_pos: [B], r_neg: [B, H] -> [B].
    """
    r_pos, r_neg = _f32(r_pos), _f32(r_neg)
    z = (r_pos[:, None] - r_neg + margin) / temperature
    z = tf.concat([tf.zeros_like(z[:, :1]), z], axis=1)
    return temperature * tf.reduce_logsumexp(z, axis=1)


def info_nce_loss(r_pos, r_neg, temperature, beta=0.0):
    """InfoNCE L_nce^tau = -tau log(e^{-r+/tau} / (e^{-r+/tau} + sum_k e^{-r_k-/tau})).

    With ``beta != 0`` the positive term is reweighted:
    ``(L_nce + beta * r+) / (1 + beta)``, the distance form of the generalised loss (for unit
    embeddings it equals the NT-Xent form ``-(1+beta) s+/tau + lse`` over ``1+beta`` up to a
    constant, so gradients agree).
    r_pos: [B], r_neg: [B, H] -> [B].
    """
    r_pos, r_neg = _f32(r_pos), _f32(r_neg)
    logits = -tf.concat([r_pos[:, None], r_neg], axis=1) / temperature
    loss = temperature * tf.reduce_logsumexp(logits, axis=1) + r_pos
    if beta:
        loss = (loss + beta * r_pos) / (1.0 + beta)
    return loss


def exact_cov_loss(r_pos, r_neg, temperature, beta=0.0):
    """Exact-covariance surrogate L_cov = (1 + beta) w+ r+ - sum_k w_k r_k-.

    ``w_k = stopgrad(sigmoid(-r_k-/tau) / (tau H))`` and ``w+ = sum_k w_k``
    (docs/theory.md section 2): the covariance-operator part of InfoNCE with the augmentation
    residue dropped. ``beta`` unbalances the positive term (generalised loss).
    r_pos: [B], r_neg: [B, H] -> [B].
    """
    r_pos, r_neg = _f32(r_pos), _f32(r_neg)
    h = tf.cast(tf.shape(r_neg)[1], r_neg.dtype)
    w = tf.stop_gradient(tf.sigmoid(-r_neg / temperature) / (temperature * h))
    w_pos = tf.reduce_sum(w, axis=1)
    return (1.0 + beta) * w_pos * r_pos - tf.reduce_sum(w * r_neg, axis=1)


def batch_mean_nce_loss(r_pos, r_neg, temperature, dim, mean_fn=tf.reduce_mean):
    """The official HLTM code's "nce": ``-e^{-r+/tau} / (e^{-r+/tau} + e^{-r-/tau})``.

    ``r+`` and ``r-`` are batch mean squared errors (``torch.nn.MSELoss``: mean over batch
    *and* feature dims, i.e. ``2 mean_b(r_b) / D``). No log, not per sample. Returned as a
    [B] vector whose mean is that scalar, so it plugs into the per-anchor interface.
    r_pos: [B], r_neg: [B, H]; dim: embedding width D; mean_fn: tensor -> scalar batch
    mean (``cross_replica.cross_replica_mean`` makes it the global-batch mean on replicas).
    """
    r_pos, r_neg = _f32(r_pos), _f32(r_neg)
    mse_pos = 2.0 * mean_fn(r_pos) / dim
    mse_neg = 2.0 * mean_fn(r_neg) / dim
    value = -tf.sigmoid((mse_neg - mse_pos) / temperature)
    return tf.fill(tf.shape(r_pos), value)


# -- alpha-CL: pair-weighted contrastive losses (Tian 2022) ---------------------------------

# The pairwise-importance forms of alpha-CL (the official code's ``alpha_type``).
ALPHA_CL_FORMS = ("exp", "inverse")


def alpha_cl_weights(r_pos, r_neg, temperature, form="exp", exponent=1.0, eps=0.1,
                     inverse_exponent=1.0, pos_weight=0.0):
    """The pairwise importance alpha_ik [B, H] of alpha-CL, without gradient.

    ``x = r_k-^exponent`` (``exponent`` = the official ``alpha_exponent``; 2 is the
    paper's ``p = 4``, since r = d^2 / 2), the unnormalised weight
    ``w_k = exp(-x / tau)`` (``form="exp"``) or ``1 / (x + tau)^inverse_exponent``
    (``"inverse"``), normalised per anchor::

        alpha_k = w_k / (sum_j w_j + eps * H + pos_weight * w(r+))

    ``eps``: the official ``alpha_eps``; ``pos_weight``: the paper's epsilon, the weight of
    the positive pair's own term in the normaliser xi_i (the official code has none: 0).
    With form exp, exponent 1, eps 0 and pos_weight 1, alpha is InfoNCE's pair weight
    ``e^{-r_k-/tau} / (e^{-r+/tau} + sum_j e^{-r_j-/tau})``. Computed from logarithms
    (a log-sum-exp), so small temperatures neither underflow nor divide by zero.

    r_pos: [B], r_neg: [B, H] -> [B, H], float32 or wider.
    """
    r_pos, r_neg = tf.stop_gradient(_f32(r_pos)), tf.stop_gradient(_f32(r_neg))
    r_pos = r_pos[:, None]
    if form == "exp":
        def log_w(r):
            return -tf.pow(r, exponent) / temperature
    elif form == "inverse":
        def log_w(r):
            return -inverse_exponent * tf.math.log(tf.pow(r, exponent) + temperature)
    else:
        raise ValueError(f"Unknown alpha-CL form {form!r}; expected one of "
                         f"{', '.join(ALPHA_CL_FORMS)}.")
    # Distances are >= 0 up to rounding; a tiny negative r would make r^p NaN for p < 1.
    r_pos, r_neg = tf.maximum(r_pos, 0.0), tf.maximum(r_neg, 0.0)
    lw = log_w(r_neg)                                                     # [B, H]
    h = tf.cast(tf.shape(r_neg)[1], lw.dtype)
    extra = []
    if eps > 0:
        extra.append(tf.fill(tf.shape(r_pos), tf.math.log(tf.constant(eps, lw.dtype) * h)))
    if pos_weight > 0:
        extra.append(log_w(r_pos) + tf.math.log(tf.constant(pos_weight, lw.dtype)))
    log_z = tf.reduce_logsumexp(tf.concat([lw] + extra, axis=1), axis=1, keepdims=True)
    return tf.exp(lw - log_z)


def alpha_cl_loss(r_pos, r_neg, temperature, form="exp", exponent=1.0, eps=0.1,
                  inverse_exponent=1.0, pos_weight=0.0):
    """alpha-CL (Tian 2022, "Understanding Deep Contrastive Learning via Coordinate-wise
    Optimization"): ``sum_k alpha_k (r+ - r_k-)`` per anchor, alpha from
    :func:`alpha_cl_weights` (arguments there) under stop-gradient.

    The official code's ``loss_type=dual2`` (facebookresearch/luckmatters,
    ssl/real-dataset/loss/nt_xent.py: its ``negatives - positives`` is ``r+ - r-`` for unit
    embeddings), defaults as its config (alpha_type exp, alpha_exponent 1, alpha_eps 0.1,
    inverse_exponent 1). Its gradient is ``sum_k alpha_k (dr+ - dr_k-)``; with the
    InfoNCE weights (see :func:`alpha_cl_weights`) it is exactly InfoNCE's gradient (the
    paper's reading of InfoNCE as one alpha-CL), though the values differ.

    r_pos: [B], r_neg: [B, H] -> [B].
    """
    r_pos, r_neg = _f32(r_pos), _f32(r_neg)
    alpha = alpha_cl_weights(r_pos, r_neg, temperature, form, exponent, eps,
                             inverse_exponent, pos_weight)
    return tf.reduce_sum(alpha * (r_pos[:, None] - r_neg), axis=1)


# -- cosine losses of the non-contrastive methods ------------------------------------------

# Squared-norm floor of the cosine's normalisation (tf.math.l2_normalize's default; PyTorch's
# F.normalize in BYOL/SimSiam floors the norm at 1e-12, the same up to this floor).
COSINE_EPS = 1e-12


def cosine(a, b):
    """Row-wise cosine ``a.b / (|a| |b|)`` (norms floored at ``sqrt(COSINE_EPS)``).

    a, b: [B, D] -> [B], in float32 (float64 stays float64)."""
    a, b = _f32(a), _f32(b)
    a = tf.math.l2_normalize(a, axis=-1, epsilon=COSINE_EPS)
    b = tf.math.l2_normalize(b, axis=-1, epsilon=COSINE_EPS)
    return tf.reduce_sum(a * b, axis=-1)


def mean_cosine(a, b):
    """Mean of :func:`cosine` over the batch (a scalar)."""
    return tf.reduce_mean(cosine(a, b))


def byol_loss(p1, p2, t1, t2):
    """BYOL's symmetric loss per example (Grill et al. 2020, eq. 2 and its symmetrisation):
    ``(2 - 2 cos(p1, t2)) + (2 - 2 cos(p2, t1))``, in [0, 8].

    p1, p2: [B, D] online predictions of views 1 and 2; t1, t2: [B, D] target projections
    (the caller stops their gradient). Returns [B]."""
    return (2.0 - 2.0 * cosine(p1, t2)) + (2.0 - 2.0 * cosine(p2, t1))


def simsiam_loss(p1, p2, t1, t2):
    """SimSiam's symmetric negative cosine per example (Chen & He 2021, eq. 2):
    ``-(cos(p1, t2) + cos(p2, t1)) / 2``, in [-1, 1]. Arguments as :func:`byol_loss`."""
    return -0.5 * (cosine(p1, t2) + cosine(p2, t1))
