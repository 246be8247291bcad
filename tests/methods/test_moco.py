"""MoCo v2 and v3 (dualssl_tf/methods/moco.py): the losses against solo-learn's own loss code
on fixed inputs (tests/methods/data/moco_reference.json, from
benchmarks/peer_reference_moco.py), their gradients against the float64 formula, the queue
and its pointer after several steps against a hand computation, the key network's moving
average, what the optimizer updates, bfloat16, and a bit-identical resume with the queue."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.methods.moco import MoCoV2Method, MoCoV3Method, batch_infonce, queue_infonce

HERE = os.path.dirname(os.path.abspath(__file__))
REF = json.load(open(os.path.join(HERE, "data", "moco_reference.json")))
IN_DIM = 6


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _encoder(out_dim=16, bn=False, bias=True):
    layers = [keras.Input((IN_DIM,)), keras.layers.Dense(out_dim, use_bias=bias)]
    if bn:
        layers.append(keras.layers.BatchNormalization())
    return keras.Sequential(layers)


def _outputs(inputs):
    return {k: tf.math.l2_normalize(tf.constant(inputs[k], tf.float32), -1)
            for k in ("q1", "q2", "k1", "k2")}


@pytest.mark.parametrize("name", ["mocov2", "mocov2_symmetric", "mocov3"])
def test_losses_equal_solo_learn(name):
    """The method's loss (per_example_loss, the queue read from the model's variable) on
    the reference inputs equals solo-learn's, computed in float64 from the same inputs.

    Tolerance: our float32 logits reach 1/tau = 5 and are each rounded to 2^-24 relative;
    a logsumexp of at most 33 of them, the normalisation and the mean over 8 queries add a
    few ulp: ~1e-6 absolute (solo-learn's own float32 run differs from its float64 by
    1e-7). 1e-5 keeps a 10x margin while the wrong queue (view 1's keys for view 2's
    query) or a missing 2 tau factor moves the loss by more than 1e-2 (checked below)."""
    inputs = REF["inputs"]
    queue = np.asarray(inputs["queue"], np.float32)
    want = REF["float64"][name]
    if name == "mocov3":
        model = MoCoV3Method(_encoder(), pred_hidden_dim=4)
    else:
        symmetric = name == "mocov2_symmetric"
        model = MoCoV2Method(_encoder(), queue_size=queue.shape[1], symmetric=symmetric)
        model.queue.assign(queue if symmetric else queue[:1])
    loss, logs = model.per_example_loss({}, _outputs(inputs))
    assert loss.dtype == tf.float32 and loss.shape == (8,)
    assert float(tf.reduce_mean(loss)) == pytest.approx(want, abs=1e-5)
    assert 0 <= float(logs["contrastive_acc"]) <= 1
    if name == "mocov2_symmetric":  # swapped queues: a visibly different loss
        model.queue.assign(queue[::-1])
        assert abs(float(tf.reduce_mean(model.per_example_loss({}, _outputs(inputs))[0]))
                   - want) > 1e-2
    if name == "mocov2":
        assert abs(REF["float64"]["mocov2_symmetric"] - want) > 1e-2


def _queue_grad64(q, k, queue, tau):
    """d mean(l) / d q of MoCo's InfoNCE by hand, float64: (softmax(logits) @ C - k) / tau
    / B with C = [k; queue] per row."""
    out = []
    for qi, ki in zip(q, k):
        cands = np.concatenate([ki[None], queue])              # [1 + K, D]
        logits = cands @ qi / tau
        p = np.exp(logits - logits.max())
        p /= p.sum()
        out.append((p @ cands - ki) / tau)
    return np.array(out) / len(q)


def _batch_grad64(q, k, tau):
    """MoCo v3's d mean(l) / d q by hand, float64: 2 tau (softmax(q K^T / tau) K - k_i) /
    tau / B = 2 (p_i K - k_i) / B."""
    logits = q @ k.T / tau
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return 2.0 * (p @ k - k) / len(q)


def test_loss_gradients_equal_float64_formula():
    """Gradients of both losses with respect to the (unit) queries equal the closed form
    in float64 to 1e-5 relative to their size (float32 softmax and matmuls of unit
    vectors: a few ulp of 1/tau per entry)."""
    inputs, tau = REF["inputs"], REF["temperature"]
    q, k = _unit(inputs["q1"]), _unit(inputs["k2"])
    queue = _unit(inputs["queue"][0])
    qv = tf.Variable(q.astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        l2, _ = queue_infonce(qv, tf.constant(k, tf.float32), tf.constant(queue, tf.float32),
                              tau)
        l3, _ = batch_infonce(qv, tf.constant(k, tf.float32), 0, tau)
        m2, m3 = tf.reduce_mean(l2), tf.reduce_mean(l3)
    for got, want in ((tape.gradient(m2, qv), _queue_grad64(q, k, queue, tau)),
                      (tape.gradient(m3, qv), _batch_grad64(q, k, tau))):
        scale = np.abs(want).max()
        assert scale > 1e-2
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5 * scale * 10)


def _fixed_run(model, batches):
    """Fits ``model`` on ``batches`` (one step each, lr 0: the networks stay put so the
    keys are computable by hand) and returns the logged loss of every step."""
    model.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    losses = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(float(logs["loss"]))

    data = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    model.fit(tf.data.Dataset.from_tensor_slices(data), epochs=1, steps_per_epoch=len(batches),
              verbose=0, callbacks=[Record()])
    return losses


@pytest.mark.parametrize("symmetric", [False, True])
def test_queue_and_pointer_after_five_steps_equal_hand_computation(symmetric):
    """K = 12, batches of 4: after 5 steps the pointer is 20 mod 12 = 8, rows 0-3 hold step
    3's keys, rows 4-7 step 4's, rows 8-11 step 2's (view 2's keys in queue 0 without
    ``symmetric``; view v's keys in queue v-1 with it). Each step's loss is computed against
    the queue as it was before that step's keys went in (keys enqueued after the loss)."""
    keras.utils.set_random_seed(3)
    encoder = _encoder(out_dim=5, bias=False)
    kernel = encoder.layers[0].kernel.numpy().astype(np.float64)
    model = MoCoV2Method(encoder, queue_size=12, symmetric=symmetric, temperature=0.5)
    start = model.queue.numpy().astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(start, axis=-1), 1.0, rtol=1e-6)
    rng = np.random.default_rng(0)
    batches = [{v: rng.normal(size=(4, IN_DIM)).astype(np.float32) for v in ("view1", "view2")}
               for _ in range(5)]
    logged = _fixed_run(model, batches)
    queue, want_losses = start.copy(), []
    for step, b in enumerate(batches):
        z = {v: _unit(b[v].astype(np.float64) @ kernel) for v in ("view1", "view2")}
        terms = [(z["view1"], z["view2"], queue[-1])]
        if symmetric:
            terms.append((z["view2"], z["view1"], queue[0]))
        loss = []
        for q, k, negs in terms:
            logits = np.concatenate([(q * k).sum(1, keepdims=True), q @ negs.T], 1) / 0.5
            loss.append(np.log(np.exp(logits).sum(1)) - logits[:, 0])
        want_losses.append(float(np.mean(loss)))
        rows = slice((4 * step) % 12, (4 * step) % 12 + 4)
        if symmetric:
            queue[0, rows], queue[1, rows] = z["view1"], z["view2"]
        else:
            queue[0, rows] = z["view2"]
    assert int(model.queue_ptr.numpy()) == 8
    np.testing.assert_allclose(model.queue.numpy(), queue, atol=2e-6)
    assert np.abs(queue - start).min() > 0 or np.abs(model.queue.numpy() - start).max() > 0.1
    # Keras averages the logged loss over the epoch's steps so far.
    running = np.cumsum(want_losses) / np.arange(1, 6)
    np.testing.assert_allclose(logged, running, rtol=1e-5)


