"""DINO (dualssl_tf/methods/dino.py) on real numbers: the loss and centring by hand and
against a peer's code (lightly's DINOLoss / DINOProjectionHead, which follow the authors'
main_dino.py; values from benchmarks/peer_reference_dino.py on fixed inputs), the
teacher-temperature schedule, the teacher's moving average and the centre over 3 steps by
hand, the frozen last layer, and multi-crop batches through the student. Tiny networks."""

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.methods.dino import (DINOLastLayer, DINOMethod, dino_head, dino_loss,
                                     teacher_temperature)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "dino_reference.json")
# float32 against float64 references: the loss sums K log-probabilities of size ~|s|/0.1
# (~30) each, so float32 rounding (~6e-8 relative) leaves ~1e-5 absolute on losses ~15.
LOSS_TOL = 1e-4
CENTER_TOL = 1e-6   # a mean of O(1) values and a moving average: float32 rounding only


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _hand_loss(student, teacher, center, tau_s, tau_t):
    """The reference's double loop in float64: student [V, B, K], teacher [2, B, K]."""
    total, terms = 0.0, 0
    q = _softmax((teacher - center) / tau_t)
    log_p = np.log(_softmax(student / tau_s))
    for i in range(2):
        for v in range(student.shape[0]):
            if v == i:
                continue
            total += np.mean(np.sum(-q[i] * log_p[v], axis=-1))
            terms += 1
    return total / terms


def test_loss_equals_the_hand_computation():
    rng = np.random.default_rng(1)
    v, b, k = 4, 3, 5
    student = rng.normal(size=(v, b, k))
    teacher = rng.normal(size=(2, b, k))
    center = rng.normal(size=k) * 0.3
    per_example, q = dino_loss(student.reshape(v * b, k).astype(np.float32),
                               teacher.reshape(2 * b, k).astype(np.float32),
                               center.astype(np.float32), 0.1, 0.04, v)
    want = _hand_loss(student, teacher, center, 0.1, 0.04)
    assert per_example.shape == (b,)
    assert abs(float(tf.reduce_mean(per_example)) - want) < LOSS_TOL * max(1.0, abs(want))
    np.testing.assert_allclose(q, _softmax((teacher - center) / 0.04), atol=1e-6)
    # Two crops only: each global crop against the other, the mean of 2 cross-entropies.
    per2, _ = dino_loss(student[:2].reshape(2 * b, k), teacher.reshape(2 * b, k),
                        center, 0.1, 0.04, 2)
    assert abs(float(tf.reduce_mean(per2)) - _hand_loss(student[:2], teacher, center, 0.1,
                                                        0.04)) < LOSS_TOL


def test_loss_and_center_equal_the_reference_code():
    ref = json.load(open(DATA))["loss"]
    b, v, k = ref["batch"], ref["crops"], ref["out_dim"]
    center = np.zeros(k, np.float32)
    m = ref["center_momentum"]
    for step in ref["steps"]:
        temp = float(teacher_temperature(step["epoch"], ref["warmup_teacher_temp"],
                                         ref["teacher_temp"],
                                         ref["warmup_teacher_temp_epochs"]))
        assert abs(temp - step["teacher_temp"]) < 1e-7
        student = np.asarray(step["student"], np.float32).reshape(v * b, k)
        teacher = np.asarray(step["teacher"], np.float32).reshape(2 * b, k)
        per_example, _ = dino_loss(student, teacher, center, ref["student_temp"], temp, v)
        assert abs(float(tf.reduce_mean(per_example)) - step["loss"]) < LOSS_TOL, step["epoch"]
        center = m * center + (1 - m) * teacher.mean(axis=0)   # the method's update
        np.testing.assert_allclose(center, step["center_after"], atol=CENTER_TOL)


