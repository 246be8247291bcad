"""BYOL, SimSiam and DirectPred against hand computations: the momentum schedule, the
moving average over three steps, the losses and their gradients, DirectPred's closed form,
the target copy of every task's networks, the switches and the export's prediction output."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import losses
from dualssl_tf.methods import byol
from dualssl_tf.methods.byol import BYOLMethod, SimSiamMethod
from dualssl_tf.monitors.collapse import effective_rank


def _nets(seed=1, bn=True):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((6,)), keras.layers.Dense(8)]
    if bn:
        layers.append(keras.layers.BatchNormalization(momentum=0.5))
    encoder = keras.Sequential(layers + [keras.layers.ReLU()])
    head = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    return encoder, head


def _batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return {"view1": rng.normal(size=(n, 6)).astype("float32"),
            "view2": rng.normal(size=(n, 6)).astype("float32")}


def _step(model, batch):
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0, shuffle=False)


def _np(variables):
    return [v.numpy().copy() for v in variables]


# -- the momentum schedule and the moving average ---------------------------------------

def test_momentum_schedule_first_middle_last():
    k = 1000
    assert float(byol.target_momentum(0, k)) == pytest.approx(0.996, abs=1e-7)
    assert float(byol.target_momentum(k // 2, k)) == pytest.approx(0.998, abs=1e-7)
    assert float(byol.target_momentum(k, k)) == pytest.approx(1.0, abs=1e-7)
    assert float(byol.target_momentum(2 * k, k)) == pytest.approx(1.0, abs=1e-7)  # clipped
    # Another final value: the cosine from base to final, BYOL's formula when final = 1.
    want = 0.99 - (0.99 - 0.9) * (math.cos(math.pi * 0.25) + 1) / 2
    assert float(byol.target_momentum(250, k, 0.9, 0.99)) == pytest.approx(want, abs=1e-7)


def test_ema_over_three_steps_equals_hand_computation():
    encoder, head = _nets()
    base, final, steps = 0.5, 0.9, 3
    model = BYOLMethod(encoder, head, pred_hidden_dim=16, base_momentum=base,
                       final_momentum=final, total_steps=steps)
    model.compile(optimizer=keras.optimizers.SGD(0.5), run_eagerly=True)
    pairs = model.online_pairs()
    assert len(pairs) == len(encoder.trainable_variables) + len(head.trainable_variables)
    target = _np(t for t, _ in pairs)
    np.testing.assert_array_equal(target[0], pairs[0][1].numpy())   # a copy at the start
    for k in range(steps):
        _step(model, _batch(k))
        online = _np(o for _, o in pairs)
        tau = final - (final - base) * (math.cos(math.pi * k / steps) + 1) / 2
        target = [tau * t + (1 - tau) * o for t, o in zip(target, online)]
        for want, (got, o) in zip(target, pairs):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)
    assert max(np.max(np.abs(t.numpy() - o.numpy())) for t, o in pairs) > 1e-3  # moved apart


def test_target_takes_no_gradient_and_is_not_optimized():
    encoder, head = _nets()
    model = BYOLMethod(encoder, head, pred_hidden_dim=16, total_steps=10)
    model.compile(optimizer=keras.optimizers.SGD(0.5), run_eagerly=True)
    model.build_optimizers()
    frozen = model.frozen_variables()
    frozen_ids = {id(v) for v in frozen}
    assert frozen and not frozen_ids & {id(v) for v in model.method_variables}
    # The target's BatchNorm runs on batch statistics: its layers stay trainable.
    assert all(v.trainable for v in frozen)
    batch = {k: tf.constant(v) for k, v in _batch().items()}
    with tf.GradientTape() as tape:
        loss, _ = model.replica_loss(batch, model.forward(batch, training=True))
    grads = tape.gradient(loss, frozen + model.method_variables)
    assert all(g is None for g in grads[:len(frozen)])
    assert all(g is not None for g in grads[len(frozen):])
    # A step with momentum 1 (final = base = 1) leaves the target exactly as it was.
    model = BYOLMethod(*_nets(), pred_hidden_dim=16, base_momentum=1.0, final_momentum=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.5), run_eagerly=True)
    before = _np(model.frozen_variables())
    _step(model, _batch())
    for a, b in zip(before, model.frozen_variables()):
        np.testing.assert_array_equal(a, b.numpy())


# -- the losses -------------------------------------------------------------------------

def _np_cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_losses_equal_numpy():
    rng = np.random.default_rng(3)
    p1, p2, t1, t2 = (rng.normal(size=(5, 7)) for _ in range(4))
    f32 = [tf.constant(x, tf.float32) for x in (p1, p2, t1, t2)]
    want_byol = (2 - 2 * _np_cos(p1, t2)) + (2 - 2 * _np_cos(p2, t1))
    want_simsiam = -0.5 * (_np_cos(p1, t2) + _np_cos(p2, t1))
    np.testing.assert_allclose(losses.byol_loss(*f32).numpy(), want_byol, rtol=1e-5)
    np.testing.assert_allclose(losses.simsiam_loss(*f32).numpy(), want_simsiam, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(losses.cosine(f32[0], f32[2]).numpy(), _np_cos(p1, t1),
                               rtol=1e-5, atol=1e-6)
    # Identical prediction and target: BYOL's loss is 0, SimSiam's -1.
    assert np.allclose(losses.byol_loss(f32[0], f32[0], f32[0], f32[0]).numpy(), 0, atol=1e-5)
    assert np.allclose(losses.simsiam_loss(f32[0], f32[0], f32[0], f32[0]).numpy(), -1)


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_loss_gradients_equal_float64_autodiff(name):
    """float32 gradients of the package's loss vs float64 autodiff of the textbook formula
    (the target's gradient too: SimSiam without stop-gradient uses it)."""
    rng = np.random.default_rng(4)
    xs = [rng.normal(size=(6, 5)) for _ in range(4)]

    def reference(p1, p2, t1, t2):
        def cos(a, b):
            return tf.reduce_sum(a * b, -1) / tf.sqrt(tf.reduce_sum(a * a, -1)
                                                      * tf.reduce_sum(b * b, -1))
        if name == "byol":
            return tf.reduce_mean(4.0 - 2.0 * cos(p1, t2) - 2.0 * cos(p2, t1))
        return tf.reduce_mean(-0.5 * (cos(p1, t2) + cos(p2, t1)))

    fn = {"byol": losses.byol_loss, "simsiam": losses.simsiam_loss}[name]
    got_vars = [tf.Variable(x, dtype=tf.float32) for x in xs]
    want_vars = [tf.Variable(x, dtype=tf.float64) for x in xs]
    with tf.GradientTape() as tape:
        value = tf.reduce_mean(fn(*got_vars))
    got = tape.gradient(value, got_vars)
    with tf.GradientTape() as tape:
        ref = reference(*want_vars)
    want = tape.gradient(ref, want_vars)
    assert float(value) == pytest.approx(float(ref), rel=1e-6, abs=1e-6)
    for g, w in zip(got, want):
        assert np.max(np.abs(w.numpy())) > 1e-3
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-6)


