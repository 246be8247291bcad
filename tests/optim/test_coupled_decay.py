"""--weight_decay_mode: coupled SGD / Adam against PyTorch's update rules written out by hand
in NumPy (float64, several steps), the exclusions as on the decoupled path, and the default
(decoupled) optimizer unchanged. No torch: the rules are transcribed from torch.optim."""

import numpy as np
import pytest

import keras

from dualssl_tf import config
from dualssl_tf.optim import schedules
from dualssl_tf.optim.coupled_decay import CoupledAdam, CoupledSGD
from dualssl_tf.optim.lars import LARS
from dualssl_tf.run import trainer

LR, MOMENTUM, WD, STEPS = 0.1, 0.9, 0.05, 5
EXACT = 1e-12   # float64, the same operations up to association: a few ulp of O(1) weights


def _variables():
    """Dense kernel [3, 2] and bias [2], BatchNorm gamma [2] (float64): one decayed
    variable and two excluded by the default names."""
    dense = keras.layers.Dense(2, dtype="float64", name="dense")
    dense.build((None, 3))
    dense.kernel.assign([[0.5, -1.0], [2.0, 0.0], [0.0, 1.5]])
    dense.bias.assign([0.1, -0.2])
    bn = keras.layers.BatchNormalization(dtype="float64", name="bn")
    bn.build((None, 2))
    bn.gamma.assign([1.5, 0.7])
    return [dense.kernel, dense.bias, bn.gamma]


def _grads(seed=0):
    rng = np.random.default_rng(seed)
    # |g| >= 0.05 so that Adam's epsilon is negligible next to sqrt(v) (see the Adam test).
    return [[np.sign(x) * (0.05 + np.abs(x)) for x in
             (rng.normal(size=(3, 2)), rng.normal(size=2), rng.normal(size=2))]
            for _ in range(STEPS)]


DECAYED = [True, False, False]   # kernel; bias and gamma excluded


def f32(x):
    """Keras holds the learning rate (a float32 variable), SGD's momentum and the betas of
    Adam's bias correction (cast from Python floats) in float32 even for float64 weights;
    the references use those values."""
    return float(np.float32(x))


def torch_sgd(weights, grads_seq, lr, momentum, wd, decayed):
    """torch.optim.SGD.step (dampening 0, no nesterov), per parameter p:
    d_p = grad + wd * p; buf = d_p at the first step, else momentum * buf + d_p;
    p -= lr * buf. ``decayed[i]`` False: that parameter's group has weight_decay 0."""
    p = [w.copy() for w in weights]
    lr, momentum = f32(lr), f32(momentum)
    buf = [None] * len(p)
    for grads in grads_seq:
        for i, g in enumerate(grads):
            d_p = g + wd * p[i] if decayed[i] else g
            buf[i] = d_p.copy() if buf[i] is None else momentum * buf[i] + d_p
            p[i] = p[i] - lr * buf[i]
    return p


def torch_adam(weights, grads_seq, lr, wd, decayed, beta1=0.9, beta2=0.999, eps=1e-7,
               keras_epsilon=False):
    """torch.optim.Adam.step (amsgrad off), per parameter p at step t = 1, 2, ...:
    grad += wd * p; m = b1 m + (1 - b1) grad; v = b2 v + (1 - b2) grad^2;
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    ``keras_epsilon``: eps added to sqrt(v) before the bias correction, as Keras does,
    i.e. PyTorch's rule with eps / sqrt(1 - b2^t)."""
    p = [w.copy() for w in weights]
    lr = f32(lr)
    m = [np.zeros_like(w) for w in p]
    v = [np.zeros_like(w) for w in p]
    for t, grads in enumerate(grads_seq, start=1):
        for i, g in enumerate(grads):
            g = g + wd * p[i] if decayed[i] else g
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            # Keras computes beta^t from float32 betas (f32), the moments with exact ones.
            c1, c2 = 1 - f32(beta1) ** t, 1 - f32(beta2) ** t
            e = eps / np.sqrt(c2) if keras_epsilon else eps
            p[i] = p[i] - lr * (m[i] / c1) / (np.sqrt(v[i] / c2) + e)
    return p


def _run(opt, grads_seq):
    variables = _variables()
    start = [np.array(v) for v in variables]
    for grads in grads_seq:
        opt.apply_gradients(zip(grads, variables))
    return start, [np.array(v) for v in variables]