@pytest.mark.parametrize("case", [0, 1], ids=["norm_last_layer", "trained_scale"])
def test_head_equals_the_reference_head(case):
    ref = json.load(open(DATA))["heads"][case]
    w = ref["weights"]
    head = dino_head(6, out_dim=7, hidden_dim=10, bottleneck_dim=4, num_layers=3,
                     norm_last_layer=ref["norm_last_layer"])
    for i in range(3):
        head.get_layer(f"dense{i + 1}").set_weights(
            [np.asarray(w[f"linear{i}_weight"]).T, np.asarray(w[f"linear{i}_bias"])])
    last = head.get_layer("last_layer")
    values = [np.asarray(w["last_v"]).T]
    if not ref["norm_last_layer"]:
        values.append(np.asarray(w["last_g"]))
    last.set_weights(values)
    assert len(last.trainable_variables) == (1 if ref["norm_last_layer"] else 2)
    y = head(np.asarray(ref["x"], np.float32))
    # float32 through 4 small layers against float64: ~1e-6 relative.
    np.testing.assert_allclose(y, ref["y"], rtol=1e-5, atol=1e-5)


def test_teacher_temperature_schedule():
    got = [float(teacher_temperature(e, 0.04, 0.07, 4)) for e in range(6)]
    np.testing.assert_allclose(got, [0.04, 0.05, 0.06, 0.07, 0.07, 0.07], atol=1e-7)
    assert float(teacher_temperature(0, 0.04, 0.07, 0)) == pytest.approx(0.07)
    # np.linspace(a, b, 1) == [a]: one warm-up epoch at the warm-up temperature.
    assert [float(teacher_temperature(e, 0.04, 0.07, 1)) for e in (0, 1)] == pytest.approx(
        [0.04, 0.07])


def _mlp_dino(freeze=0, steps_per_epoch=1, total_steps=3, **kw):
    keras.utils.set_random_seed(4)
    encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="enc")])
    head = dino_head(8, out_dim=10, hidden_dim=8, bottleneck_dim=4, num_layers=2)
    model = DINOMethod(encoder, head, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                       warmup_teacher_temp_epochs=0, base_momentum=0.5, final_momentum=1.0,
                       center_momentum=0.9, freeze_last_layer=freeze, **kw)
    return model


def _batches(n, b=4, seed=0):
    rng = np.random.default_rng(seed)
    return [{"view1": rng.normal(size=(b, 6)).astype(np.float32),
             "view2": rng.normal(size=(b, 6)).astype(np.float32)} for _ in range(n)]


def test_teacher_moving_average_and_center_over_three_steps_by_hand():
    model = _mlp_dino(total_steps=3)
    model.compile(optimizer=keras.optimizers.SGD(0.5), run_eagerly=True)
    teacher = [v.numpy() for v in model.frozen_variables()]
    student_vars = [s for _, s in model.online_pairs()]
    assert len(teacher) == len(student_vars) == 2 + 4 + 1   # enc, 2 Dense, last layer
    np.testing.assert_array_equal(teacher[0], student_vars[0].numpy())  # a copy at start
    center = np.zeros(10, np.float32)
    for step, batch in enumerate(_batches(3)):
        # No BatchNorm: a forward has no side effect, so it gives the step's teacher.
        t_out = model.forward(batch, training=True)["teacher"].numpy()
        model.train_step(batch)
        tau = 1 - (1 - 0.5) * (math.cos(math.pi * step / 3) + 1) / 2   # BYOL's cosine
        teacher = [tau * t + (1 - tau) * s.numpy() for t, s in zip(teacher, student_vars)]
        center = 0.9 * center + 0.1 * t_out.mean(axis=0)
        for want, got in zip(teacher, model.frozen_variables()):
            np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
        np.testing.assert_allclose(model.center.center.numpy(), center, atol=1e-6)
    assert float(np.max(np.abs(model.frozen_variables()[0].numpy()
                               - student_vars[0].numpy()))) > 1e-3


def test_last_layer_frozen_for_its_epochs_even_under_weight_decay():
    model = _mlp_dino(freeze=1, steps_per_epoch=2, total_steps=4)
    model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9, weight_decay=0.1),
                  run_eagerly=True)
    last = model.last_layer()
    start = last.kernel.numpy().copy()
    other = model.head.get_layer("dense1").kernel.numpy().copy()
    ds = tf.data.Dataset.from_tensor_slices(
        {k: np.stack([b[k] for b in _batches(4)]) for k in ("view1", "view2")})
    model.fit(ds.take(2), epochs=1, verbose=0)
    np.testing.assert_array_equal(last.kernel.numpy(), start)    # epoch 1: untouched
    assert np.max(np.abs(model.head.get_layer("dense1").kernel.numpy() - other)) > 1e-4
    model.fit(ds.skip(2), epochs=1, verbose=0)
    assert np.max(np.abs(last.kernel.numpy() - start)) > 1e-4    # epoch 2: trained



