"""Learning-rate groups (dualssl_tf/optim/rate_groups.py): the predictor's multiplier and
fixed rate visible in the optimizer's update, against PyTorch's per-group rules written out
by hand in NumPy (float64 weights); the method's flags reach the optimizer; defaults build
the optimizer they built before; decoupled decay is refused."""

import numpy as np
import pytest

import keras

from dualssl_tf import config
from dualssl_tf.optim import rate_groups, schedules
from dualssl_tf.optim.coupled_decay import CoupledSGD
from dualssl_tf.options import ConfigError

LR, MOMENTUM, WD, MULT = 0.1, 0.9, 0.05, 10.0
EXACT = 1e-12   # float64, the same operations up to association: a few ulp of O(1) weights


def f32(x):
    """Keras holds the rate and SGD's momentum in float32 (the group's product too)."""
    return float(np.float32(x))


def _variables():
    """Two float64 kernels: ``pred`` [3, 2] (the group) and ``other`` [2, 2]."""
    pred = keras.Variable(np.array([[0.5, -1.0], [2.0, 0.0], [0.0, 1.5]]), dtype="float64",
                          name="pred_kernel")
    other = keras.Variable(np.array([[0.3, 0.2], [-0.7, 1.1]]), dtype="float64",
                           name="other_kernel")
    return pred, other


GRADS = [[np.array([[0.2, -0.1], [0.4, 0.3], [-0.5, 0.1]]),
          np.array([[0.3, -0.6], [0.1, 0.2]])],
         [np.array([[-0.3, 0.2], [0.1, -0.4], [0.2, 0.6]]),
          np.array([[-0.2, 0.5], [0.4, -0.1]])]]


def _apply(opt, variables, grads_seq):
    for grads in grads_seq:
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(g, "float64") for g in grads],
                                variables))
    return [keras.ops.convert_to_numpy(v) for v in variables]


def torch_sgd(w, grads, lrs, momentum, wd):
    """torch.optim.SGD.step for one parameter of a group whose lr is ``lrs[t]`` at step t
    (dampening 0, coupled decay): d = g + wd p; buf = d, then momentum buf + d; p -= lr buf.
    Keras keeps the velocity in units of lr g, equal while the group's rate is constant."""
    p, buf = w.copy(), None
    for g, lr in zip(grads, lrs):
        d = g + wd * p
        buf = d if buf is None else f32(momentum) * buf + d
        p = p - lr * buf
    return p


@pytest.mark.parametrize("wd", [0.0, WD])
def test_multiplier_two_momentum_steps_by_hand(wd):
    pred, other = _variables()
    w0 = [keras.ops.convert_to_numpy(v) for v in (pred, other)]
    opt = schedules.build_optimizer(
        "sgd", LR, momentum=MOMENTUM, weight_decay=wd, weight_decay_mode="coupled",
        exclude_from_decay=(), group=rate_groups.RateGroup((pred,), MULT))
    assert isinstance(opt, CoupledSGD) and isinstance(opt, rate_groups._RateGroup)
    got = _apply(opt, [pred, other], GRADS)
    lr_pred = f32(f32(LR) * MULT)   # the product formed in float32, as Keras holds rates
    want_pred = torch_sgd(w0[0], [g[0] for g in GRADS], [lr_pred] * 2, MOMENTUM, wd)
    want_other = torch_sgd(w0[1], [g[1] for g in GRADS], [f32(LR)] * 2, MOMENTUM, wd)
    np.testing.assert_allclose(got[0], want_pred, rtol=0, atol=EXACT)
    np.testing.assert_allclose(got[1], want_other, rtol=0, atol=EXACT)
    # The group moved ~10x as far as at the base rate (not exactly: the decay term differs).
    base_pred = torch_sgd(w0[0], [g[0] for g in GRADS], [f32(LR)] * 2, MOMENTUM, wd)
    ratio = np.abs(got[0] - w0[0]).sum() / np.abs(base_pred - w0[0]).sum()
    assert 9.0 < ratio < 11.0, ratio


def test_multiplier_scales_adam_step_where_gradient_scaling_would_not():
    """Adam's first step is lr g / (|g| + epsilon / sqrt(1 - beta_2)) ~ lr sign(g): the
    group's is 10 lr sign(g) (scaling the gradient would leave it at lr sign(g))."""
    pred, other = _variables()
    w0 = [keras.ops.convert_to_numpy(v) for v in (pred, other)]
    opt = schedules.build_optimizer("adam", LR, group=rate_groups.RateGroup((pred,), MULT))
    got = _apply(opt, [pred, other], GRADS[:1])
    np.testing.assert_allclose(w0[0] - got[0], f32(f32(LR) * MULT) * np.sign(GRADS[0][0]),
                               rtol=1e-4)   # epsilon / (sqrt(1 - .999) |g|) <= 3.2e-5
    np.testing.assert_allclose(w0[1] - got[1], f32(LR) * np.sign(GRADS[0][1]), rtol=1e-4)


