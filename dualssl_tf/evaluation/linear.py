"""Linear probe: softmax regression on frozen features, solved to its optimum.

Features are standardised with train-split statistics; a softmax classifier minimises

    J(W, b) = mean_i CE(x_i W + b, y_i) + weight_decay / 2 * ||W||_F^2     (b not penalised)

over the train split, with x_i [F], W [F, C], b [C]. The L2 strength is chosen from a small
grid by accuracy on a held-out part of the train split (never on test), the classifier is
refit on the whole train split, and top-1 / top-5 are measured on test.

J is solved by full-batch L-BFGS in float64 (:func:`solve_linear`): the two-loop recursion
with the last ``memory`` curvature pairs and a strong-Wolfe line search, stopping when the
largest gradient entry is below ``tol`` (or after ``max_iter`` iterations). For
weight_decay > 0 the objective is strictly convex in W and convex in b, so the result is the
optimum and does not depend on the optimiser, a seed or a schedule (measured on small
problems: J within 1e-14 of a float64 Newton solve, tests/evaluation/test_linear.py; the
Adam loop this replaced stopped 3e-8 to 2e-2 above it).

**weight_decay = 0** is accepted but left out of the default grid: when the train features
are linearly separable (common when F is large compared with N / C), J has no minimiser --
its infimum 0 is approached only as ||W|| -> inf. The solver then stops where the gradient
falls below ``tol`` (the direction of W tends to the max-margin one, the scale to
log(1/tol) / margin), so the result depends on ``tol`` / ``max_iter`` rather than on the
data alone. The default grid therefore starts at 1e-5, which is weak enough to stand in for
"no penalty" yet keeps a unique optimum. (The same holds for a class absent from the train
split: its bias tends to -inf, and the solver stops on the gradient tolerance; that class is
then never predicted.)

Example:
  >>> xtr, ytr = cached_features(enc, train_ds, "generated_images", "train")
  >>> xte, yte = cached_features(enc, test_ds, "generated_images", "test")
  >>> linear_probe(xtr, ytr, xte, yte, num_classes=10)["top1"]
"""

import collections
import warnings

import numpy as np
import tensorflow as tf

from dualssl_tf.evaluation.metrics import check_labels, topk_accuracy

# The L2 grid of linear_probe (and of tools/linear_eval.py); 0 is excluded (module docstring).
DEFAULT_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2)
MAX_ITER = 1000
TOL = 1e-8
# Rows per objective chunk: about this many float64 feature values (128 MiB) at a time.
_CHUNK_VALUES = 1 << 24

LinearFit = collections.namedtuple(
    "LinearFit", ["w", "b", "objective", "grad_max", "iterations", "converged"])
LinearFit.__doc__ = """Result of :func:`solve_linear`.

w [F, C], b [C]: float64 numpy arrays; objective: J(w, b); grad_max: the largest |entry| of
dJ/d(w, b) there; iterations: L-BFGS iterations taken; converged: grad_max <= tol."""


def standardize(train, *others, eps=1e-6):
    """Per-feature z-score with train statistics. train: [N, F], others: [M, F] each ->
    tuple of arrays of the same shapes (train first)."""
    mean = train.mean(axis=0, keepdims=True)
    std = train.std(axis=0, keepdims=True) + eps
    return tuple((a - mean) / std for a in (train,) + others)


# ----------------------------------------------------------------------------- objective

@tf.function(reduce_retracing=True)
def _chunk_terms(x, y, w, b):
    """One chunk's unnormalised CE terms in float64.

    x [n, F] (float32 or float64), y [n] int64, w [F, C] float64, b [C] float64 ->
    (sum_i CE_i, X^T (P - Y) [F, C], sum_i (P - Y)_i [C]) with P = softmax(x W + b).
    """
    x = tf.cast(x, tf.float64)
    logits = tf.matmul(x, w) + b                                          # [n, C]
    lse = tf.reduce_logsumexp(logits, axis=1)                             # [n]
    true = tf.gather(logits, y, axis=1, batch_dims=1)                     # [n]
    err = tf.exp(logits - lse[:, None]) - tf.one_hot(y, tf.shape(w)[1], dtype=tf.float64)
    return (tf.reduce_sum(lse - true), tf.matmul(x, err, transpose_a=True),
            tf.reduce_sum(err, axis=0))


