"""The linear probe: standardisation, grid choice without test labels, and the L-BFGS
solver against a NumPy float64 Newton solve of the same objective."""

import warnings

import numpy as np
import pytest

from dualssl_tf.evaluation import linear
from tests.evaluation.common import blobs


def test_standardize_uses_train_statistics():
    train = np.array([[1.0, 10.0], [3.0, 30.0]])
    test = np.array([[2.0, 50.0]])
    s_train, s_test = linear.standardize(train, test, eps=0.0)
    np.testing.assert_allclose(s_train, [[-1, -1], [1, 1]])
    np.testing.assert_allclose(s_test, [[0.0, 3.0]])


def test_linear_probe_recovers_separable_problem_and_never_looks_at_test():
    train_x, train_y = blobs(300, 1)
    test_x, test_y = blobs(200, 2)
    result = linear.linear_probe(train_x, train_y, test_x, test_y, 3)
    assert result["top1"] >= 0.97
    assert result["train_top1"] >= 0.97
    # The default grid leaves out 0 (no optimum on separable features).
    assert set(result["val_top1"]) == {"1e-05", "0.0001", "0.001", "0.01"}
    assert result["num_train"] == 300 and result["num_test"] == 200
    assert result["top5"] is None
    # The choice must not depend on test labels: scramble them, same choice and val scores.
    scrambled = linear.linear_probe(train_x, train_y, test_x, np.roll(test_y, 1), 3)
    assert scrambled["weight_decay"] == result["weight_decay"]
    assert scrambled["val_top1"] == result["val_top1"]
    assert scrambled["top1"] < 0.6


def test_linear_probe_weight_decay_shrinks_weights():
    x, y = blobs(200, 3)
    w0, _ = linear.train_linear(x, y, 3, weight_decay=0.0)
    w1, _ = linear.train_linear(x, y, 3, weight_decay=1.0)
    assert np.linalg.norm(w1) < 0.5 * np.linalg.norm(w0)


