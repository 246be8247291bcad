"""Numerical checks of Theorems 1-4 of Tian et al. (2020) (docs/theory.md sections 2-3).

The identities are exact for bias-free ReLU networks when expectations are exact sums:
M base points with A *enumerated* augmentations each (``x_aug`` [M, A, d]); positives are all
``(a, a')`` pairs of one base point, negatives all ``(x0_j, a'')`` including ``j = i``. Every
function here enumerates those tuples ``(i, a, a', j, a'')`` (``M^2 A^3`` of them, so keep M
and A small) and returns the autodiff gradient next to the closed form, with the relative
error ``||grad - predicted|| / ||predicted||``.

Towers: ``"anchor"`` back-propagates only through the anchor ``f(x_{i,a})`` (positives and
negatives are stop-gradient); ``"all"`` through every view (shared weights, as trained), which
doubles the symmetric operators.

Losses come from :mod:`dualssl_tf.losses`, which keep float64 inputs in float64; the weights
xi of the weighted losses are read back from the loss itself (:func:`loss_weights`), so every
identity is checked to float64 rounding. Run the model in float64
(``keras.config.set_floatx("float64")`` or ``dtype=``, as :func:`bias_free_mlp` does).
"""

import numpy as np
import tensorflow as tf
import keras

from dualssl_tf import losses
from dualssl_tf.analysis import connections
from dualssl_tf.analysis.covariance import CovarianceOperator

TOWERS = ("anchor", "all")


def half_sq_dist(a, b):
    """``1/2 ||a - b||^2`` over the last axis, in the inputs' dtype (float64 here)."""
    return 0.5 * tf.reduce_sum(tf.square(a - b), axis=-1)


def bias_free_mlp(widths, input_dim, activation="relu", dtype="float64", seed=0, name="mlp"):
    """A bias-free MLP ``input_dim -> widths[0] -> ... -> widths[-1]`` (last layer linear).

    Layers are named ``dense_0 .. dense_{L-1}``. Hidden layers use ``activation``
    ("relu", "leaky_relu" or "linear"); weights are Glorot-normal with a fixed seed.
    Returns a built keras.Model ``[B, input_dim] -> [B, widths[-1]]``.
    """
    inp = keras.Input((input_dim,), dtype=dtype)
    h = inp
    for i, width in enumerate(widths):
        act = activation if i < len(widths) - 1 else None
        h = keras.layers.Dense(width, use_bias=False, activation=act, dtype=dtype,
                               kernel_initializer=keras.initializers.GlorotNormal(seed + i),
                               name=f"dense_{i}")(h)
    return keras.Model(inp, h, name=name)


def enumerated_augmentations(x0, num_aug, strength, seed=0):
    """A fixed set of A additive-noise augmentations per base point.

    x0: [M, d] -> x_aug [M, A, d] with ``x_aug[i, a] = x0[i] + strength * eps[i, a]``,
    ``eps ~ N(0, 1)``. ``strength = 0`` means no augmentation (all views equal x0).
    """
    x0 = np.asarray(x0)
    eps = np.random.default_rng(seed).standard_normal((x0.shape[0], num_aug) + x0.shape[1:])
    return (x0[:, None] + strength * eps).astype(x0.dtype)


def _check_towers(towers):
    if towers not in TOWERS:
        raise ValueError(f"towers: expected one of {TOWERS}, got {towers!r}")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _tuples(m, a):
    """Index arrays of all (i, a, a', j, a'') tuples, flattened. Each [m^2 a^3]."""
    grids = np.meshgrid(np.arange(m), np.arange(a), np.arange(a), np.arange(m), np.arange(a),
                        indexing="ij")
    return [g.reshape(-1) for g in grids]


def _tuple_distances(f, towers, m, a):
    """r+ and r- for every tuple, with the stop-gradients of ``towers``.

    f: [M, A, n] outputs (on the tape). Returns (r_pos [T], r_neg [T], idx tuple arrays).
    """
    i, ai, ap, j, an = _tuples(m, a)
    other = f if towers == "all" else tf.stop_gradient(f)
    anchor = tf.gather_nd(f, np.stack([i, ai], 1))
    pos = tf.gather_nd(other, np.stack([i, ap], 1))
    neg = tf.gather_nd(other, np.stack([j, an], 1))
    return half_sq_dist(anchor, pos), half_sq_dist(anchor, neg), (i, ai, ap, j, an)


def _model_fn(model, output_fn):
    return output_fn or (lambda x: model(x, training=False))


