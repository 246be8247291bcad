"""--dino_clip_grad: per-variable gradient clipping as DINO's utils.clip_gradients does it,
``g * min(1, c / (||g|| + 1e-6))`` for each variable on its own, against a hand computation
in float64; before a coupled decay is added; unscaled under loss scaling; the trainer takes
the norm from the method (SSLMethod.gradient_clip)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config
from dualssl_tf.optim import schedules
from dualssl_tf.optim.clipping import clip_by_norm
from dualssl_tf.run import trainer

EXACT = 1e-12   # float64, the same operations up to association


def _variables():
    a = tf.Variable(np.array([1.0, -2.0, 0.5]), name="kernel_a")
    b = tf.Variable(np.array([[0.3, 0.1], [-0.4, 2.0]]), name="kernel_b")
    return [a, b]


# Norms 5 (clipped to 3) and 1 (kept: 3 / (1 + 1e-6) > 1).
GRADS = [np.array([3.0, 4.0, 0.0]), np.array([[0.6, 0.0], [0.0, -0.8]])]


def test_each_variable_clipped_on_its_own_by_hand():
    variables = _variables()
    start = [v.numpy().copy() for v in variables]
    opt = schedules.build_optimizer("sgd", 0.5, momentum=0.0, clip_norm=3.0)
    opt.apply_gradients(zip([tf.constant(g) for g in GRADS], variables))
    want_a = start[0] - 0.5 * GRADS[0] * 3.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(variables[0].numpy(), want_a, rtol=0, atol=EXACT)
    np.testing.assert_allclose(variables[1].numpy(), start[1] - 0.5 * GRADS[1], rtol=0,
                               atol=EXACT)
    # Not one global norm (sqrt(26)): variable b's gradient would have been scaled too.
    assert np.linalg.norm(np.concatenate([g.ravel() for g in GRADS])) > 3.0
    np.testing.assert_allclose(clip_by_norm(tf.zeros([2], tf.float64), 3.0), [0.0, 0.0])


def test_clipped_before_the_coupled_decay_and_unscaled_under_loss_scaling():
    # PyTorch order: clip p.grad, then SGD(weight_decay) adds wd * w.
    variables = _variables()
    start = [v.numpy().copy() for v in variables]
    inner = schedules.build_optimizer("sgd", 0.5, momentum=0.0, weight_decay=0.1,
                                      weight_decay_mode="coupled", clip_norm=3.0)
    opt = keras.optimizers.LossScaleOptimizer(inner, initial_scale=1024.0)
    opt.apply_gradients(zip([tf.constant(g * 1024.0) for g in GRADS], variables))
    want_a = start[0] - 0.5 * (GRADS[0] * 3.0 / (5.0 + 1e-6) + 0.1 * start[0])
    np.testing.assert_allclose(variables[0].numpy(), want_a, rtol=0, atol=EXACT)


def test_trainer_takes_the_norm_from_the_method():
    cfg = config.TrainConfig(dataset="generated_images", method="dino", optimizer="adamw",
                             weight_decay=0.04, dino_clip_grad=3.0)
    opt = trainer.build_optimizer(cfg, 5, None, cfg.dino.clip_grad)
    assert opt.clip_norm == 3.0 and opt.weight_decay == 0.04
    assert type(trainer.build_optimizer(cfg, 5)) is keras.optimizers.AdamW    # 0: none
    with pytest.raises(config.ConfigError, match="--dino_clip_grad: must be >= 0"):
        config.validate(cfg.replace(dino_clip_grad=-1.0))


def test_with_a_rate_group_the_group_steps_at_its_rate_after_clipping():
    from dualssl_tf.optim.rate_groups import RateGroup

    variables = _variables()
    start = [v.numpy().copy() for v in variables]
    opt = schedules.build_optimizer("sgd", 0.5, momentum=0.0, clip_norm=3.0,
                                    group=RateGroup((variables[1],), multiplier=2.0))
    opt.apply_gradients(zip([tf.constant(g) for g in GRADS], variables))
    np.testing.assert_allclose(variables[0].numpy(),
                               start[0] - 0.5 * GRADS[0] * 3.0 / (5.0 + 1e-6), atol=EXACT)
    np.testing.assert_allclose(variables[1].numpy(), start[1] - 1.0 * GRADS[1], atol=EXACT)
