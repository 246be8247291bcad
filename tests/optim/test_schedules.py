"""Warmup-cosine schedule, batch-size scaling and the optimizer factory vs hand numbers."""

import math

import numpy as np
import pytest

import keras

from dualssl_tf.optim import schedules
from dualssl_tf.optim.lars import LARS


def test_warmup_cosine_values():
    s = schedules.WarmupCosineDecay(0.4, total_steps=110, warmup_steps=10)
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(0.2)
    assert float(s(10)) == pytest.approx(0.4)
    assert float(s(60)) == pytest.approx(0.2)            # half way: cos(pi/2) = 0
    assert float(s(35)) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert float(s(110)) == pytest.approx(0.0, abs=1e-7)
    assert float(s(500)) == pytest.approx(0.0, abs=1e-7)  # clipped after the end
    a = schedules.WarmupCosineDecay(1.0, total_steps=10, alpha=0.1)
    assert float(a(0)) == pytest.approx(1.0) and float(a(10)) == pytest.approx(0.1)


def test_warmup_cosine_matches_keras_cosine_decay():
    ours = schedules.WarmupCosineDecay(0.3, total_steps=100, warmup_steps=20)
    ref = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=80, warmup_target=0.3,
                                                 warmup_steps=20)
    steps = np.arange(0, 101, 7)
    np.testing.assert_allclose([float(ours(t)) for t in steps],
                               [float(ref(t)) for t in steps], rtol=1e-5, atol=1e-7)


def test_schedule_config_round_trip_and_errors():
    s = schedules.WarmupCosineDecay(0.1, 50, 5, alpha=0.2)
    t = schedules.WarmupCosineDecay.from_config(s.get_config())
    assert [float(t(k)) for k in (3, 20, 50)] == [float(s(k)) for k in (3, 20, 50)]
    with pytest.raises(ValueError):
        schedules.WarmupCosineDecay(0.1, 10, 20)


def test_scale_learning_rate():
    assert schedules.scale_learning_rate(0.3, 512, "linear") == pytest.approx(0.6)
    assert schedules.scale_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert schedules.scale_learning_rate(0.1, 64, "none") == 0.1
    with pytest.raises(ValueError, match="lr_scaling"):
        schedules.scale_learning_rate(0.1, 64, "cubic")


def _dense():
    layer = keras.layers.Dense(1, name="d")
    layer.build((None, 2))
    layer.kernel.assign(np.array([[1.0], [2.0]], np.float32))
    layer.bias.assign(np.array([0.5], np.float32))
    return layer


def test_build_optimizer_sgd_one_step_by_hand():
    layer = _dense()
    opt = schedules.build_optimizer("sgd", 0.1, momentum=0.9, weight_decay=0.01)
    g_k, g_b = np.array([[0.2], [-0.4]], np.float32), np.array([1.0], np.float32)
    opt.apply_gradients([(g_k, layer.kernel), (g_b, layer.bias)])
    # Keras: momentum step w += -lr g, then decoupled decay w -= lr wd w_old (kernel only).
    w = np.array([[1.0], [2.0]])
    np.testing.assert_allclose(np.array(layer.kernel), w - 0.1 * g_k - 0.1 * 0.01 * w,
                               rtol=1e-6)
    np.testing.assert_allclose(np.array(layer.bias), 0.5 - 0.1 * 1.0, rtol=1e-6)


def test_build_optimizer_adam_first_step_is_lr_sign():
    layer = _dense()
    opt = schedules.build_optimizer("adam", 0.01)
    opt.apply_gradients([(np.array([[0.2], [-0.4]], np.float32), layer.kernel)])
    # Adam's first step is lr * g / (|g| + eps) ~ lr * sign(g).
    np.testing.assert_allclose(np.array(layer.kernel), [[0.99], [2.01]], rtol=1e-5)


def test_build_optimizer_names():
    assert isinstance(schedules.build_optimizer("lars", 0.1, weight_decay=1e-6), LARS)
    assert isinstance(schedules.build_optimizer("adamw", 0.1, weight_decay=0.05),
                      keras.optimizers.AdamW)
    with pytest.raises(ValueError, match="optimizer='rmsprop'"):
        schedules.build_optimizer("rmsprop", 0.1)


def test_learning_rate_schedule_combinations():
    assert schedules.learning_rate_schedule(0.1) == 0.1
    flat = schedules.learning_rate_schedule(0.3, 512, "linear", "constant", 100, 10)
    assert [float(flat(t)) for t in (0, 5, 10, 99, 200)] == pytest.approx(
        [0.0, 0.3, 0.6, 0.6, 0.6])
    cos = schedules.learning_rate_schedule(0.075, 4096, "sqrt", "cosine", 100, 0)
    assert float(cos(0)) == pytest.approx(4.8) and float(cos(50)) == pytest.approx(2.4)
    with pytest.raises(ValueError, match="lr_schedule"):
        schedules.learning_rate_schedule(0.1, schedule="step")


def test_cosine_ends_at_min_learning_rate_as_dinos_cosine_scheduler():
    """DINO's utils.cosine_scheduler(base, final, ...) after the warmup:
    final + (base - final) (1 + cos(pi t / T')) / 2, T' the steps after warmup; the rate
    stays at final after T. min_learning_rate is absolute, not batch-scaled."""
    base, final, total, warm = 5e-5 * 512 / 256, 1e-6, 100, 20
    sched = schedules.learning_rate_schedule(5e-5, 512, "linear", "cosine", total, warm,
                                             min_learning_rate=final)
    for t in (20, 35, 60, 99, 100, 150):
        p = min((t - warm) / (total - warm), 1.0)
        want = final + (base - final) * (1 + math.cos(math.pi * p)) / 2
        # float32 schedule: terms of size base, rounded to ~1e-7 of base each
        assert float(sched(t)) == pytest.approx(want, rel=1e-6, abs=base * 1e-6)
    assert float(sched(10)) == pytest.approx(base * 10 / warm, rel=1e-6)
    with pytest.raises(ValueError, match="min_learning_rate"):
        schedules.learning_rate_schedule(1e-3, schedule="cosine", min_learning_rate=1e-2)