def test_coupled_sgd_is_torch_sgd_with_momentum():
    grads = _grads()
    opt = schedules.build_optimizer("sgd", LR, momentum=MOMENTUM, weight_decay=WD,
                                    weight_decay_mode="coupled")
    assert isinstance(opt, CoupledSGD) and opt.weight_decay is None  # no decoupled decay
    start, got = _run(opt, grads)
    ref = torch_sgd(start, grads, LR, MOMENTUM, WD, DECAYED)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=0, atol=EXACT)
    # Not vacuous: without the decay, or with Keras' decoupled decay, the kernel differs.
    for other in (torch_sgd(start, grads, LR, MOMENTUM, 0.0, DECAYED)[0],
                  _run(schedules.build_optimizer("sgd", LR, momentum=MOMENTUM,
                                                 weight_decay=WD), grads)[1][0]):
        assert np.abs(got[0] - other).max() > 1e-3
    # Excluded variables (bias, BatchNorm gamma) are plain momentum SGD.
    plain = torch_sgd(start, grads, LR, MOMENTUM, 0.0, DECAYED)
    np.testing.assert_allclose(got[1], plain[1], rtol=0, atol=EXACT)
    np.testing.assert_allclose(got[2], plain[2], rtol=0, atol=EXACT)


def test_coupled_sgd_without_momentum():
    grads = _grads(1)
    opt = schedules.build_optimizer("sgd", LR, momentum=0.0, weight_decay=WD,
                                    weight_decay_mode="coupled")
    start, got = _run(opt, grads)
    for g, r in zip(got, torch_sgd(start, grads, LR, 0.0, WD, DECAYED)):
        np.testing.assert_allclose(g, r, rtol=0, atol=EXACT)


def test_coupled_adam_is_torch_adam_with_l2():
    lr, grads = 0.01, _grads(2)
    opt = schedules.build_optimizer("adam", lr, weight_decay=WD, weight_decay_mode="coupled")
    assert isinstance(opt, CoupledAdam) and opt.weight_decay is None
    start, got = _run(opt, grads)
    # Exact against PyTorch's rule with Keras' epsilon placement: the L2 term is PyTorch's.
    exact = torch_adam(start, grads, lr, WD, DECAYED, keras_epsilon=True)
    for g, r in zip(got, exact):
        np.testing.assert_allclose(g, r, rtol=0, atol=EXACT)
    # Against PyTorch's own epsilon placement: Keras' eps acts as eps / sqrt(1 - b2^t)
    # (<= 31.7 eps = 3.2e-6 at t = 1) next to sqrt(v_hat) ~ |g| >= 0.05, changing each
    # step (size <= lr) by a relative <= 6.4e-5: at most lr * 6.4e-5 per step.
    torch_rule = torch_adam(start, grads, lr, WD, DECAYED)
    for g, r in zip(got, torch_rule):
        np.testing.assert_allclose(g, r, rtol=0, atol=STEPS * lr * 6.4e-5)
    # Not vacuous: Keras' decoupled Adam (AdamW's form) and no decay both differ.
    decoupled = _run(schedules.build_optimizer("adam", lr, weight_decay=WD), grads)[1][0]
    no_decay = torch_adam(start, grads, lr, 0.0, DECAYED, keras_epsilon=True)[0]
    assert np.abs(got[0] - decoupled).max() > 1e-4
    assert np.abs(got[0] - no_decay).max() > 1e-4


def test_excludes_what_the_decoupled_path_excludes():
    # A ResNet-18 (width 1/8) with a projector: with a zero gradient and no momentum one
    # coupled step is w -= lr wd w, the decoupled step exactly: every variable moves the
    # same, so the decayed sets are equal (and are the kernels only).
    from dualssl_tf.models.heads import projection_head
    from dualssl_tf.models.resnet import resnet
    enc = resnet(18, image_size=8, stem="cifar", width_multiplier=0.125)
    head = projection_head(enc.output_shape[-1], 16, 8)
    variables = enc.trainable_variables + head.trainable_variables
    rng = np.random.default_rng(0)   # non-zero everywhere: a decayed bias would move
    start = [rng.normal(size=v.shape).astype(np.float32) for v in variables]
    after = {}
    for mode in ("decoupled", "coupled"):
        opt = schedules.build_optimizer("sgd", 0.5, momentum=0.0, weight_decay=0.1,
                                        weight_decay_mode=mode)
        for v, s in zip(variables, start):
            v.assign(s)
        opt.apply_gradients([(np.zeros(v.shape, np.float32), v) for v in variables])
        after[mode] = [np.array(v) for v in variables]
    for a, b in zip(after["coupled"], after["decoupled"]):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=0)
    moved = {mode: [v.path for v, s, a in zip(variables, start, after[mode])
                    if not np.array_equal(s, a)] for mode in after}
    assert moved["coupled"] == moved["decoupled"]
    assert moved["coupled"] and all(p.endswith("kernel") for p in moved["coupled"])
    assert sum(p.endswith(("bias", "gamma", "beta")) for p in
               (v.path for v in variables)) > 10   # exclusions really were tested


