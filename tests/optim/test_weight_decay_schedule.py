"""--weight_decay_end: DINO's per-step cosine weight-decay schedule (facebookresearch/dino
utils.cosine_scheduler, transcribed in NumPy below) in the optimizer layer, applied in the
decoupled (AdamW) and coupled (SGD) forms against hand computations in float64, equal to
Keras' constant decay when start == end, the schedule's position kept across a checkpoint
resume, and the exclusions matching DINO's get_params_groups on a ViT + DINO head."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config
from dualssl_tf.optim import schedules
from dualssl_tf.optim.weight_decay import CosineWeightDecay
from dualssl_tf.run import trainer

# float64 weights, but the coefficient is computed in float32 (as Keras' learning-rate
# schedules are): its cosine carries ~1e-8 absolute, times lr |w| ~ 0.1 per step.
WD_TOL = 1e-8


def dino_cosine_scheduler(base, final, epochs, niter_per_ep):
    """DINO's utils.cosine_scheduler without warm-up, transcribed."""
    iters = np.arange(epochs * niter_per_ep)
    return final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))


def test_values_equal_dinos_cosine_scheduler():
    want = dino_cosine_scheduler(0.04, 0.4, epochs=3, niter_per_ep=4)
    wd = CosineWeightDecay(0.04, 0.4, total_steps=12)
    got = np.array([float(wd(t)) for t in range(12)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)     # float32 of values < 1
    assert float(wd(0)) == pytest.approx(0.04) and float(wd(6)) == pytest.approx(0.22)
    assert float(wd(50)) == pytest.approx(0.4)                  # held after the run
    with pytest.raises(ValueError, match="end"):
        CosineWeightDecay(0.04, -1.0, 10)


def _kernel_and_bias(dtype="float64"):
    dense = keras.layers.Dense(2, dtype=dtype, name="dense")
    dense.build((None, 2))
    dense.kernel.assign([[0.5, -1.0], [2.0, 0.25]])
    dense.bias.assign([0.1, -0.2])
    return [dense.kernel, dense.bias]


def _steps(opt, variables, grads):
    for g in grads:
        opt.apply_gradients([(tf.constant(x, v.dtype), v) for x, v in zip(g, variables)])


def test_adamw_decoupled_schedule_by_hand():
    # Zero gradients: Adam's own step is 0, so each step only decays,
    # w <- w (1 - lr wd(t)) with t the step's 0-based index; the bias is exempt.
    lr, total = 0.1, 4
    variables = _kernel_and_bias()
    start = [v.numpy().copy() for v in variables]
    opt = schedules.build_optimizer("adamw", lr, weight_decay=0.04,
                                    weight_decay_schedule=CosineWeightDecay(0.04, 0.4, total))
    _steps(opt, variables, [[np.zeros((2, 2)), np.zeros(2)]] * 3)
    wd = dino_cosine_scheduler(0.04, 0.4, 1, total)
    np.testing.assert_allclose(variables[0].numpy(),
                               start[0] * np.prod([1 - lr * wd[t] for t in range(3)]),
                               rtol=0, atol=WD_TOL)
    np.testing.assert_array_equal(variables[1].numpy(), start[1])
    assert opt.weight_decay is None            # Keras' own decay is off: no double decay


def test_equal_start_and_end_is_keras_constant_decay():
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=(2, 2)), rng.normal(size=2)] for _ in range(3)]
    results = []
    for schedule in (None, CosineWeightDecay(0.3, 0.3, 3)):
        variables = _kernel_and_bias()
        opt = schedules.build_optimizer("adamw", 0.05, weight_decay=0.3,
                                        weight_decay_schedule=schedule)
        _steps(opt, variables, grads)
        results.append([v.numpy() for v in variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=0, atol=WD_TOL)


def test_coupled_sgd_schedule_by_hand():
    # PyTorch's SGD (no momentum) with its group's weight_decay set per step:
    # w <- w - lr (g + wd(t) w).
    lr = 0.1
    rng = np.random.default_rng(1)
    grads = [[rng.normal(size=(2, 2)), rng.normal(size=2)] for _ in range(3)]
    variables = _kernel_and_bias()
    want = [v.numpy().copy() for v in variables]
    opt = schedules.build_optimizer("sgd", lr, momentum=0.0, weight_decay=0.5,
                                    weight_decay_mode="coupled",
                                    weight_decay_schedule=CosineWeightDecay(0.5, 0.1, 3))
    _steps(opt, variables, grads)
    wd = dino_cosine_scheduler(0.5, 0.1, 1, 3)
    for t, g in enumerate(grads):
        want = [want[0] - lr * (g[0] + wd[t] * want[0]), want[1] - lr * g[1]]
    for v, w in zip(variables, want):
        np.testing.assert_allclose(v.numpy(), w, rtol=0, atol=WD_TOL)


def test_resume_keeps_the_schedule_position(tmp_path):
    rng = np.random.default_rng(2)
    grads = [[rng.normal(size=(2, 2)), rng.normal(size=2)] for _ in range(4)]

    def make():
        variables = _kernel_and_bias()
        return variables, schedules.build_optimizer(
            "adamw", 0.05, weight_decay=0.04,
            weight_decay_schedule=CosineWeightDecay(0.04, 0.4, 4))

    straight, opt = make()
    _steps(opt, straight, grads)
    first, opt = make()
    _steps(opt, first, grads[:2])
    path = tf.train.Checkpoint(optimizer=opt, variables=first).write(str(tmp_path / "ckpt"))
    resumed, opt = make()
    opt.build(resumed)
    tf.train.Checkpoint(optimizer=opt, variables=resumed).read(path).assert_consumed()
    assert int(opt.iterations) == 2
    _steps(opt, resumed, grads[2:])
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a.numpy(), b.numpy())    # one process: bit-exact


