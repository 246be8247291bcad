"""LARS against its formula, computed by hand in NumPy over two steps."""

import numpy as np
import pytest

import keras

from dualssl_tf.optim.lars import LARS


def _layers():
    dense = keras.layers.Dense(2, name="dense")
    dense.build((None, 3))
    dense.kernel.assign(np.array([[0.5, -1.0], [2.0, 0.0], [0.0, 1.5]], np.float32))
    dense.bias.assign(np.array([0.1, -0.2], np.float32))
    bn = keras.layers.BatchNormalization(name="bn")
    bn.build((None, 2))
    return dense, bn


GRADS = [
    [np.array([[0.1, 0.2], [-0.3, 0.0], [0.05, 0.4]], np.float32),
     np.array([1.0, -2.0], np.float32), np.array([0.3, 0.1], np.float32)],
    [np.array([[-0.2, 0.1], [0.0, 0.6], [0.3, -0.1]], np.float32),
     np.array([0.5, 0.5], np.float32), np.array([-0.2, 0.4], np.float32)],
]


def _reference(weights, grads_seq, lr, momentum, wd, eta, adapt):
    """Hand-written LARS: per variable (weights[i], adapt[i] = decay and adaptation)."""
    w = [x.astype(np.float64).copy() for x in weights]
    v = [np.zeros_like(x) for x in w]
    for grads in grads_seq:
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            if adapt[i]:
                g = g + wd * w[i]
                ratio = eta * np.linalg.norm(w[i]) / np.linalg.norm(g)
            else:
                ratio = 1.0
            v[i] = momentum * v[i] + lr * ratio * g
            w[i] = w[i] - v[i]
    return w


def test_two_steps_match_formula():
    dense, bn = _layers()
    variables = [dense.kernel, dense.bias, bn.gamma]
    start = [np.array(x) for x in variables]
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.1, eta=0.01)
    for grads in GRADS:
        opt.apply_gradients(zip(grads, variables))
    ref = _reference(start, GRADS, lr=0.5, momentum=0.9, wd=0.1, eta=0.01,
                     adapt=[True, False, False])
    for var, expected in zip(variables, ref):
        np.testing.assert_allclose(np.array(var), expected, rtol=1e-5, atol=1e-7)
    # First kernel step by hand: g' = g + 0.1 w; ratio = 0.01 ||w|| / ||g'||.
    w0, g0 = start[0], GRADS[0][0]
    gp = g0 + 0.1 * w0
    step1 = w0 - 0.5 * 0.01 * np.linalg.norm(w0) / np.linalg.norm(gp) * gp
    assert np.abs(step1 - w0).max() > 1e-3  # the update is not negligible


def test_exclusion_by_path_and_zero_norm():
    dense, bn = _layers()
    dense.kernel.assign(np.zeros((3, 2), np.float32))  # ||w|| = 0 -> ratio 1
    variables = [dense.kernel, dense.bias, bn.gamma]
    opt = LARS(learning_rate=0.1, momentum=0.0, weight_decay=0.5, eta=0.001,
               exclude_from_decay=("bias",), exclude_from_adaptation=("bias", "bn/"))
    opt.apply_gradients(zip(GRADS[0], variables))
    assert opt._decay == [True, False, True]
    assert opt._adapt == [True, False, False]
    # Kernel: w = 0 so decay adds nothing and the ratio is 1: plain SGD step.
    np.testing.assert_allclose(np.array(dense.kernel), -0.1 * GRADS[0][0], rtol=1e-6)
    # Bias: no decay, no adaptation.
    np.testing.assert_allclose(np.array(dense.bias), [0.1, -0.2] - 0.1 * GRADS[0][1],
                               atol=1e-7)
    # BN gamma (starts at 1): decayed but not adapted.
    np.testing.assert_allclose(np.array(bn.gamma), 1 - 0.1 * (GRADS[0][2] + 0.5 * 1.0),
                               rtol=1e-6)


def test_config_round_trip_and_bad_args():
    opt = LARS(learning_rate=0.2, momentum=0.8, weight_decay=1e-4, eta=0.002)
    clone = LARS.from_config(opt.get_config())
    assert (clone.momentum, clone.lars_weight_decay, clone.eta) == (0.8, 1e-4, 0.002)
    assert clone.exclude_from_adaptation == ("bias", "gamma", "beta")
    assert clone.weight_decay is None  # no decoupled decay from the base class
    with pytest.raises(ValueError, match="momentum"):
        LARS(momentum=1.5)
    with pytest.raises(ValueError, match="eta"):
        LARS(eta=0.0)


def test_trains_a_model_with_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    # LARS steps have norm ~ lr * eta * ||w||: a fixed relative step of 5% here, so
    # a fixed start (not a random one, which may be tiny) makes the test deterministic.
    start = keras.initializers.Constant(np.full((3, 1), 0.5, np.float32))
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(1, use_bias=False, kernel_initializer=start)])
    model.compile(optimizer=LARS(learning_rate=5.0, momentum=0.5, eta=0.01), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=20, batch_size=16, verbose=0, shuffle=False)
    assert model.evaluate(x, y, verbose=0) < 0.05 * before