def test_default_is_todays_decoupled_optimizer():
    # Today's code path, inline: the default must build exactly this.
    def today(name, lr, momentum, wd):
        opt = {"sgd": lambda: keras.optimizers.SGD(lr, momentum=momentum,
                                                   weight_decay=wd or None),
               "adam": lambda: keras.optimizers.Adam(lr, weight_decay=wd or None),
               "adamw": lambda: keras.optimizers.AdamW(lr, weight_decay=wd)}[name]()
        if wd:
            opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        return opt

    def same(a, b):
        ca, cb = a.get_config(), b.get_config()
        ca.pop("name"), cb.pop("name")
        return type(a) is type(b) and ca == cb

    grads = _grads(3)
    for name in ("sgd", "adam", "adamw"):
        for wd in (0.0, WD):
            built = schedules.build_optimizer(name, LR, momentum=MOMENTUM, weight_decay=wd)
            assert same(built, today(name, LR, MOMENTUM, wd)), (name, wd)
            assert same(built, schedules.build_optimizer(
                name, LR, momentum=MOMENTUM, weight_decay=wd, weight_decay_mode="decoupled"))
            got = _run(built, grads)[1]
            ref = _run(today(name, LR, MOMENTUM, wd), grads)[1]
            for g, r in zip(got, ref):
                assert np.array_equal(g, r), (name, wd)
    # Through the trainer: a config without the flag builds the decoupled Keras SGD.
    cfg = config.TrainConfig(optimizer="sgd", momentum=0.9, weight_decay=1e-4)
    assert cfg.optim.weight_decay_mode == "decoupled"
    assert same(trainer.build_optimizer(cfg), today("sgd", 0.1, 0.9, 1e-4))
    coupled = trainer.build_optimizer(cfg.replace(weight_decay_mode="coupled"))
    assert isinstance(coupled, CoupledSGD) and coupled.coupled_weight_decay == 1e-4


def test_adamw_and_lars_with_the_mode():
    with pytest.raises(ValueError, match="AdamW's decay is decoupled"):
        schedules.build_optimizer("adamw", 0.1, weight_decay=0.01, weight_decay_mode="coupled")
    with pytest.raises(ValueError, match="weight_decay_mode='l2'"):
        schedules.build_optimizer("sgd", 0.1, weight_decay_mode="l2")
    # LARS is coupled by construction and does not read the mode.
    a, b = (schedules.build_optimizer("lars", 0.1, weight_decay=1e-6, weight_decay_mode=m)
            for m in schedules.WEIGHT_DECAY_MODES)
    assert type(a) is type(b) is LARS
    ca, cb = a.get_config(), b.get_config()
    ca.pop("name"), cb.pop("name")
    assert ca == cb


def test_config_round_trip():
    for cls in (CoupledSGD, CoupledAdam):
        opt = cls(0.2, weight_decay=3e-4, exclude_from_decay=("bias",))
        clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
        assert type(clone) is cls
        assert (clone.coupled_weight_decay, clone.exclude_from_decay) == (3e-4, ("bias",))
        assert clone.weight_decay is None
    with pytest.raises(ValueError, match="weight_decay=-1"):
        CoupledSGD(0.1, weight_decay=-1)


def test_under_loss_scaling_the_decay_sees_the_unscaled_gradient():
    # --mixed_precision=float16 wraps the optimizer in a LossScaleOptimizer: the gradients
    # it gets are multiplied by the loss scale and unscaled before the inner update, so the
    # L2 term must be added after that (in update_step), not to the scaled gradient.
    grads = _grads(4)
    inner = CoupledSGD(LR, momentum=MOMENTUM, weight_decay=WD)
    scale = 2.0 ** 15   # constant over these steps (it grows after 2000 finite steps)
    scaled = keras.optimizers.LossScaleOptimizer(inner, initial_scale=scale)
    start, got = _run(scaled, [[g * scale for g in step] for step in grads])
    for g, r in zip(got, torch_sgd(start, grads, LR, MOMENTUM, WD, DECAYED)):
        np.testing.assert_allclose(g, r, rtol=0, atol=EXACT)