def test_fixed_rate_stays_while_schedule_decays():
    """SimSiam's fix_lr under warmup + cosine: the group moves by the base rate (x the
    multiplier) at every step, the rest by the schedule (0 at the warmup's first step)."""
    schedule = schedules.WarmupCosineDecay(LR, total_steps=4, warmup_steps=1)
    pred, other = _variables()
    w0 = [keras.ops.convert_to_numpy(v) for v in (pred, other)]
    opt = schedules.build_optimizer("sgd", schedule, momentum=0.0,
                                    group=rate_groups.RateGroup((pred,), 2.0, fixed=True))
    grads = GRADS + GRADS
    got = _apply(opt, [pred, other], grads)
    lrs = [f32(keras.ops.convert_to_numpy(schedule(t))) for t in range(4)]
    assert lrs[0] == 0.0 and lrs[1] == f32(LR) and lrs[1] > lrs[2] > lrs[3] > 0
    want_pred = w0[0] - f32(f32(LR) * 2.0) * sum(g[0] for g in grads)
    want_other = w0[1] - sum(lr * g[1] for lr, g in zip(lrs, grads))
    np.testing.assert_allclose(got[0], want_pred, rtol=0, atol=EXACT)
    np.testing.assert_allclose(got[1], want_other, rtol=0, atol=EXACT)


def test_default_group_builds_the_optimizer_of_before():
    pred, _ = _variables()
    for group in (None, rate_groups.RateGroup((pred,))):
        assert type(schedules.build_optimizer("sgd", LR, group=group)) is keras.optimizers.SGD
        assert type(schedules.build_optimizer("lars", LR, group=group)).__name__ == "LARS"


def test_group_config_round_trips():
    pred, _ = _variables()
    opt = schedules.build_optimizer("lars", LR, weight_decay=1e-5,
                                    group=rate_groups.RateGroup((pred,), MULT, fixed=True))
    clone = type(opt).from_config(opt.get_config())
    assert (clone.group_multiplier, clone.group_fixed_rate) == (MULT, LR)
    assert clone.lars_weight_decay == 1e-5


@pytest.mark.parametrize("name,mode", [("sgd", "decoupled"), ("adam", "decoupled"),
                                       ("adamw", "decoupled")])
def test_decoupled_decay_is_refused(name, mode):
    pred, _ = _variables()
    with pytest.raises(ValueError, match="decoupled weight decay"):
        schedules.build_optimizer(name, LR, weight_decay=WD, weight_decay_mode=mode,
                                  group=rate_groups.RateGroup((pred,), MULT))


def _validate(**flags):
    """The method's section checks the optimizer's (the rest of a run's checks aside)."""
    cfg = config.TrainConfig(**{"method": "byol", "optimizer": "sgd", **flags})
    cfg.method_options.validate(cfg)


@pytest.mark.parametrize("flags,flag", [
    (dict(byol_pred_lr_mult=0.0), "byol_pred_lr_mult"),
    (dict(byol_pred_lr_mult=10.0, weight_decay=1e-4), "byol_pred_lr_mult"),
    (dict(method="simsiam", simsiam_pred_fixed_lr=True, optimizer="adamw", weight_decay=1e-4),
     "simsiam_pred_fixed_lr"),
])
def test_config_refuses(flags, flag):
    with pytest.raises(ConfigError) as err:
        _validate(**flags)
    assert err.value.flag == flag


def test_config_accepts_coupled_lars_and_no_decay():
    for flags in (dict(byol_pred_lr_mult=10.0, weight_decay=1e-4, weight_decay_mode="coupled"),
                  dict(byol_pred_lr_mult=10.0, optimizer="lars", weight_decay=1e-4),
                  dict(byol_pred_lr_mult=10.0, byol_predictor="none", weight_decay=1e-4),
                  dict(method="simsiam", simsiam_pred_fixed_lr=True)):
        _validate(**flags)


def test_method_group_is_the_mlp_predictor_only():
    """BYOL's rate group holds exactly its mlp predictor's trainable variables; without a
    trained predictor there is none (the flags are ignored, not refused)."""
    from dualssl_tf.methods.byol import BYOLMethod
    keras.utils.set_random_seed(0)
    encoder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = BYOLMethod(encoder, predictor="mlp", pred_hidden_dim=5, pred_lr_mult=MULT)
    group = model.rate_group()
    assert (group.multiplier, group.fixed) == (MULT, False)
    assert [id(v) for v in group.variables] == [
        id(v) for v in model.predictor.trainable_variables] and len(group.variables) >= 4
    assert not {id(v) for v in group.variables} & {id(v) for v in encoder.variables}
    for kind in ("none", "directpred"):
        assert BYOLMethod(encoder, predictor=kind, pred_lr_mult=MULT).rate_group() is None