class _Objective:
    """J and its gradient on a flat float64 parameter vector ``[W.ravel(), b]``.

    x: [N, F] features (kept in their float dtype; each chunk is cast to float64, which is
    exact); y: [N] int labels.
    """

    def __init__(self, x, y, num_classes, weight_decay):
        x = np.asarray(x)
        if x.dtype != np.float64:
            x = x.astype(np.float32)
        self.n, self.f = x.shape
        self.c = int(num_classes)
        self.weight_decay = float(weight_decay)
        rows = max(1, _CHUNK_VALUES // max(self.f, self.c))
        y = np.asarray(y).reshape(-1).astype(np.int64)
        self.chunks = [(tf.constant(x[i:i + rows]), tf.constant(y[i:i + rows]))
                       for i in range(0, self.n, rows)]

    def unflatten(self, theta):
        """[F * C + C] -> (W [F, C], b [C])."""
        return theta[:self.f * self.c].reshape(self.f, self.c), theta[self.f * self.c:]

    def __call__(self, theta):
        """theta [F * C + C] float64 -> (J float, dJ/dtheta [F * C + C] float64)."""
        w, b = self.unflatten(theta)
        w_t, b_t = tf.constant(w), tf.constant(b)
        ce, gw, gb = 0.0, np.zeros_like(w), np.zeros_like(b)
        for xc, yc in self.chunks:
            s, cw, cb = _chunk_terms(xc, yc, w_t, b_t)
            ce, gw, gb = ce + float(s), gw + cw.numpy(), gb + cb.numpy()
        value = ce / self.n + 0.5 * self.weight_decay * float(np.sum(w * w))
        grad = np.concatenate([(gw / self.n + self.weight_decay * w).ravel(), gb / self.n])
        return value, grad


def linear_objective(x, y, w, b, weight_decay):
    """J(w, b) of the module docstring on features x [N, F] and int labels y [N], in float64.

    w: [F, C], b: [C]. Returns a float.
    """
    w = np.asarray(w, np.float64)
    fun = _Objective(x, y, w.shape[1], weight_decay)
    return fun(np.concatenate([w.ravel(), np.asarray(b, np.float64).ravel()]))[0]


# ----------------------------------------------------------------------------- L-BFGS

def _two_loop(grad, pairs):
    """L-BFGS inverse-Hessian estimate times grad, from (s, y, 1 / y.s) curvature pairs
    (oldest first); the initial matrix is (s.y / y.y) I of the newest pair."""
    q = grad.copy()
    coefs = []
    for s, y, rho in reversed(pairs):
        a = rho * (s @ q)
        q -= a * y
        coefs.append(a)
    if pairs:
        s, y, rho = pairs[-1]
        q *= (s @ y) / (y @ y)
    for (s, y, rho), a in zip(pairs, reversed(coefs)):
        q += s * (a - rho * (y @ q))
    return q


def _interpolate(lo, hi):
    """Minimiser of the cubic through two (step, value, slope) points, kept inside the
    middle 80% of the bracket; the midpoint when the cubic gives nothing usable."""
    (a1, f1, d1), (a2, f2, d2) = lo[:3], hi[:3]
    left, right = min(a1, a2), max(a1, a2)
    margin = 0.1 * (right - left)
    if np.isfinite(f2) and np.isfinite(d2) and a1 != a2:
        e1 = d1 + d2 - 3.0 * (f1 - f2) / (a1 - a2)
        disc = e1 * e1 - d1 * d2
        if disc >= 0:
            e2 = np.copysign(np.sqrt(disc), a2 - a1)
            denom = d2 - d1 + 2.0 * e2
            if denom != 0:
                a = a2 - (a2 - a1) * (d2 + e2 - e1) / denom
                if np.isfinite(a):
                    return float(np.clip(a, left + margin, right - margin))
    return 0.5 * (a1 + a2)


def _wolfe_step(fun, theta, f0, g0, p, alpha, c1=1e-4, c2=0.9, max_evals=40):
    """Strong-Wolfe line search along p (Nocedal & Wright, Algorithms 3.5 / 3.6).

    Returns (step, J, gradient) at an accepted step, or None when no step decreases J
    (the iterate is then optimal to working precision, or p is useless).
    """
    d0 = float(g0 @ p)

    def phi(a):
        f, g = fun(theta + a * p)
        return a, f, float(g @ p), g

    def sufficient(point):
        return np.isfinite(point[1]) and point[1] <= f0 + c1 * point[0] * d0

    def zoom(lo, hi, evals):
        for _ in range(evals):
            point = phi(_interpolate(lo, hi))
            if not sufficient(point) or point[1] >= lo[1]:
                hi = point
            else:
                if abs(point[2]) <= -c2 * d0:
                    return point
                if point[2] * (hi[0] - lo[0]) >= 0:
                    hi = lo
                lo = point
            if abs(hi[0] - lo[0]) <= 1e-14 * max(1.0, abs(lo[0])):
                break
        return lo if lo[0] > 0 and lo[1] < f0 else None

    prev = (0.0, f0, d0, g0)
    for i in range(max_evals):
        point = phi(alpha)
        if not sufficient(point) or (i > 0 and point[1] >= prev[1]):
            return _result(zoom(prev, point, max_evals - i - 1))
        if abs(point[2]) <= -c2 * d0:
            return _result(point)
        if point[2] >= 0:
            return _result(zoom(point, prev, max_evals - i - 1))
        prev, alpha = point, 2.0 * alpha
    return _result(prev if prev[0] > 0 else None)


def _result(point):
    return None if point is None else (point[0], point[1], point[3])


def _lbfgs(fun, theta, max_iter, tol, memory):
    """Minimises fun (theta -> (value, gradient)); returns (theta, value, gradient, iters)."""
    f, g = fun(theta)
    pairs, it = [], 0
    while np.max(np.abs(g)) > tol and it < max_iter:
        p = -_two_loop(g, pairs)
        if not g @ p < 0:                  # not a descent direction: forget the curvature
            pairs, p = [], -g
        alpha = 1.0 if pairs else min(1.0, 1.0 / np.max(np.abs(g)))
        step = _wolfe_step(fun, theta, f, g, p, alpha)
        if step is None:
            if not pairs:
                break                      # even steepest descent cannot decrease J
            pairs = []                     # retry from a steepest-descent step
            continue
        alpha, f_new, g_new = step
        s, y = alpha * p, g_new - g
        sy = float(s @ y)
        if sy > 1e-12 * float(y @ y):      # keep only pairs of positive curvature
            pairs = (pairs + [(s, y, 1.0 / sy)])[-memory:]
        theta, f, g = theta + s, f_new, g_new
        it += 1
    return theta, f, g, it


def solve_linear(x, y, num_classes, weight_decay=1e-4, max_iter=MAX_ITER, tol=TOL,
                 memory=20):
    """Minimises J (module docstring) by full-batch L-BFGS in float64, from W = 0, b = 0.

    Args:
      x: [N, F] features (standardised for the probe); y: [N] int labels in
        [0, num_classes).
      weight_decay: L2 strength on W (>= 0; see the module docstring about 0).
      max_iter: iteration cap; tol: stop when max |dJ/d(W, b)| <= tol.
      memory: curvature pairs kept.
    Returns:
      :data:`LinearFit` (w [F, C], b [C] float64, objective, grad_max, iterations,
      converged).
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay: must be >= 0, got {weight_decay}")
    fun = _Objective(x, y, num_classes, weight_decay)
    theta0 = np.zeros(fun.f * fun.c + fun.c)
    theta, value, grad, it = _lbfgs(fun, theta0, int(max_iter), float(tol), int(memory))
    w, b = fun.unflatten(theta)
    grad_max = float(np.max(np.abs(grad)))
    return LinearFit(w.copy(), b.copy(), float(value), grad_max, it, grad_max <= tol)


def train_linear(x, y, num_classes, weight_decay=1e-4, max_iter=MAX_ITER, tol=TOL):
    """Softmax regression with the L2 penalty ``weight_decay / 2 * ||W||^2``, solved to its
    optimum (:func:`solve_linear`); warns (RuntimeWarning) when it stops unconverged.

    Args:
      x: [N, F] features (standardised); y: [N] int labels in [0, num_classes).
    Returns:
      (W [F, C], b [C]) float64 numpy arrays.
    """
    fit = solve_linear(x, y, num_classes, weight_decay, max_iter, tol)
    if not fit.converged:
        warnings.warn(f"linear probe (weight_decay={weight_decay}): stopped after "
                      f"{fit.iterations} L-BFGS iterations with max |gradient| "
                      f"{fit.grad_max:.2g} > tol {tol:g}"
                      + (" (weight_decay=0 on separable features has no optimum)"
                         if weight_decay == 0 else ""), RuntimeWarning, stacklevel=2)
    return fit.w, fit.b


def linear_probe(train_x, train_y, test_x, test_y, num_classes,
                 weight_decays=DEFAULT_WEIGHT_DECAYS, val_fraction=0.2, seed=0,
                 max_iter=MAX_ITER, tol=TOL):
    """Linear evaluation: standardise, pick the L2 strength on held-out train, test once.

    Args:
      train_x [N, F], train_y [N], test_x [M, F], test_y [M]: features and int labels.
      num_classes: C.
      weight_decays: grid of L2 strengths; chosen by accuracy on a random ``val_fraction``
        of the train split (never the test split; ties go to the larger strength), then
        refit on the whole train split. 0 is allowed but has no optimum on separable
        features (module docstring), hence not in the default grid.
      seed: of the held-out split.
      max_iter, tol: of the L-BFGS solver (:func:`solve_linear`).
    Returns:
      dict ``top1``, ``top5`` (None if C <= 5), ``weight_decay`` (chosen),
      ``val_top1`` {str(weight_decay): accuracy}, ``train_top1``, ``num_train``,
      ``num_test``.
    """
    if len(train_x) < 2 or len(test_x) < 1:
        raise ValueError(f"linear_probe: need >= 2 train and >= 1 test examples, got "
                         f"{len(train_x)} and {len(test_x)}")
    check_labels(train_y, test_y, num_classes)
    train_x, test_x = standardize(train_x, test_x)
    weight_decays = tuple(float(w) for w in weight_decays)
    if not weight_decays or min(weight_decays) < 0:
        raise ValueError(f"weight_decays: expected one or more values >= 0, got "
                         f"{weight_decays}")
    val_scores = {}
    if len(weight_decays) > 1:
        perm = np.random.default_rng(seed).permutation(len(train_x))
        n_val = min(max(1, int(round(val_fraction * len(train_x)))), len(train_x) - 1)
        val, fit = perm[:n_val], perm[n_val:]
        for wd in weight_decays:
            w, b = train_linear(train_x[fit], train_y[fit], num_classes, wd, max_iter, tol)
            val_scores[wd] = topk_accuracy(train_x[val] @ w + b, train_y[val], 1)
        # Ties go to the strongest regulariser (the simpler model).
        best = max(weight_decays, key=lambda wd: (val_scores[wd], wd))
    else:
        best = weight_decays[0]
    w, b = train_linear(train_x, train_y, num_classes, best, max_iter, tol)
    scores = test_x @ w + b
    return {"top1": topk_accuracy(scores, test_y, 1), "top5": topk_accuracy(scores, test_y, 5),
            "weight_decay": best, "val_top1": {str(k): v for k, v in val_scores.items()},
            "train_top1": topk_accuracy(train_x @ w + b, train_y, 1),
            "num_train": int(len(train_x)), "num_test": int(len(test_x))}