def test_decayed_variables_are_dinos_regularised_group():
    # DINO's get_params_groups: not decayed = names ending in .bias and 1-D parameters
    # (norms); everything else (kernels, the [CLS] token, the position embeddings, the
    # last layer's direction) is decayed.
    from dualssl_tf.methods.dino import dino_head
    from dualssl_tf.models import vit

    encoder = vit.vit("vit_tiny", image_size=8, patch_size=4, depth=1, width=8, heads=2)
    head = dino_head(8, out_dim=6, hidden_dim=8, bottleneck_dim=4, batch_norm=True)
    variables = encoder.trainable_variables + head.trainable_variables
    opt = schedules.build_optimizer("adamw", 1e-3, weight_decay=0.04,
                                    weight_decay_schedule=CosineWeightDecay(0.04, 0.4, 10))
    opt.build(variables)
    want = [not (v.path.endswith("bias") or len(v.shape) == 1) for v in variables]
    assert opt._scheduled_decay == want
    assert sum(want) == 11 and len(want) - sum(want) == 18   # 7 + 4 kernels; 11 + 7 others


def test_trainer_builds_it_from_the_flags():
    cfg = config.TrainConfig(dataset="generated_images", optimizer="adamw", weight_decay=0.04,
                             weight_decay_end=0.4, epochs=3)
    opt = trainer.build_optimizer(cfg, steps_per_epoch=5)
    assert opt.weight_decay_schedule.get_config() == {"start": 0.04, "end": 0.4,
                                                       "total_steps": 15}
    assert opt.decay_form == "decoupled"
    lars = trainer.build_optimizer(cfg.replace(optimizer="lars"), 5)
    assert lars.decay_form == "coupled" and lars.lars_weight_decay == 0.0
    # Without the flag: the optimizer of before, Keras' own class and decay.
    plain = trainer.build_optimizer(cfg.replace(weight_decay_end=-1.0), 5)
    assert type(plain) is keras.optimizers.AdamW and plain.weight_decay == 0.04
    with pytest.raises(config.ConfigError, match="--weight_decay_end: must be >= 0, or -1"):
        config.validate(cfg.replace(weight_decay_end=-0.5))
    assert math.isclose(cfg.replace(weight_decay_end=-1.0).optim.weight_decay_end, -1.0)
