"""``--mixed_precision=bfloat16 --jit_compile`` on the image networks (issue 15, part 3).

ResNet-18 (ResNet-50 in one slow test) with the projection head and the online probe,
under Keras' ``mixed_bfloat16`` policy and an XLA-compiled train step, for every loss of
``methods.contrastive.LOSSES`` and for BYOL and SimSiam: the step runs, the loss is finite,
the losses are computed in float32, and the first step's loss equals the float32 step's to
a bfloat16 tolerance.

The tolerance. bfloat16 keeps 8 significand bits: one rounding is off by at most
``u = 2**-8 = 0.39%`` (relative). The networks round every layer's output (BatchNorm's
moments and the losses are float32), so over the ~20 layers of a ResNet-18 the
representation moves by about ``sqrt(20) u = 1.7%`` at random and the loss, a smooth
function of normalised embeddings, by a fraction of that (measured: 0.1-0.5% on these
networks). ``REL_TOL = 5 u ~ 2e-2`` bounds the first-step loss; later steps are not
compared (the updates differ by the rounded gradients, and the runs drift apart).

Tiny networks keep the CPU run short: 16 px images, width 1/16 (4..32 channels), batch 8.
Marked ``gpu``: ``benchmarks/accelerator_check.sh`` runs them on the real device
(``pytest -m gpu``); they stay in the default CPU run too.
"""

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

U_BF16 = 2.0 ** -8
REL_TOL = 5 * U_BF16   # ~2e-2, see the module docstring
SIZE, BATCH, CLASSES = 16, 8, 4


@pytest.fixture
def policy():
    """Sets a Keras dtype policy for the test; float32 again afterwards (it is global). Op
    determinism, which Keras refuses with XLA and an earlier test may have turned on, is
    off meanwhile."""
    import keras
    from tensorflow.python.framework import config as tf_config
    was = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")
    if was:
        tf_config.enable_op_determinism()


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"view1": rng.random((BATCH, SIZE, SIZE, 3)).astype(np.float32),
            "view2": rng.random((BATCH, SIZE, SIZE, 3)).astype(np.float32),
            "label": rng.integers(0, CLASSES, BATCH).astype(np.int32)}


def _model(precision, method="contrastive", loss="ntxent", depth=18, jit=False, nets=None,
           eager=False):
    """The method on a tiny ResNet (+ head + probe) built under ``precision`` ("float32" or
    "mixed_bfloat16"), same seed so both precisions start from the same weights."""
    import keras
    from dualssl_tf.methods.byol import BYOLMethod, SimSiamMethod
    from dualssl_tf.methods.contrastive import ContrastiveMethod
    from dualssl_tf.models import heads, resnet
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    if nets is None:
        enc = resnet.resnet(depth, image_size=SIZE, stem="cifar", width_multiplier=1 / 16)
        head = heads.projection_head(enc.output_shape[-1], 16, 8)
        probe = heads.LinearProbe(CLASSES, name="probe")
        probe.build((None, enc.output_shape[-1]))
    else:
        enc, head, probe = nets
    if method == "contrastive":
        model = ContrastiveMethod(enc, head, loss=loss, temperature=0.5, margin=0.1,
                                  probe=probe)
    elif method == "byol":
        model = BYOLMethod(enc, head, pred_hidden_dim=16, total_steps=10, probe=probe)
    else:
        model = SimSiamMethod(enc, head, pred_hidden_dim=16, probe=probe)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=jit,
                  run_eagerly=eager)
    return model


def _fit_losses(model, steps=2):
    """Per-step losses and probe losses of ``steps`` steps (one step per epoch: the epoch's
    logged loss is that step's)."""
    import tensorflow as tf
    hist = model.fit(tf.data.Dataset.from_tensors(_batch()).repeat(), epochs=steps,
                     steps_per_epoch=1, verbose=0).history
    return hist["loss"], hist["probe_loss"]


def _check_dtypes(model):
    """Networks compute in bfloat16, variables and the losses are float32."""
    import tensorflow as tf
    batch = {k: tf.constant(v) for k, v in _batch().items()}
    outputs = model.forward(batch, training=False)
    assert outputs["h1"].dtype == tf.bfloat16
    per_example, logs = model.per_example_loss(batch, outputs)
    assert per_example.dtype == tf.float32
    assert all(v.dtype == tf.float32 for v in logs.values())
    loss, _ = model.replica_loss(batch, outputs)
    assert loss.dtype == tf.float32
    assert all(v.dtype == tf.float32 for v in model.variables)
    assert model.probe(outputs["h1"]).dtype == tf.bfloat16   # logits cast before the loss


# (method, XLA): each XLA compile of a tiny ResNet-18 step costs 30-80 s on 2 shared cores,
# so the default run fits every method's bfloat16 step eagerly (same ops, no compile; XLA
# with bfloat16 is compiled there by test_every_contrastive_loss_in_bfloat16_under_xla), and
# the XLA fits run with -m slow / -m gpu.
FIT_CASES = [("contrastive", False), ("byol", False), ("simsiam", False),
             pytest.param("contrastive", True, marks=pytest.mark.slow),
             pytest.param("byol", True, marks=pytest.mark.slow),
             pytest.param("simsiam", True, marks=pytest.mark.slow)]

