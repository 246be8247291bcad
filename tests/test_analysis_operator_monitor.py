"""The matrix-free per-epoch monitor (analysis.operator_monitor) and its image wiring:
Theorem 3 through the monitor (float64), its estimators against the explicit operator, the
held-out sample, bad input, and training unchanged with the monitor on."""

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config, losses, training
from dualssl_tf.analysis import callback, operator_monitor, theorems
from dualssl_tf.analysis.covariance import CovarianceOperator
from dualssl_tf.analysis.operator_free import MatrixFreeOperator
from dualssl_tf.analysis.operator_monitor import OperatorMonitor, passes_per_epoch
from dualssl_tf.models.resnet import resnet
from dualssl_tf.options import ConfigError
from dualssl_tf.tasks.images import analysis as image_analysis
from tests.test_analysis_operator_free import TOL64, bias_free_conv_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "operator_monitor_worker.py")


def enumerated_simp(model, x_aug):
    """E[L_simp] over the enumerated views (theory.md section 3): positives every (a, a')
    of one base point, negatives every (j, b), through all towers."""
    m, a = x_aug.shape[0], x_aug.shape[1]
    f = tf.reshape(model(tf.reshape(x_aug, [m * a, *x_aug.shape[2:]])), [m, a, -1])
    pos = tf.reduce_mean(tf.square(f[:, :, None] - f[:, None, :])) * f.shape[-1] / 2
    flat = tf.reshape(f, [m * a, -1])
    neg = tf.reduce_mean(tf.square(flat[:, None] - flat[None, :])) * f.shape[-1] / 2
    return pos - neg