def test_method_loss_is_the_mean_of_the_per_example_loss():
    encoder, head = _nets(bn=False)
    model = SimSiamMethod(encoder, head, pred_hidden_dim=8)
    batch = {k: tf.constant(v) for k, v in _batch().items()}
    out = model.forward(batch, training=True)
    loss, logs = model.replica_loss(batch, out)
    want = -0.5 * (_np_cos(out["p1"].numpy(), out["z2"].numpy())
                   + _np_cos(out["p2"].numpy(), out["z1"].numpy())).mean()
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(logs["pos_cos"]) == pytest.approx(
        _np_cos(out["z1"].numpy(), out["z2"].numpy()).mean(), rel=1e-5)


# -- DirectPred -------------------------------------------------------------------------

def _np_directpred(corr, eps):
    p, u = np.linalg.eigh(corr)
    p = np.clip(p, 0, None)
    s = np.maximum(np.sqrt(p) / np.sqrt(p.max()) + eps, 1e-4)
    return (u * s) @ u.T


def test_directpred_weights_equal_closed_form():
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    corr = q @ np.diag([4.0, 1.0, 0.25, 0.0]) @ q.T
    got = byol.directpred_weights(tf.constant(corr, tf.float32), 0.01).numpy()
    want = q @ np.diag([1.01, 0.51, 0.26, 0.01]) @ q.T   # sqrt(p_j / 4) + eps
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got, _np_directpred(corr, 0.01), atol=1e-5)


def test_directpred_predictor_follows_the_moving_correlation():
    encoder, head = _nets(bn=False)
    rate, eps = 0.3, 0.05
    model = BYOLMethod(encoder, head, predictor="directpred", directpred_rate=rate,
                       directpred_every=2, directpred_eps=eps, total_steps=4)
    model.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True)
    pred = model.predictor
    assert not pred.trainable_weights and {id(v) for v in pred.weights} <= {
        id(v) for v in model.variables}
    np.testing.assert_array_equal(pred.kernel.numpy(), np.eye(4))
    corr = None
    for k in range(3):
        batch = _batch(k)
        z = np.concatenate([head(encoder(batch[v])).numpy() for v in ("view1", "view2")])
        kernel_before = pred.kernel.numpy().copy()
        _step(model, batch)                      # F sees this step's (pre-step) projections
        batch_corr = z.T @ z / len(z)
        corr = batch_corr if corr is None else rate * corr + (1 - rate) * batch_corr
        np.testing.assert_allclose(pred.corr.numpy(), corr, rtol=1e-5, atol=1e-6)
        if k % 2 == 0:   # every 2 steps (step indices 0, 2)
            np.testing.assert_allclose(pred.kernel.numpy(), _np_directpred(corr, eps),
                                       atol=2e-5)
        else:
            np.testing.assert_array_equal(pred.kernel.numpy(), kernel_before)
    assert float(pred.updates.numpy()) == 3