def test_key_network_moves_by_the_moving_average_and_takes_no_gradient():
    """MoCo v3: the optimizer updates the query encoder and the predictor only; after one
    step the key encoder is tau k0 + (1 - tau) online1 with the cosine schedule's tau."""
    keras.utils.set_random_seed(1)
    model = MoCoV3Method(_encoder(bn=True), pred_hidden_dim=8, base_momentum=0.9,
                         final_momentum=1.0, total_steps=4)
    ids = {id(v) for v in model.method_variables}
    assert all(id(v) in ids for v in model.encoder.trainable_variables)
    assert all(id(v) in ids for v in model.predictor.trainable_variables)
    assert not any(id(v) in ids for v in model.key_encoder.variables)
    key0 = [v.numpy() for v in model.key_encoder.trainable_variables]
    rng = np.random.default_rng(1)
    batch = {v: rng.normal(size=(1, 8, IN_DIM)).astype(np.float32) for v in ("view1", "view2")}
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(tf.data.Dataset.from_tensor_slices(batch), epochs=1, verbose=0)
    tau = 0.9  # step 0 of 4: final - (final - base) (cos 0 + 1) / 2 = base
    for k0, online, key in zip(key0, model.encoder.trainable_variables,
                               model.key_encoder.trainable_variables):
        np.testing.assert_allclose(key.numpy(), tau * k0 + (1 - tau) * online.numpy(),
                                   rtol=1e-6, atol=1e-7)
    assert max(float(np.abs(o.numpy() - k).max())
               for o, k in zip(model.encoder.trainable_variables, key0)) > 1e-3