def test_monitor_theorem3_and_estimators_float64():
    """On a bias-free ReLU conv net, -grad E[L_simp] = 2 OP vec(W) (theory.md section 3), so
    the monitor's gradient cosine is 1 and ||OP vec W|| = ||grad|| / 2; the estimators are
    the explicit operator's: power iteration a lower bound that reaches lambda_max, the
    trace Hutchinson's on the documented probes."""
    model = bias_free_conv_net()
    x0 = np.random.default_rng(2).standard_normal((4, 6, 6, 2))
    x_aug = tf.constant(theorems.enumerated_augmentations(x0, num_aug=2, strength=0.4,
                                                          seed=3))
    layers = ["conv_a", "conv_b", "head"]
    loss_fn = lambda m, v1, v2: enumerated_simp(m, x_aug)  # noqa: E731
    logs = {}
    for budget, names in ((1, layers), (60, ["conv_b"])):
        mon = OperatorMonitor(model, names, x_aug, budget=budget, seed=4, chunk_size=3,
                              loss_fn=loss_fn)
        mon.set_model(model)
        logs[budget] = mon.compute(epoch=2)
    for i, layer in enumerate(layers):
        explicit = CovarianceOperator.from_model(model, layer, x_aug.numpy())
        w_op = explicit.apply(explicit.weight_vector)
        with tf.GradientTape() as tape:
            loss = enumerated_simp(model, x_aug)
        grad = tape.gradient(loss, model.get_layer(layer).kernel).numpy()
        one = logs[1]
        assert one[f"op_grad_cos/{layer}"] == pytest.approx(1.0, abs=TOL64)
        assert one[f"op_w_norm/{layer}"] == pytest.approx(np.linalg.norm(w_op), rel=TOL64)
        assert one[f"op_w_norm/{layer}"] == pytest.approx(np.linalg.norm(grad) / 2, rel=TOL64)
        assert one[f"op_residue/{layer}"] < 1e-14
        top = explicit.top_eigen(1)[0][0]
        # A Rayleigh quotient: never above lambda_max; 60 steps from OP vec(W) reach it
        # (this net's gap: error (l2/l1)^120 far below float64 rounding on P <= 72).
        assert one[f"op_top_eig/{layer}"] <= top * (1 + 1e-12)
        if layer == "conv_b":
            assert logs[60][f"op_top_eig/{layer}"] == pytest.approx(top, rel=1e-9)
        # Hutchinson on the probes the monitor draws (seed from (seed, epoch, layer)).
        seed = int(np.random.default_rng([4, 2, i]).integers(2**31))
        op = MatrixFreeOperator(model, layer, x_aug)
        assert one[f"op_trace/{layer}"] == pytest.approx(
            op.trace_estimate(probes=1, seed=seed)[0], rel=TOL64)
        rng = np.random.default_rng(seed)
        z = rng.integers(0, 2, size=op.shape).ravel() * 2.0 - 1.0
        assert one[f"op_trace/{layer}"] == pytest.approx(z @ explicit.apply(z), rel=TOL64)
    assert logs[1]["op_monitor_seconds"] > 0
    assert passes_per_epoch(3, 1) == 16
    # One traced VJP function for all layers, power iteration in step: the same numbers
    # (float64: no fused float32 kernels to round differently).
    mon = OperatorMonitor(model, layers, x_aug, budget=1, seed=4, chunk_size=3,
                          loss_fn=loss_fn, one_trace=True)
    mon.set_model(model)
    shared = mon.compute(epoch=2)
    assert set(shared) == set(logs[1])
    for key, value in logs[1].items():
        if key != "op_monitor_seconds":
            assert shared[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_weights_product_and_residue_equal_separate_passes():
    """The monitor's one-JVP product and residue equal the separate ones, on a ResNet layer
    with BatchNorm and a skip connection (residue > 0)."""
    keras.utils.set_random_seed(0)
    enc = resnet(18, image_size=8, stem="cifar", width_multiplier=0.0625)
    x_aug = np.random.default_rng(0).standard_normal((4, 2, 8, 8, 3)).astype("float32")
    op = MatrixFreeOperator(enc, "layer2_0_conv1", x_aug, chunk_size=2, dtype="float64")
    product, residue = op.weights_product_and_residue()
    # Same float32 kernels, same chunks; only the float64 sums' order differs.
    np.testing.assert_allclose(product, op.apply_weights(), rtol=1e-12, atol=0)
    assert residue == pytest.approx(op.residue(), rel=1e-12)
    assert residue > 1e-2


def _images_cfg(tmp_path, **kw):
    base = dict(dataset="generated_images", image_size=16, generated_examples=64,
                width_multiplier=0.125, proj_hidden_dim=16, proj_dim=8, batch_size=16,
                epochs=1, steps_per_epoch=2, loss="ntxent", temperature=0.5, verbose=0,
                model_dir=str(tmp_path / "run"), analysis_points=4)
    return config.TrainConfig(**{**base, **kw})


def test_image_layers_sample_and_bad_input(tmp_path):
    cfg = _images_cfg(tmp_path, analysis_every=1)
    enc = resnet(18, image_size=16, stem="cifar", width_multiplier=0.125)
    assert image_analysis.monitor_layers(cfg, enc) == [f"layer{s}_0_conv1" for s in range(1, 5)]
    assert image_analysis.monitor_layers(cfg.replace(analysis_layers="stem_conv"),
                                         enc) == ["stem_conv"]
    with pytest.raises(ConfigError, match="--analysis_layers: .*'nope'"):
        image_analysis.monitor_layers(cfg.replace(analysis_layers="layer1_0_conv1,nope"), enc)
    with pytest.raises(ConfigError, match="--analysis_layers: .*no Dense or Conv"):
        image_analysis.monitor_layers(cfg, keras.Sequential([keras.Input((4, 4, 3)),
                                                             keras.layers.Flatten()]))
    # The sample: M held-out images x 4 views (2 by default), the same for the same seed.
    x = image_analysis.monitor_sample(cfg, 3, num_aug=4, seed=7)
    assert x.shape == (3, 4, 16, 16, 3)
    np.testing.assert_array_equal(x, image_analysis.monitor_sample(cfg, 3, num_aug=4, seed=7))
    assert float(tf.reduce_max(tf.abs(x[:, 0] - x[:, 1]))) > 0.1   # two different views
    for kw, flag in [(dict(analysis_budget=0), "analysis_budget"),
                     (dict(analysis_every=0, analysis_layers="stem_conv"), "analysis_layers"),
                     (dict(analysis_every=0, analysis_budget=3), "analysis_budget")]:
        with pytest.raises(ConfigError, match=f"--{flag}"):
            config.validate(_images_cfg(tmp_path, **{"analysis_every": 1, **kw}))
    hltm = config.TrainConfig(dataset="hltm", analysis_every=1, analysis_budget=2,
                              model_dir=str(tmp_path / "h"))
    with pytest.raises(ConfigError, match="--analysis_budget: applies to image"):
        callback.build_analysis_callback(hltm, None)


@pytest.mark.slow  # a TensorFlow start and a ResNet build in a subprocess
def test_train_tool_unknown_layer_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train.py"),
         "--dataset=generated_images", "--image_size=16", "--generated_examples=64",
         "--width_multiplier=0.125", "--batch_size=16", "--analysis_every=1",
         "--analysis_layers=conv9", f"--model_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--analysis_layers" in lines[0] and "'conv9'" in lines[0]
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")


@pytest.mark.slow  # two trainer runs and the monitor's tracing: ~1 min on 2 shared cores
def test_monitor_leaves_training_unchanged(tmp_path):
    """Training metrics with the monitor on equal those with it off, to the bit (one
    process, one machine); the monitor's keys are on every line."""
    lines = {}
    for every in (0, 1):
        cfg = _images_cfg(tmp_path, analysis_every=every, model_dir=str(tmp_path / f"r{every}"),
                          **({"analysis_layers": "layer4_0_conv1"} if every else {}))
        training.train(cfg)
        with open(os.path.join(cfg.run.model_dir, "metrics.jsonl")) as f:
            lines[every] = [json.loads(line) for line in f]
    for off, on in zip(lines[0], lines[1]):
        assert {k: v for k, v in on.items() if not k.startswith("op_")} == off
        assert set(on["op_grad_cos"]) == {"layer4_0_conv1"}
        assert -1.0 <= on["op_grad_cos"]["layer4_0_conv1"] <= 1.0
        assert on["op_w_norm"]["layer4_0_conv1"] > 0 and on["op_trace"]["layer4_0_conv1"] > 0
        assert 0 < on["op_residue"]["layer4_0_conv1"]
        # ntxent has Theorem 4's weights: its keys are logged by default.
        assert on["op_xi_w_norm"]["layer4_0_conv1"] > 0
        assert -1.0 <= on["op_xi_grad_cos"]["layer4_0_conv1"] <= 1.0
        assert 0.0 <= on["op_xi_residue_share"]["layer4_0_conv1"] <= 1.0
    assert len(lines[1]) == 2


@pytest.mark.gpu
@pytest.mark.slow  # a subprocess tracing the products on 1 and 2 devices: ~1 min on 2 cores
def test_monitor_same_on_one_and_two_replicas(tmp_path):
    """The monitor's numbers (on the same weights) under MirroredStrategy over 2 logical
    devices, its passes split over the replicas, equal one device's: to the bit where each
    replica runs the chunks one device runs (and the sums add the same terms); with one
    chunk of 5 points on one device against 3 + 3 (one padded) on two, to float32 rounding;
    the same with one traced VJP function for all layers (``one_trace``)."""
    out = tmp_path / "monitor.json"
    proc = subprocess.run([sys.executable, WORKER, "2", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["replicas"] == [1, 2] and got["share"] == 3    # 5 points: 3 per replica
    for case in ("same_chunks", "padded", "one_trace"):
        one, two = got["logs"][case]
        one.pop("op_monitor_seconds"), two.pop("op_monitor_seconds")
        assert len(one) == 8 and one["op_w_norm/layer2_0_conv1"] > 0
        assert one["op_xi_w_norm/layer2_0_conv1"] > 0
        if case == "same_chunks":
            assert one == two
        else:
            # Convolutions on a batch of 10 vs 6 views and float32 sums in another order:
            # a few float32 ulps (measured below 1e-6 relative); the Hutchinson and power
            # steps amplify nothing at budget 1.
            assert set(one) == set(two)
            for key in one:
                assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key


def enumerated_loss(per_anchor, x_aug, r0=None):
    """E[L] over Theorem 4's enumerated tuples (H = 1): anchor (i, a), positive (i, a'),
    negative (j, b) for every i, a, a', j, b, through all towers. ``r0`` [M, M]: the loss
    sees the un-augmented distance r0[i, j] as r- (its gradient flows through the real r-),
    as ``theorems.theorem4_check`` feeds L_cov."""
    m, a = x_aug.shape[0], x_aug.shape[1]

    def loss_fn(model, view1, view2):
        f = tf.reshape(model(tf.reshape(x_aug, [m * a, *x_aug.shape[2:]])), [m, a, -1])
        r_pos = 0.5 * tf.reduce_sum(tf.square(f[:, :, None] - f[:, None, :]), -1)
        r_neg = 0.5 * tf.reduce_sum(tf.square(f[:, :, None, None] - f[None, None]), -1)
        if r0 is not None:
            shown = tf.constant(r0, r_neg.dtype)[:, None, :, None]
            r_neg = shown + (r_neg - tf.stop_gradient(r_neg))
        shape = [m, a, a, m, a]
        r_pos = tf.reshape(tf.broadcast_to(r_pos[:, :, :, None, None], shape), [-1])
        r_neg = tf.reshape(tf.broadcast_to(r_neg[:, :, None], shape), [-1, 1])
        return tf.reduce_mean(per_anchor(r_pos, r_neg))
    return loss_fn


def _theorem4_monitor(model, layers, x_aug, x0, per_anchor, override):
    r0 = theorems.base_distances(model, x0)
    mon = OperatorMonitor(
        model, layers, x_aug, budget=1, seed=4, chunk_size=3, x0=x0,
        loss_fn=enumerated_loss(per_anchor, x_aug, r0 if override else None),
        pair_weights=lambda m, x: theorems.loss_weights(per_anchor, theorems.base_distances(
            m, x)))
    mon.set_model(model)
    return mon.compute(epoch=1)


def test_monitor_theorem4_exact_for_cov_float64():
    """L_cov with its weights at the un-augmented distances (theorems.theorem4_check's
    setting) on a bias-free ReLU conv net: -grad E[L_cov] = 2 OP_xi vec(W) exactly, so the
    matrix-free monitor logs cosine 1, ||OP_xi vec W|| = ||grad|| / 2 and residue share 0,
    against theorem4_check's explicit connections; Theorem 3's keys are unchanged by xi."""
    model = bias_free_conv_net()
    x0 = np.random.default_rng(2).standard_normal((4, 6, 6, 2))
    x_aug = tf.constant(theorems.enumerated_augmentations(x0, num_aug=2, strength=0.4,
                                                          seed=3))
    per_anchor = lambda rp, rn: losses.exact_cov_loss(rp, rn, 0.5)  # noqa: E731
    layers = ["conv_a", "head"]
    logs = _theorem4_monitor(model, layers, x_aug, x0, per_anchor, override=True)
    plain = OperatorMonitor(model, layers, x_aug, budget=1, seed=4, chunk_size=3,
                            loss_fn=enumerated_loss(per_anchor, x_aug))
    plain.set_model(model)
    plain = plain.compute(epoch=1)
    for layer in layers:
        ref = theorems.theorem4_check(model, layer, x_aug, x0, loss="cov", towers="all")
        assert ref["rel_error"] < TOL64
        grad = np.linalg.norm(ref["grad"])
        assert logs[f"op_xi_grad_cos/{layer}"] == pytest.approx(1.0, abs=TOL64)
        assert logs[f"op_xi_w_norm/{layer}"] == pytest.approx(grad / 2, rel=TOL64)
        assert logs[f"op_xi_w_norm/{layer}"] == pytest.approx(
            np.linalg.norm(ref["predicted"]) / 2, rel=TOL64)
        assert logs[f"op_xi_residue_share/{layer}"] < TOL64
        for key in ("op_w_norm", "op_residue", "op_top_eig", "op_trace"):
            assert logs[f"{key}/{layer}"] == plain[f"{key}/{layer}"]
    assert not any(k.startswith("op_xi") for k in plain)
    assert passes_per_epoch(3, 1, weighted=True) == 19   # one more VJP pass per layer


def test_monitor_theorem4_residue_share_grows_with_augmentation():
    """InfoNCE (the real augmented distances): the residue share is 0 without augmentation
    and grows with its strength; it is the least-squares share of theorem4_check's vectors."""
    model = bias_free_conv_net()
    x0 = np.random.default_rng(2).standard_normal((4, 6, 6, 2))
    per_anchor = lambda rp, rn: losses.info_nce_loss(rp, rn, 0.5)  # noqa: E731
    shares = []
    for strength in (0.0, 0.3, 1.0):
        x_aug = tf.constant(theorems.enumerated_augmentations(x0, num_aug=2,
                                                              strength=strength, seed=3))
        logs = _theorem4_monitor(model, ["conv_b"], x_aug, x0, per_anchor, override=False)
        ref = theorems.theorem4_check(model, "conv_b", x_aug, x0, loss="nce", towers="all")
        g, p = ref["grad"], ref["predicted"]
        c = max(g @ p / (p @ p), 0.0)
        share = logs["op_xi_residue_share/conv_b"]
        # Both in float64 from the same float64 network: rounding only.
        assert share == pytest.approx(np.linalg.norm(g - c * p) / np.linalg.norm(g),
                                      abs=TOL64)
        assert share <= ref["rel_error"] + TOL64   # least squares: never above the theorem's c
        shares.append(share)
    assert shares[0] < TOL64 < 1e-4 < shares[1] < shares[2]


def test_theorem4_weights_of_a_contrastive_method():
    """The default weights: the paper's sigmoid(-r0/tau)/tau for ntxent at the method's
    embedding of the un-augmented points; none for simp or a method without negatives."""
    from dualssl_tf.methods.contrastive import ContrastiveMethod

    enc = theorems.bias_free_mlp([6, 4], input_dim=5, dtype="float32", seed=1)
    method = ContrastiveMethod(enc, None, loss="ntxent", temperature=0.3)
    x0 = tf.constant(np.random.default_rng(0).standard_normal((5, 5)), tf.float32)
    xi = operator_monitor.theorem4_weights(method, x0)
    z = tf.cast(method.embed(x0), tf.float64).numpy()
    r0 = 0.5 * np.sum((z[:, None] - z[None]) ** 2, -1)
    # float32 embedding, float64 weights of its distances: only the sigmoid's rounding.
    np.testing.assert_allclose(xi, 1 / (1 + np.exp(r0 / 0.3)) / 0.3, rtol=1e-12)
    assert operator_monitor.theorem4_weights(
        ContrastiveMethod(enc, None, loss="simp"), x0) is None
    assert operator_monitor.theorem4_weights(keras.Sequential(), x0) is None