def multi_crop_batch(seed, b, n, side=8, local_side=4):
    """A batch of 2 global crops [b, side, side, 3] and n local crops [b, n, local_side,
    local_side, 3], uniform in [0, 1) from ``seed``."""
    rng = np.random.default_rng(seed)
    return {"view1": rng.random((b, side, side, 3), np.float32),
            "view2": rng.random((b, side, side, 3), np.float32),
            "local_views": rng.random((b, n, local_side, local_side, 3), np.float32)}

def test_multi_crop_batch_through_the_student_crop_major():
    """Global crops through the encoder as one batch, local crops of another size as
    another, the head on all: the student's rows are view 1, view 2, then each local crop
    (the order the loss's pairs assume); the teacher sees the global crops only."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    encoder = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    model = DINOMethod(encoder, dino_head(4, out_dim=6, hidden_dim=8, bottleneck_dim=3),
                       warmup_teacher_temp_epochs=0)
    b, n = 3, 2
    batch = multi_crop_batch(0, b, n)
    out = model.forward(batch, training=False)
    assert out["student"].shape == ((2 + n) * b, 6) and out["crops"] == 2 + n
    assert out["teacher"].shape == (2 * b, 6)
    crops = [batch["view1"], batch["view2"]] + [batch["local_views"][:, j] for j in range(n)]
    for j, crop in enumerate(crops):
        want = model.head(encoder(crop))
        np.testing.assert_allclose(out["student"][j * b:(j + 1) * b], want, atol=1e-6)
    np.testing.assert_allclose(out["h1"], encoder(batch["view1"]), atol=1e-6)
    per_example, _ = dino_loss(out["student"], out["teacher"], np.zeros(6, np.float32), 0.1,
                               0.07, 2 + n)
    assert per_example.shape == (b,)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    logs = {k: float(v) for k, v in model.train_step(batch).items()}
    assert set(logs) == {"loss", "teacher_entropy", "teacher_temp"}
    assert logs["teacher_temp"] == pytest.approx(0.07)
    assert 0 < logs["teacher_entropy"] < math.log(6) + 1e-6


def test_multi_crop_step_on_a_vit_with_smaller_local_crops():
    """DINO's 2 global + N local crops of another side on a ViT (its positions resampled to
    the local crops' grid in the call): the local rows are the student on the 4 px crops,
    the teacher a copy of the 8 px ViT, and a step moves the student (loss by hand)."""
    from dualssl_tf.models import vit

    keras.utils.set_random_seed(3)
    encoder = vit.vit("vit_tiny", image_size=8, patch_size=2, depth=1, width=8, heads=2)
    model = DINOMethod(encoder, dino_head(8, out_dim=6, hidden_dim=8, bottleneck_dim=3),
                       warmup_teacher_temp_epochs=0, freeze_last_layer=0)
    b, n = 2, 2
    batch = multi_crop_batch(1, b, n)
    out = model.forward(batch, training=True)
    assert out["student"].shape == ((2 + n) * b, 6)
    for j in range(n):
        want = model.head(encoder(batch["local_views"][:, j]))
        np.testing.assert_allclose(out["student"][(2 + j) * b:(3 + j) * b], want, atol=1e-6)
    want_loss = _hand_loss(out["student"].numpy().astype(np.float64).reshape(2 + n, b, 6),
                           out["teacher"].numpy().astype(np.float64).reshape(2, b, 6),
                           np.zeros(6), 0.1, 0.07)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    before = encoder.get_layer("tokens").pos_embed.numpy()
    logs = {k: float(v) for k, v in model.train_step(batch).items()}
    assert logs["loss"] == pytest.approx(want_loss, abs=LOSS_TOL)
    assert np.abs(encoder.get_layer("tokens").pos_embed.numpy() - before).max() > 1e-6


def test_last_layer_is_weight_normalised():
    layer = DINOLastLayer(5, norm_last_layer=True)
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    y = layer(x).numpy()
    v = layer.kernel.numpy()
    want = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (v / np.linalg.norm(v, axis=0))
    np.testing.assert_allclose(y, want, atol=1e-6)
    assert np.all(np.abs(y) <= 1 + 1e-6)   # cosines