def test_train_linear_reaches_the_penalised_optimum():
    """Stationarity of mean CE + wd/2 ||W||^2: the NumPy gradient vanishes at the result."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    wd = 0.1
    w, b = linear.train_linear(x, y, 3, weight_decay=wd)
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    err = (p - np.eye(3)[y]) / len(x)
    grad_w, grad_b = x.T @ err + wd * w, err.sum(0)
    assert np.abs(grad_w).max() < 1e-4 and np.abs(grad_b).max() < 1e-4
    assert np.abs(w).max() > 0.05                       # not the trivial zero solution


def test_probe_rejects_out_of_range_labels():
    x, y = blobs(20, 0)
    with pytest.raises(ValueError, match="num_classes"):
        linear.linear_probe(x, y, x, y, num_classes=2)


# ----------------------------------------------------------------------------- vs Newton

def _objective(x, y, w, b, wd):
    """mean_i CE(x_i W + b, y_i) + wd / 2 ||W||^2 in float64 NumPy."""
    logits = x @ w + b
    top = logits.max(1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(1))
    return np.mean(lse - logits[np.arange(len(y)), y]) + 0.5 * wd * np.sum(w * w)


def _newton(x, y, c, wd, iters=100):
    """Damped Newton on theta = [W; b] ([F + 1, C]) with the exact Hessian.

    The Hessian is singular along b -> b + const (the softmax ignores it, b is not
    penalised), so each step is the least-squares (minimum-norm) solution; the gradient
    has no component along that direction, so the steps never move along it either.
    """
    n, f = x.shape
    xt = np.hstack([x, np.ones((n, 1))])                               # [N, F + 1]
    onehot = np.eye(c)[y]
    pen = np.concatenate([np.full(f * c, wd), np.zeros(c)])           # W penalised, b not
    theta = np.zeros((f + 1) * c)

    def value(theta):
        wb = theta.reshape(f + 1, c)
        return _objective(x, y, wb[:f], wb[f], wd)

    for _ in range(iters):
        logits = xt @ theta.reshape(f + 1, c)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (xt.T @ (p - onehot) / n).ravel() + pen * theta
        if np.abs(grad).max() < 1e-13:
            break
        cov = p[:, :, None] * np.eye(c) - p[:, :, None] * p[:, None, :]  # [N, C, C]
        hess = np.einsum("ni,nj,nab->iajb", xt, xt, cov).reshape(theta.size, theta.size)
        step = np.linalg.lstsq(hess / n + np.diag(pen), -grad, rcond=None)[0]
        t, start = 1.0, value(theta)
        while value(theta + t * step) > start + 1e-4 * t * (grad @ step) and t > 1e-8:
            t *= 0.5
        theta = theta + t * step
    assert np.abs(grad).max() < 1e-11, "the Newton reference did not converge"
    wb = theta.reshape(f + 1, c)
    return wb[:f], wb[f]


@pytest.mark.parametrize("wd,imbalanced", [(1e-2, False), (1e-3, True), (1e-4, True)])
def test_solver_reaches_the_newton_optimum(wd, imbalanced):
    rng = np.random.default_rng(int(wd * 1e4))
    n, f, c = 300, 8, 4
    if imbalanced:
        # Unequal class priors and off-centre informative features: a large bias optimum.
        y = rng.choice(c, n, p=[0.55, 0.25, 0.15, 0.05])
        x = rng.normal(size=(c, f))[y] + rng.normal(size=(n, f)) + 0.7
    else:
        y = rng.integers(0, c, n)
        x = rng.normal(size=(n, f))
    x = x.astype(np.float32)
    x64 = x.astype(np.float64)
    w_ref, b_ref = _newton(x64, y, c, wd)
    if imbalanced:
        assert np.ptp(b_ref) > 0.5                      # the bias optimum is far from 0

    fit = linear.solve_linear(x, y, c, weight_decay=wd)
    assert fit.converged and fit.grad_max <= linear.TOL
    gap = _objective(x64, y, fit.w, fit.b, wd) - _objective(x64, y, w_ref, b_ref, wd)
    # Measured |gap| <= 4e-15 for these cases (the old Adam loop of probe.py: 3e-8 .. 2e-2).
    assert abs(gap) < 1e-10, gap
    assert fit.objective == pytest.approx(_objective(x64, y, fit.w, fit.b, wd), abs=1e-12)
    assert linear.linear_objective(x, y, fit.w, fit.b, wd) == pytest.approx(fit.objective,
                                                                             abs=1e-12)
    # W is unique; b up to a constant shift (the softmax ignores it).
    np.testing.assert_allclose(fit.w, w_ref, atol=2e-5)
    np.testing.assert_allclose(fit.b - fit.b.mean(), b_ref - b_ref.mean(), atol=2e-5)


def test_unpenalised_separable_fit_stops_on_the_gradient_tolerance():
    """weight_decay=0 on separable blobs: no minimiser, but a finite stop at tol."""
    x, y = blobs(120, 7)
    x, = linear.standardize(x)
    fit = linear.solve_linear(x, y, 3, weight_decay=0.0)
    assert fit.converged and fit.objective < 1e-6
    assert np.all(np.isfinite(fit.w)) and np.all((x @ fit.w + fit.b).argmax(1) == y)
    looser = linear.solve_linear(x, y, 3, weight_decay=0.0, tol=1e-4)
    assert np.linalg.norm(looser.w) < np.linalg.norm(fit.w)   # the scale follows tol


def test_unconverged_fit_warns():
    x, y = blobs(60, 8)
    fit = linear.solve_linear(x, y, 3, weight_decay=1e-3, max_iter=2)
    assert fit.iterations == 2 and not fit.converged
    with pytest.warns(RuntimeWarning, match="stopped after 2 L-BFGS iterations"):
        linear.train_linear(x, y, 3, weight_decay=1e-3, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        linear.train_linear(x, y, 3, weight_decay=1e-3)          # converges: no warning
    with pytest.raises(ValueError, match="weight_decay"):
        linear.solve_linear(x, y, 3, weight_decay=-1.0)