@pytest.mark.parametrize("method,jit", FIT_CASES)
def test_bfloat16_fit_matches_float32(policy, method, jit):
    """model.fit in bfloat16 (an XLA step with ``jit``): finite, float32 losses, first step
    = float32's to REL_TOL, the probe trains, every variable moves and stays float32."""
    ref_loss, ref_probe = _fit_losses(_model("float32", method, eager=True), steps=1)
    model = _model("mixed_bfloat16", method, jit=jit, eager=not jit)
    assert model.jit_compile is jit
    before = [v.numpy() for v in model.trainable_variables]
    losses, probe_losses = _fit_losses(model)
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(probe_losses))
    assert abs(losses[0] - ref_loss[0]) <= REL_TOL * abs(ref_loss[0]), (losses, ref_loss)
    # The probe's first loss: its logits come from the bfloat16 representation through a
    # standardising BatchNorm over 8 examples, so a looser (but still bf16-sized) bound.
    assert abs(probe_losses[0] - ref_probe[0]) <= 0.1 * abs(ref_probe[0])
    moved = [np.max(np.abs(v.numpy() - b)) for v, b in zip(model.trainable_variables, before)]
    assert min(moved) > 0 or method == "byol"   # BYOL's target moves only by its average
    probe_vars = {id(v) for v in model.probe.trainable_variables}
    assert all(np.max(np.abs(v.numpy() - b)) > 0 for v, b in
               zip(model.trainable_variables, before) if id(v) in probe_vars)
    _check_dtypes(model)


def test_every_contrastive_loss_in_bfloat16_under_xla(policy):
    """Every loss of LOSSES on the same bfloat16 networks, in one XLA program (forward,
    every loss, one backward of their sum): each loss is float32 and equals the float32
    networks' loss to REL_TOL; the gradient is finite and points where float32's does."""
    import tensorflow as tf
    from dualssl_tf.methods.contrastive import LOSSES
    batch = {k: tf.constant(v) for k, v in _batch().items() if k != "label"}

    def losses_and_grads(models):
        with tf.GradientTape() as tape:
            outputs = models[0].forward(batch, training=True)
            values = [m.replica_loss(batch, outputs)[0] for m in models]
            total = tf.add_n(values)
        variables = models[0].method_variables
        return values, tape.gradient(total, variables)

    got, want = {}, {}
    for precision, out in (("float32", want), ("mixed_bfloat16", got)):
        first = _model(precision, loss="ntxent")
        nets = (first.encoder, first.head, first.probe)
        models = [first] + [_model(precision, loss=name, nets=nets)
                            for name in LOSSES if name != "ntxent"]
        fn = tf.function(losses_and_grads, jit_compile=precision != "float32")
        values, grads = fn(models)
        out["values"] = {m.loss_name: v for m, v in zip(models, values)}
        out["grads"] = np.concatenate([g.numpy().ravel() for g in grads])
    assert set(got["values"]) == set(LOSSES)
    for name, value in got["values"].items():
        assert value.dtype == tf.float32, name
        ref = float(want["values"][name])
        assert np.isfinite(float(value)), name
        assert abs(float(value) - ref) <= REL_TOL * max(abs(ref), 1e-3), (name, value, ref)
    g, w = got["grads"], want["grads"]
    assert np.all(np.isfinite(g))
    cos = float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w)))
    # Measured 0.90: the backward pass of a width-4 network through ~20 bfloat16 layers and
    # BatchNorms of 16 examples; a wrong cast or a dropped term gives ~0.
    assert cos > 0.8, cos


@pytest.mark.slow   # XLA compiling a ResNet-50 step takes minutes on 2 shared cores
def test_resnet50_bfloat16_xla_fit_matches_float32(policy):
    ref_loss, _ = _fit_losses(_model("float32", depth=50, eager=True), steps=1)
    model = _model("mixed_bfloat16", depth=50, jit=True)
    losses, probe_losses = _fit_losses(model)
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(probe_losses))
    assert abs(losses[0] - ref_loss[0]) <= REL_TOL * abs(ref_loss[0]), (losses, ref_loss)
    _check_dtypes(model)


# The trainer traces the step (XLA: ~100 s here, without: ~50 s), the probe's and the
# monitors' functions and the export: slow on 2 shared cores, quick on the accelerator check.
@pytest.mark.slow
@pytest.mark.parametrize("jit", [False, True])
def test_trainer_run_with_bfloat16(policy, tmp_path, jit):
    """tools/train.py's path with --mixed_precision=bfloat16 [--jit_compile] on the generated
    images: the run ends, its metrics are finite, the probe reports, and the export serves
    float32."""
    import tensorflow as tf
    from tests import tiny_runs
    result = tiny_runs.train(tmp_path / "run", base=tiny_runs.TINY_IMAGES, epochs=1,
                             mixed_precision="bfloat16", jit_compile=jit)
    final = result["final"]
    for key in ("loss", "probe_loss", "probe_acc", "probe_test_acc", "embed_std"):
        assert np.isfinite(final[key]), (key, final)
    loaded = tf.saved_model.load(str(tmp_path / "run" / "saved_model"))
    out = loaded.signatures["serving_default"](x=tf.zeros([2, SIZE, SIZE, 3]))
    assert out["representation"].dtype == tf.float32
    assert np.all(np.isfinite(out["representation"].numpy()))