def test_queue_not_a_multiple_of_the_global_batch_is_refused():
    model = MoCoV2Method(_encoder(), queue_size=10)
    model.compile(optimizer="sgd")
    batch = {v: np.zeros((1, 4, IN_DIM), np.float32) for v in ("view1", "view2")}
    with pytest.raises(ValueError, match="queue_size=10 is not a multiple of the global "
                                         "batch 4"):
        model.fit(tf.data.Dataset.from_tensor_slices(batch), epochs=1, verbose=0)


# MoCo v2's case slow: the default suite's time budget (v3's covers the float32 losses).
@pytest.mark.parametrize("cls", [pytest.param(MoCoV2Method, marks=pytest.mark.slow),
                                 MoCoV3Method])
def test_bfloat16_fit_keeps_the_losses_in_float32_and_learns(cls):
    """Under mixed_bfloat16 the networks run in bfloat16, queries/keys and the loss in
    float32; every step's loss is that of float32 within the rounding bound, and 6 Adam
    steps lower it (MoCo v3; MoCo v2 once its queue holds real keys). The bound: each of
    the 2-3 rounding layers moves a unit embedding by <= 2^-8, so a cosine moves by <= 2 eps
    with eps = sqrt(3) 2^-8 = 0.0068, a logit by 2 eps / tau, and the loss (a cross-entropy
    of logits, 1-Lipschitz in the max norm per logit pair; x 2 tau x 2 terms for v3) by
    2 x 2 eps / tau = 0.14 for v2 at tau 0.2 (0.11 for v3)."""
    # Fresh examples every step (a repeated batch would put MoCo v2's positives in its own
    # queue), the second view a slightly perturbed first.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 16, IN_DIM)).astype(np.float32)
    batch = {"view1": x, "view2": x + 0.1 * rng.normal(size=x.shape).astype(np.float32)}
    kw = dict(queue_size=32) if cls is MoCoV2Method else dict(pred_hidden_dim=16)
    results = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(4)
            encoder = keras.Sequential([keras.Input((IN_DIM,)), keras.layers.Dense(32),
                                        keras.layers.ReLU(), keras.layers.Dense(16)])
            model = cls(encoder, **kw)
            out = model.forward({k: v[0] for k, v in batch.items()}, training=True)
            assert all(out[k].dtype == tf.float32 for k in ("q1", "k2"))
            model.compile(optimizer=keras.optimizers.Adam(1e-2))
            losses = []

            class Record(keras.callbacks.Callback):
                def on_train_batch_end(self, b, logs=None):
                    losses.append(float(logs["loss"]) * (b + 1) - sum(losses))

            model.fit(tf.data.Dataset.from_tensor_slices(batch), epochs=1, verbose=0,
                      callbacks=[Record()])
            results[policy] = losses
        finally:
            keras.mixed_precision.set_global_policy("float32")
    bf16, f32 = results["mixed_bfloat16"], results["float32"]
    assert np.all(np.isfinite(bf16)) and len(bf16) == 6
    bound = 0.14 if cls is MoCoV2Method else 0.11
    # Every step within the one-step bound: the runs' weights part only by the rounding of
    # their gradients (measured here: 3e-3 at most over the 6 steps).
    assert np.max(np.abs(np.subtract(bf16, f32))) < bound, (bf16, f32)
    if cls is MoCoV3Method:
        assert bf16[-1] < bf16[0] - 0.5, bf16
    else:
        # MoCo v2's first step meets a queue of random keys (easy negatives: 0.29); from
        # the second on the queue holds real keys and the loss rises, then falls as the
        # network spreads them (measured 1.58 at step 3, 1.37 at step 6).
        assert bf16[0] < 0.5 and bf16[-1] < max(bf16[1:3]) - 0.1, bf16


def test_mocov2_resume_is_bit_identical_with_the_queue(tmp_path):
    """A MoCo v2 run (tiny HLTM, 3 steps of 16 an epoch, queue 64: it wraps within the run)
    resumed from its epoch-1 checkpoint equals the uninterrupted run bit for bit: metrics,
    networks, the key network, the queue and its pointer."""
    from tests.tiny_runs import check_resume
    tensors = check_resume(tmp_path, method="mocov2", mocov2_queue_size=64,
                           mocov2_symmetric=True, mocov2_base_momentum=0.9)
    queue = [v for v in tensors.values() if v.ndim == 3 and v.shape[:2] == (2, 64)]
    ptr = [v for v in tensors.values() if v.dtype == np.int64 and v.shape == ()]
    assert len(queue) == 1 and 6 * 16 % 64 == 32 and 32 in [int(p) for p in ptr]
    np.testing.assert_allclose(np.linalg.norm(queue[0], axis=-1), 1.0, rtol=1e-5)
