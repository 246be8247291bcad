"""Barlow Twins and VICReg as methods (dualssl_tf/methods/{twin,barlow,vicreg}.py): their
own projector from their options, the step's loss and logs = the pure losses, and a short
fit under bfloat16 mixed precision with the losses in float32."""

import math

import numpy as np
import pytest

import dualssl_tf as dt
from dualssl_tf import config, decorrelation_losses, methods
from dualssl_tf.tasks.base import HeadSpec

IN_DIM, BATCH = 12, 16
# bfloat16 keeps 8 significant bits: each rounding layer moves a value by at most
# u = 2^-8 relative, and LAYERS of them (encoder 2 Dense, projector 3 Dense with BatchNorm)
# add up at random: an entry of a standardised projection moves by at most
# EPS = sqrt(LAYERS) u, a correlation C_ij = mean(n1_i n2_j) by at most 2 EPS (absolute,
# |C| <= 1). The first step's Barlow loss then moves by at most
# 2 EPS * sum |dL/dC_ij| = 2 EPS (sum_i 2 |1 - C_ii| + lambda sum_{i != j} 2 |C_ij|),
# computed from the float32 C (tests/run/test_mixed_precision_images.py derives its
# bounds the same way).
LAYERS = 5
EPS = math.sqrt(LAYERS) * 2.0 ** -8


def _nets(seed=0):
    import keras
    keras.utils.set_random_seed(seed)
    encoder = keras.Sequential([keras.Input((IN_DIM,)), keras.layers.Dense(24),
                                keras.layers.ReLU(), keras.layers.Dense(16)])
    head = dt.projection_head(16, 32, 8, num_layers=3)
    return encoder, head


def _batch(seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, IN_DIM)).astype(np.float32)
    return {"view1": x + noise * rng.normal(size=x.shape).astype(np.float32),
            "view2": x + noise * rng.normal(size=x.shape).astype(np.float32)}


def test_registry_options_and_projector(tmp_path):
    cfg = config.validate(config.TrainConfig(
        method="barlow", dataset="generated_images", barlow_proj_hidden_dim=32,
        barlow_proj_dim=24, barlow_proj_layers=3, model_dir=str(tmp_path)))
    assert methods.spec("barlow").model_class() is dt.BarlowTwinsMethod
    assert methods.spec("vicreg").model_class() is dt.VICRegMethod
    # The method's projector, not the task's --proj_* head (HeadSpec 128 -> 64, 2 layers).
    head = methods.build_head(cfg, 16, HeadSpec(128, 64, 2, batch_norm=True), sync_bn=False)
    dense = [l for l in head.layers if l.__class__.__name__ == "Dense"]
    bns = [l for l in head.layers if l.__class__.__name__ == "BatchNormalization"]
    assert [tuple(d.kernel.shape) for d in dense] == [(16, 32), (32, 32), (32, 24)]
    assert len(bns) == 2 and [d.use_bias for d in dense] == [False, False, True]
    # The head-less toy tasks stay head-less.
    assert methods.build_head(cfg, 16, None, sync_bn=False) is None
    # The paper's defaults.
    d = config.TrainConfig(method="vicreg")
    assert (d.barlow.lambd, d.barlow.scale_loss, d.barlow.proj_dim) == (0.0051, 1.0, 8192)
    assert (d.vicreg.sim_coeff, d.vicreg.std_coeff, d.vicreg.cov_coeff,
            d.vicreg.proj_hidden_dim, d.vicreg.proj_layers) == (25.0, 25.0, 1.0, 8192, 3)


@pytest.mark.parametrize("name", ["barlow", "vicreg"])
def test_step_loss_and_logs_are_the_pure_losses(name):
    import tensorflow as tf
    encoder, head = _nets()
    if name == "barlow":
        model = dt.BarlowTwinsMethod(encoder, head, lambd=0.02, scale_loss=0.5)
    else:
        model = dt.VICRegMethod(encoder, head, sim_coeff=10.0, std_coeff=20.0, cov_coeff=3.0)
    batch = {k: tf.constant(v) for k, v in _batch().items()}
    out = model.forward(batch, training=True)
    share, logs = model.replica_loss(batch, out)
    z1, z2 = out["z1"], out["z2"]
    if name == "barlow":
        want = decorrelation_losses.barlow_twins_loss(z1, z2, 0.02, 0.5)
        parts = ("on_diag", "off_diag")
    else:
        want = decorrelation_losses.vicreg_loss(z1, z2, 10.0, 20.0, 3.0)
        parts = ("invariance", "variance", "covariance")
    assert float(share) == float(logs["loss"]) == float(want[0]) > 0.1
    for part, value in zip(parts, want[1:]):
        assert float(logs[part]) == float(value)
    cos = np.sum(z1 * z2, 1) / np.linalg.norm(z1, axis=1) / np.linalg.norm(z2, axis=1)
    assert float(logs["pos_cos"]) == pytest.approx(cos.mean(), abs=1e-6)
    assert set(logs) == set(model.metric_names)
    np.testing.assert_allclose(model(batch["view1"]).numpy(),
                               head(encoder(batch["view1"])).numpy(), rtol=1e-6)


@pytest.fixture
def policy():
    import keras
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def _fit(policy, precision, name, steps):
    import keras
    import tensorflow as tf
    policy(precision)
    encoder, head = _nets()
    cls = dt.BarlowTwinsMethod if name == "barlow" else dt.VICRegMethod
    model = cls(encoder, head)
    model.compile(optimizer=keras.optimizers.SGD(0.01 if name == "barlow" else 0.002),
                  run_eagerly=True)
    # Views far apart (C_ii ~ 0.5), where the bound below is a small part of the loss.
    batch = {k: tf.constant(v) for k, v in _batch(noise=1.0).items()}
    out = model.forward(batch, training=True)
    loss = model.batch_loss(batch, out)[0]
    history = (model.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=steps,
                         steps_per_epoch=1, verbose=0).history if steps else None)
    return model, out, loss, history


@pytest.mark.parametrize("name", ["barlow", "vicreg"])
def test_bfloat16_fit_keeps_float32_losses_and_learns(policy, name):
    """Under ``mixed_bfloat16`` the projections are bfloat16, the loss float32; three steps
    on one fixed batch lower it every step (a gradient lost to rounding, an overflow or a
    wrong cast would not), and Barlow's first loss is float32's within the bound above."""
    import tensorflow as tf
    model, out, loss, history = _fit(policy, "mixed_bfloat16", name, 3)
    assert out["z1"].dtype == tf.bfloat16 and loss.dtype == tf.float32
    values = history["loss"]
    assert all(np.isfinite(values)) and values[0] > values[1] > values[2], values
    assert values[0] == pytest.approx(float(loss), rel=1e-6)   # fit logs the float32 loss
    if name == "barlow":
        _, out32, loss32, _ = _fit(policy, "float32", name, 0)
        corr = decorrelation_losses.cross_correlation(out32["z1"], out32["z2"]).numpy()
        diag = np.diag(corr)
        off = corr - np.diag(diag)
        bound = 2 * EPS * (2 * np.abs(1 - diag).sum() + 0.0051 * 2 * np.abs(off).sum())
        assert abs(float(loss) - float(loss32)) <= bound, (float(loss), float(loss32), bound)
        assert bound < 0.1 * float(loss32)      # tight enough to mean something