# -- the target copy of every task's networks -------------------------------------------

def test_clone_network_of_every_task_encoder():
    from dualssl_tf.models import conv1d, heads, resnet, tree_net
    rng = np.random.default_rng(0)
    tree = tree_net.TreeNet(3, 2, 4)
    tree(tf.zeros([1, 8]))
    nets = [(resnet.resnet(18, image_size=16, stem="cifar", width_multiplier=0.125),
             (16, 16, 3)),
            (heads.projection_head(64, 16, 8), (64,)),
            (tree, (8,)),
            (conv1d.conv1d_encoder(12, 4, 3, use_bias=True), (12, 1))]
    for net, shape in nets:
        copy = byol.clone_network(net, shape)
        assert type(copy) is type(net)
        assert not {id(v) for v in copy.variables} & {id(v) for v in net.variables}
        x = tf.constant(rng.normal(size=(2, *shape)), tf.float32)
        np.testing.assert_array_equal(copy(x, training=False).numpy(),
                                      net(x, training=False).numpy())
        copy.trainable_variables[0].assign_add(tf.ones_like(copy.trainable_variables[0]))
        assert not np.array_equal(copy.trainable_variables[0].numpy(),
                                  net.trainable_variables[0].numpy())


# -- switches ---------------------------------------------------------------------------

def test_switches():
    batch = {k: tf.constant(v) for k, v in _batch().items()}
    # No predictor: the prediction is the projection.
    model = SimSiamMethod(*_nets(), predictor="none")
    out = model.forward(batch, training=True)
    np.testing.assert_array_equal(out["p1"].numpy(), out["z1"].numpy())
    assert model.predictor is None and model.export_outputs(None) is None
    # The BN-free predictor and projector.
    from dualssl_tf.models import heads
    model = BYOLMethod(*_nets(), pred_bn=False, pred_hidden_dim=8)
    assert not [l for l in model.predictor.layers if "batch_norm" in type(l).__name__.lower()
                or isinstance(l, keras.layers.BatchNormalization)]
    assert not [l for l in heads.projection_head(8, 8, 4, batch_norm=False).layers
                if isinstance(l, keras.layers.BatchNormalization)]
    # Without stop-gradient SimSiam's target branch carries a gradient (and changes it).
    grads = {}
    for stop in (True, False):
        model = SimSiamMethod(*_nets(), pred_hidden_dim=8, stop_gradient=stop)
        with tf.GradientTape() as tape:
            loss, _ = model.replica_loss(batch, model.forward(batch, training=True))
        grads[stop] = tape.gradient(loss, model.encoder.trainable_variables)[0].numpy()
    assert np.max(np.abs(grads[True] - grads[False])) > 1e-4
    # BYOL without the moving average has no target networks and freezes nothing.
    model = BYOLMethod(*_nets(), pred_hidden_dim=8, ema=False)
    assert model.target_encoder is None and model.frozen_variables() == []


def test_export_has_the_prediction_output(tmp_path):
    from dualssl_tf.evaluation import export
    encoder, head = _nets()
    model = BYOLMethod(encoder, head, pred_hidden_dim=8)
    export.export_encoder(encoder, head, tmp_path / "sm", (6,),
                          intermediate_layers=model.export_outputs(None))
    loaded = export.load_encoder(str(tmp_path / "sm"))
    x = _batch()["view1"]
    out = loaded(tf.constant(x))
    want = model.predictor(head(encoder(x, training=False), training=False), training=False)
    assert set(out) == {"representation", "projection", "prediction"}
    np.testing.assert_allclose(out["prediction"].numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_effective_rank():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(1, 5))
    assert float(effective_rank(np.repeat(v, 7, axis=0))) == pytest.approx(1.0, abs=1e-4)
    assert float(effective_rank(np.eye(5))) == pytest.approx(5.0, rel=1e-5)
    s = np.array([3.0, 1.0])
    p = s / s.sum()
    assert float(effective_rank(np.diag(s))) == pytest.approx(np.exp(-(p * np.log(p)).sum()),
                                                            rel=1e-5)