# ------------------------------------------------------------------------- Theorem 1
def theorem1_check(model, layer, x1, x2, output_fn=None):
    """Theorem 1: gradient of ``r = 1/2||f(x1) - f(x2)||^2`` (summed over the batch).

    One tower (through f(x1)):  ``g = sum_b K_l(x1_b) (K_l(x1_b)^T w - K_l(x2_b)^T w)``
    Both towers:                ``g = sum_b (K_l(x1_b) - K_l(x2_b)) (f(x1_b) - f(x2_b))``
    The one-tower form uses reversibility ``f = K^T w``, so it holds for bias-free nets.

    Args:
      model, layer, output_fn: as :func:`connections.connection`.
      x1, x2: [B, ...] the two views.
    Returns:
      dict with ``one_tower`` and ``both_towers`` relative errors (floats) and the
      gradients ``grad_one``, ``pred_one``, ``grad_both``, ``pred_both`` ([P] arrays).
    """
    fn = _model_fn(model, output_fn)
    conn = connections.Connection(model, layer, output_fn)
    var = connections._tf_var(conn.variable)
    x1, x2 = tf.convert_to_tensor(x1), tf.convert_to_tensor(x2)
    out = {}
    for name, stop2 in (("one", True), ("both", False)):
        with tf.GradientTape() as tape:
            f1, f2 = fn(x1), fn(x2)
            if stop2:
                f2 = tf.stop_gradient(f2)
            r = tf.reduce_sum(half_sq_dist(f1, f2))
        out[f"grad_{name}"] = tf.reshape(tape.gradient(r, var), [-1]).numpy()
    k1, k2 = conn(x1).numpy(), conn(x2).numpy()               # [B, n, P]
    w = conn.weight_vector().numpy()
    out["pred_one"] = np.einsum("bnp,bn->p", k1, k1 @ w - k2 @ w)
    f1, f2 = fn(x1).numpy(), fn(x2).numpy()
    out["pred_both"] = np.einsum("bnp,bn->p", k1 - k2, f1 - f2)
    out["one_tower"] = _rel(out["grad_one"], out["pred_one"])
    out["both_towers"] = _rel(out["grad_both"], out["pred_both"])
    return out


# ------------------------------------------------------------------------- Theorem 2
def common_property(loss_fn, r_pos, r_neg):
    """Theorem 2: derivatives of a per-anchor loss w.r.t. the distances.

    Args:
      loss_fn: ``(r_pos [B], r_neg [B, H]) -> [B]`` (e.g. ``losses.get_loss_fn("nce")``).
      r_pos: [B]; r_neg: [B, H].
    Returns:
      dict ``d_pos`` [B] (should be > 0), ``d_neg`` [B, H] (< 0) and ``balance`` [B] =
      ``d_pos + sum_k d_neg`` (0 for L_simp, L_tri, L_nce), as float64 arrays.
    """
    # float64 in, float64 out: the losses keep float64, so weights are exact for the checks.
    r_pos = tf.convert_to_tensor(r_pos, tf.float64)
    r_neg = tf.convert_to_tensor(r_neg, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([r_pos, r_neg])
        total = tf.reduce_sum(loss_fn(r_pos, r_neg))  # anchors are independent
    d_pos, d_neg = tape.gradient(total, [r_pos, r_neg])
    d_pos = d_pos.numpy().astype(np.float64)
    d_neg = d_neg.numpy().astype(np.float64)
    return {"d_pos": d_pos, "d_neg": d_neg, "balance": d_pos + d_neg.sum(axis=1)}


# ------------------------------------------------------------------------- Theorem 3
def expected_loss_gradient(model, layer, x_aug, loss_fn, towers="anchor", output_fn=None,
                           neg_override=None, pooled=False):
    """Gradient of ``E[L]`` over all enumerated (anchor, positive, negative) tuples, H = 1.

    Args:
      x_aug: [M, A, ...] enumerated augmentations.
      loss_fn: per-anchor loss ``(r_pos [T], r_neg [T, 1]) -> [T]`` from dualssl_tf.losses.
      towers: "anchor" or "all".
      neg_override: optional [M, M] distances; the loss then *sees* ``neg_override[i, j]`` as
        the value of r- (its gradient still flows through the real r-). This is how the
        exact-covariance loss takes its weights from un-augmented views.
      pooled: for losses that are *linear* in the distances with weights depending on the
        unordered pair {x0_i, x0_j} only (L_simp, L_cov with a symmetric ``neg_override``):
        evaluate the loss once per pair i <= j on augmentation-averaged distances,
        ``r+ = (E r+_i + E r+_j)/2``, ``r- = (E r-_ij + E r-_ji)/2``, counted twice when
        i < j. By linearity this is the same expectation. It also makes the loss compute
        each weight exactly once per pair: element-wise kernels (vectorised vs tail) can differ
        by an ulp between positions of a tensor, and a weight with xi_ij != xi_ji would leak
        the augmentation second moment into the all-towers gradient (1e-9 with float32).
    Returns:
      (grad [P] float64, coeffs, idx): ``coeffs`` = ``-dL/dr-`` per tuple [T] (or per pair
      i <= j when pooled) and ``idx`` the matching index arrays ``(i, a, a', j, a'')`` (or
      ``(i, j)`` from ``np.triu_indices(M)``).
    """
    _check_towers(towers)
    fn = _model_fn(model, output_fn)
    var = connections.resolve_variable(model, layer)
    tvar = connections._tf_var(var)
    x_aug = tf.convert_to_tensor(x_aug)
    m, a = int(x_aug.shape[0]), int(x_aug.shape[1])
    with tf.GradientTape() as tape:
        f = fn(tf.reshape(x_aug, [m * a] + x_aug.shape[2:].as_list()))
        f = tf.reshape(f, [m, a, -1])
        r_pos, r_neg, idx = _tuple_distances(f, towers, m, a)
        mult = None
        if pooled:
            shape = [m, a, a, m, a]
            pos_i = tf.reduce_mean(tf.reshape(r_pos, shape), axis=[1, 2, 3, 4])     # [M]
            neg_ij = tf.reduce_mean(tf.reshape(r_neg, shape), axis=[1, 2, 4])       # [M, M]
            idx = np.triu_indices(m)
            pair = np.stack(idx, 1)
            r_pos = 0.5 * (tf.gather(pos_i, idx[0]) + tf.gather(pos_i, idx[1]))
            r_neg = 0.5 * (tf.gather_nd(neg_ij, pair) + tf.gather_nd(neg_ij, pair[:, ::-1]))
            mult = tf.constant(np.where(idx[0] == idx[1], 1.0, 2.0), r_pos.dtype)
        else:
            pair = np.stack([idx[0], idx[3]], 1)
        if neg_override is not None:
            shown = tf.gather_nd(tf.constant(neg_override, r_neg.dtype), pair)
            # Value = shown exactly (x - x == 0), gradient = identity on the real r-.
            r_neg = shown + (r_neg - tf.stop_gradient(r_neg))
        per = loss_fn(r_pos, r_neg[:, None])
        if mult is not None:
            per = per * mult                                # x2 is exact
        # Sum, not mean: should a loss compute in float32, the cast's gradient is exactly 1.0
        # (1/T would be rounded). The 1/T is applied in float64 below.
        total = tf.cast(tf.reduce_sum(per), r_pos.dtype)
    grad, d_neg = tape.gradient(total, [tvar, r_neg])
    t = m * m if pooled else int(r_pos.shape[0])
    coeffs = -d_neg.numpy()
    if pooled:
        coeffs = coeffs / np.where(idx[0] == idx[1], 1.0, 2.0)
    return tf.reshape(grad, [-1]).numpy() / t, coeffs, idx


def theorem3_check(model, layer, x_aug, towers="anchor", output_fn=None):
    """Theorem 3: ``-grad E[L_simp] = c OP_l vec(W_l)``, c = 1 (anchor) or 2 (all towers).

    Args:
      model: bias-free ReLU network (float64 for a 1e-10 check).
      layer: layer name/Layer/variable.
      x_aug: [M, A, ...] enumerated augmentations.
      towers: "anchor" or "all".
    Returns:
      dict ``grad`` (-grad E[L_simp], [P]), ``predicted`` (c OP w, [P]), ``rel_error``,
      ``op`` (the CovarianceOperator).
    """
    neg_grad, _, _ = expected_loss_gradient(model, layer, x_aug, losses.simple_loss, towers,
                                            output_fn)
    op = CovarianceOperator.from_model(model, layer, np.asarray(x_aug), output_fn)
    scale = 1.0 if towers == "anchor" else 2.0
    predicted = scale * op.apply(op.weight_vector)
    return {"grad": -neg_grad, "predicted": predicted, "rel_error": _rel(-neg_grad, predicted),
            "op": op}


# ------------------------------------------------------------------------- Theorem 4
def base_distances(model, x0, output_fn=None):
    """r0[i, j] = 1/2 ||f(x0_i) - f(x0_j)||^2 on un-augmented points. x0: [M, ...] -> [M, M]."""
    f = tf.reshape(_model_fn(model, output_fn)(tf.convert_to_tensor(x0)), [len(x0), -1])
    return half_sq_dist(f[:, None], f[None]).numpy()


def loss_weights(loss_fn, r0):
    """xi[i, j] = -dL/dr- at (r+ = 0, r- = r0[i, j]): the loss's weight without augmentation.

    Evaluated through ``loss_fn`` itself, so the numbers are the ones the loss uses,
    once per unordered pair i <= j (the layout :func:`expected_loss_gradient` uses when
    pooled), so xi is exactly symmetric. r0: [M, M] symmetric -> xi [M, M] float64.
    """
    m = r0.shape[0]
    iu = np.triu_indices(m)
    d = common_property(loss_fn, np.zeros(len(iu[0])), r0[iu][:, None])
    xi = np.zeros((m, m))
    xi[iu] = -d["d_neg"][:, 0]
    xi[iu[::-1]] = -d["d_neg"][:, 0]
    return xi


def theorem4_check(model, layer, x_aug, x0, loss="cov", temperature=0.5, margin=0.0,
                   towers="anchor", output_fn=None):
    """Theorem 4 (H = 1): gradient of E[L] vs the xi-weighted covariance operator.

    ``xi[i, j]`` is the loss's weight of negative ``x0_j`` for anchor ``x0_i`` without
    augmentation (:func:`loss_weights` at ``r0 = base_distances(x0)``). The prediction is
    ``-grad E[L] = c OP_xi vec(W_l)`` (c = 1 anchor tower, 2 all towers).

    * ``loss="cov"``: :func:`losses.exact_cov_loss` with its stop-gradient weights taken from
      the un-augmented distances r0 (the official code's option), i.e. a linear function of
      the distances whose weights depend on (x0, x0') only: the identity is exact.
    * ``loss="nce"`` / ``"tri"``: InfoNCE / soft-triplet on the real augmented distances. The
      per-tuple weight ``dL/dr+`` now depends on the augmentations, and the difference
      ``residue = grad - prediction`` is the augmentation residue: zero without augmentation
      (x_aug[i, a] == x0[i]) and growing with the augmentation strength.

    Args:
      x_aug: [M, A, ...] enumerated augmentations; x0: [M, ...] un-augmented points.
    Returns:
      dict ``grad`` ([P] = -grad E[L]), ``predicted`` ([P]), ``rel_error`` (= relative
      residue), ``xi`` ([M, M]), ``xi_spread`` (max relative spread of the per-tuple weights
      around xi; 0 for cov), ``xi_formula_error`` (cov only: max rel. difference between xi
      and the ``sigmoid(-r0/tau)/tau`` of docs/theory.md sections 2-3).
    """
    fns = {"cov": lambda rp, rn: losses.exact_cov_loss(rp, rn, temperature),
           "nce": lambda rp, rn: losses.info_nce_loss(rp, rn, temperature),
           "tri": lambda rp, rn: losses.soft_triplet_loss(rp, rn, temperature, margin)}
    if loss not in fns:
        raise ValueError(f"loss: expected one of {sorted(fns)}, got {loss!r}")
    loss_fn = fns[loss]
    r0 = base_distances(model, x0, output_fn)
    xi = loss_weights(loss_fn, r0)
    neg_grad, coeffs, idx = expected_loss_gradient(
        model, layer, x_aug, loss_fn, towers, output_fn,
        neg_override=r0 if loss == "cov" else None, pooled=loss == "cov")
    op = CovarianceOperator.from_model(model, layer, np.asarray(x_aug), output_fn).weighted(xi)
    scale = 1.0 if towers == "anchor" else 2.0
    predicted = scale * op.apply(op.weight_vector)
    neg_index = idx[1] if loss == "cov" else idx[3]        # pairs when pooled, else tuples
    tuple_xi = xi[idx[0], neg_index]
    out = {"grad": -neg_grad, "predicted": predicted, "rel_error": _rel(-neg_grad, predicted),
           "xi": xi, "op": op,
           "xi_spread": float(np.max(np.abs(coeffs - tuple_xi) / np.maximum(tuple_xi, 1e-300)))}
    if loss == "cov":
        formula = 1.0 / (1.0 + np.exp(r0 / temperature)) / temperature
        out["xi_formula_error"] = float(np.max(np.abs(xi - formula) / formula))
    return out


def residue_vs_strength(model, layer, x0, strengths, num_aug=3, loss="nce", temperature=0.5,
                        margin=0.0, towers="anchor", seed=0, output_fn=None):
    """Theorem 4's augmentation residue as the augmentation strength grows.

    For each strength s, augments ``x0`` [M, d] with :func:`enumerated_augmentations`
    (same noise, scaled by s) and runs :func:`theorem4_check`.
    Returns: list of dicts ``{"strength", "rel_residue", "grad_norm"}``.
    """
    rows = []
    for s in strengths:
        x_aug = enumerated_augmentations(x0, num_aug, s, seed)
        res = theorem4_check(model, layer, x_aug, x0, loss, temperature, margin, towers,
                             output_fn)
        rows.append({"strength": float(s), "rel_residue": res["rel_error"],
                     "grad_norm": float(np.linalg.norm(res["grad"]))})
    return rows
