"""``--mixed_precision=bfloat16 --jit_compile`` on the image networks (issue 15, part 3;
portable tolerances: issue 25).

ResNet-18 (ResNet-50 in one slow test) with the projection head and the online probe,
under Keras' ``mixed_bfloat16`` policy and an XLA-compiled train step, for every loss of
``methods.contrastive.LOSSES`` and for BYOL and SimSiam. What the mixed-precision design
promises, and what is asserted: variables and losses are float32, every value is finite,
the step moves every trainable variable, training lowers the loss, the first step's
numbers agree with the float32 networks' to bfloat16 precision, and the gradient points
where float32's does.

The tolerances, from bfloat16's precision (not from one machine's output). bfloat16 keeps
8 significand bits: one rounding is off by at most ``u = 2**-8`` (relative). How a kernel
rounds differs by machine: an AVX-512 CPU with native bf16 (oneDNN, on by default there),
an AVX2 CPU (Eigen, which widens to float32 and rounds once per op), GPUs and TPUs
accumulate in float32 but round at other places. What holds on all of them is a bound on
rounding per layer: the ``DEPTH ~ 21`` rounding layers between an image and an embedding
(17 convolutions of ResNet-18, 2 of the head, 2 of BYOL/SimSiam's predictor) move a unit
embedding by ``eps <= sqrt(DEPTH) u ~ 1.8%`` at random (each layer's rounding is
independent). Then:

* a cosine of two embeddings, and a distance ``r = 1 - cos`` of unit embeddings, is off by
  at most ``2 eps`` in absolute terms (one ``eps`` per argument): ``ABS_COS``. It is an
  absolute bound because a cosine near 0 (SimSiam's prediction at initialisation: -0.13)
  is a sum of products that cancel: its relative error is unbounded, its absolute one is
  not;
* a loss ``L(r)`` of distances is off by at most ``ABS_COS * sum_i |dL/dr_i|`` (first
  order; the gradient of the float32 loss). For InfoNCE / NT-Xent / soft triplet this is a
  relative error of a few ``u``; for the losses with cancellation (``L_simp = r+ - r-``,
  the exact-covariance ``w+ r+ - sum w r-``) it is the size of their parts, not of their
  difference (``simp``: 0.0092 from parts of 0.67);
* BYOL's and SimSiam's losses are affine in the prediction cosine ``pred_cos`` (``4 - 4
  pred_cos``, ``-pred_cos``): ``pred_cos`` is compared within ``ABS_COS`` and the loss must
  equal its affine function of the logged ``pred_cos`` to float32 rounding (the loss is
  computed in float32 from the cosines).

Measured first-step differences (eager fits; ``eps`` is then 0.3-1%, so the bounds leave
a 3-10x margin), on an AMD EPYC with AVX-512 + native bf16, oneDNN on (its default there):
``pred_cos`` 0.0057, ``pos_cos`` 0.0053-0.0092, ``r_pos``/``r_neg`` <= 0.0053, NT-Xent
0.3%; under XLA, L_simp 0.0011 absolute (12% of its value: a relative bound fails there),
L_cov 0.0010 (2.5%), gradient cosine 0.907. With Eigen's kernels
(``TF_ENABLE_ONEDNN_OPTS=0``, what AVX2 machines run in-process) on the same machine:
``pred_cos`` 0.0010, ``pos_cos`` 0.0048-0.0058, the same XLA figures (XLA compiles for the
host CPU whatever oneDNN does). The AVX2 machines the suite was first written on: NT-Xent
0.1-0.5%, gradient cosine 0.90.

Tiny networks keep the CPU run short: 16 px images, width 1/16 (4..32 channels), batch 8.
Marked ``gpu``: ``benchmarks/accelerator_check.sh`` runs them on the real device
(``pytest -m gpu``); they stay in the default CPU run too.
"""

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

U_BF16 = 2.0 ** -8
DEPTH = 21                                # rounding layers image -> embedding (docstring)
EPS_EMBED = np.sqrt(DEPTH) * U_BF16       # ~1.8%: relative error of an embedding
ABS_COS = 2 * EPS_EMBED                   # ~0.036: absolute error of a cosine / distance
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


def _fit_logs(model, steps=2):
    """The logs of ``steps`` steps on one fixed batch, ``{name: [value per step]}`` (one
    step per epoch: the epoch's logged value is that step's)."""
    import tensorflow as tf
    return model.fit(tf.data.Dataset.from_tensors(_batch()).repeat(), epochs=steps,
                     steps_per_epoch=1, verbose=0).history


# The methods' losses as affine functions of the logged prediction cosine ``pred_cos``
# (losses.byol_loss: (2 - 2cos) + (2 - 2cos); losses.simsiam_loss: -(cos + cos) / 2).
LOSS_OF_PRED_COS = {"byol": lambda c: 4.0 - 4.0 * c, "simsiam": lambda c: -c}
NTXENT_TEMPERATURE = 0.5   # _model's


def _assert_first_step_agrees(method, got, want, abs_cos=ABS_COS):
    """The first step's logs of the bfloat16 model (``got``) against the float32 model's
    (``want``), with the bounds of the module docstring (``abs_cos``: ABS_COS of the
    network's depth)."""
    first = {k: v[0] for k, v in got.items()}
    ref = {k: v[0] for k, v in want.items()}
    for name in ("pos_cos", "pred_cos", "r_pos", "r_neg"):   # cosines and distances
        if name in ref:
            assert abs(first[name] - ref[name]) <= abs_cos, (name, first[name], ref[name])
    if method == "contrastive":
        # NT-Xent per anchor is lse(-r/tau) + r+/tau: its gradient in the distances has
        # L1 norm 2 (1 - p+) / tau <= 2 / tau (softmax weights sum to 1).
        bound = 2.0 / NTXENT_TEMPERATURE * abs_cos
        assert abs(first["loss"] - ref["loss"]) <= bound, (first["loss"], ref["loss"])
    else:
        # The loss is computed in float32 from the cosines: it equals its affine function of
        # pred_cos to float32 rounding (8 ulps of the loss's scale, 4).
        for logs in (got, want):
            np.testing.assert_allclose(logs["loss"][0],
                                       LOSS_OF_PRED_COS[method](logs["pred_cos"][0]),
                                       rtol=0, atol=8 * 4 * 2.0 ** -24)


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
    """model.fit in bfloat16 (an XLA step with ``jit``): finite, float32 losses, the first
    step's cosines, distances and loss = float32's within the bfloat16 bounds, training
    lowers the loss, the probe trains, every variable moves and stays float32."""
    want = _fit_logs(_model("float32", method, eager=True), steps=1)
    model = _model("mixed_bfloat16", method, jit=jit, eager=not jit)
    assert model.jit_compile is jit
    before = [v.numpy() for v in model.trainable_variables]
    got = _fit_logs(model)
    for name, values in got.items():
        assert np.all(np.isfinite(values)), (name, values)
    _assert_first_step_agrees(method, got, want)
    # Training lowers the loss: the second step's, on the same batch, is lower (float32
    # and bfloat16 alike; measured drops 2.86 -> 2.54 (NT-Xent) and 0.138 -> 0.059
    # (SimSiam), several times the bounds above). Not for BYOL: its loss is against a
    # target that moves by the moving average (its float32 loss rises at step 2 too).
    if method != "byol":
        assert got["loss"][1] < got["loss"][0], got["loss"]
    # The probe's first loss: its logits come from the bfloat16 representation through a
    # standardising BatchNorm over 8 examples, so a looser (but still bf16-sized) bound
    # (measured 0.9-1.7%).
    assert abs(got["probe_loss"][0] - want["probe_loss"][0]) <= 0.1 * abs(want["probe_loss"][0])
    moved = [np.max(np.abs(v.numpy() - b)) for v, b in zip(model.trainable_variables, before)]
    assert min(moved) > 0 or method == "byol"   # BYOL's target moves only by its average
    probe_vars = {id(v) for v in model.probe.trainable_variables}
    assert all(np.max(np.abs(v.numpy() - b)) > 0 for v, b in
               zip(model.trainable_variables, before) if id(v) in probe_vars)
    _check_dtypes(model)


def _distance_sensitivity(model, outputs):
    """``sum_i |dL/dr_i|``: the L1 norm of the float32 loss's gradient in the distances
    ``r_pos [A]``, ``r_neg [A, H]`` of ``outputs`` (first order: a change of every distance
    by at most ``d`` changes the loss by at most ``d`` times this). The exact-covariance
    loss's stopped weights are constants here; their own rounding enters multiplied by
    ``r+ - r-`` (~0.01 at these networks), well inside the bound's margin."""
    import tensorflow as tf
    r_pos, r_neg = model.distances(outputs)
    with tf.GradientTape() as tape:
        tape.watch([r_pos, r_neg])
        loss = tf.reduce_mean(model._get_loss_fn(outputs["z1"].shape[-1])(r_pos, r_neg))
    return float(sum(tf.reduce_sum(tf.abs(g)) for g in tape.gradient(loss, [r_pos, r_neg])))


def test_every_contrastive_loss_in_bfloat16_under_xla(policy):
    """Every loss of LOSSES on the same bfloat16 networks, in one XLA program (forward,
    every loss, one backward of their sum): each loss is float32, its mean distances are
    float32's within ABS_COS and its value within ABS_COS times its sensitivity to the
    distances (module docstring: L_simp is compared on its parts, not its difference); the
    gradient is finite and points where float32's does."""
    import tensorflow as tf
    from dualssl_tf.methods.contrastive import LOSSES
    batch = {k: tf.constant(v) for k, v in _batch().items() if k != "label"}

    def losses_and_grads(models):
        with tf.GradientTape() as tape:
            outputs = models[0].forward(batch, training=True)
            results = [m.replica_loss(batch, outputs) for m in models]
            total = tf.add_n([value for value, _ in results])
        variables = models[0].method_variables
        return results, tape.gradient(total, variables), outputs

    got, want = {}, {}
    for precision, out in (("float32", want), ("mixed_bfloat16", got)):
        first = _model(precision, loss="ntxent")
        nets = (first.encoder, first.head, first.probe)
        models = [first] + [_model(precision, loss=name, nets=nets)
                            for name in LOSSES if name != "ntxent"]
        fn = tf.function(losses_and_grads, jit_compile=precision != "float32")
        results, grads, outputs = fn(models)
        out["values"] = {m.loss_name: value for m, (value, _) in zip(models, results)}
        out["logs"] = {m.loss_name: logs for m, (_, logs) in zip(models, results)}
        out["grads"] = np.concatenate([g.numpy().ravel() for g in grads])
        if precision == "float32":
            out["sensitivity"] = {m.loss_name: _distance_sensitivity(m, outputs)
                                  for m in models}
    assert set(got["values"]) == set(LOSSES)
    for name, value in got["values"].items():
        assert value.dtype == tf.float32, name
        assert np.isfinite(float(value)), name
        for part in ("r_pos", "r_neg"):
            assert abs(float(got["logs"][name][part]) - float(want["logs"][name][part])) \
                <= ABS_COS, (name, part)
        ref = float(want["values"][name])
        bound = ABS_COS * want["sensitivity"][name]
        assert abs(float(value) - ref) <= bound, (name, float(value), ref, bound)
    # The bound is tight enough to mean something: a dropped term of L_simp (r- ~ 0.66)
    # or of InfoNCE exceeds it (sensitivities 2, ~2 and ~4 at tau = 0.5).
    assert ABS_COS * want["sensitivity"]["simp"] < 0.5 * float(want["logs"]["simp"]["r_neg"])
    g, w = got["grads"], want["grads"]
    assert np.all(np.isfinite(g))
    cos = float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w)))
    # Measured 0.90 (AVX2, Eigen) and 0.907 (AVX-512 with bf16, oneDNN): the backward pass
    # of a width-4 network through ~20 bfloat16 layers and BatchNorms of 16 examples; a
    # wrong cast or a dropped term gives ~0.
    assert cos > 0.8, cos


@pytest.mark.slow   # XLA compiling a ResNet-50 step takes minutes on 2 shared cores
def test_resnet50_bfloat16_xla_fit_matches_float32(policy):
    """As the fit test, on ResNet-50 (its 49 convolutions, 53 rounding layers with the
    head: the bounds scale with sqrt(depth))."""
    want = _fit_logs(_model("float32", depth=50, eager=True), steps=1)
    model = _model("mixed_bfloat16", depth=50, jit=True)
    got = _fit_logs(model)
    for name, values in got.items():
        assert np.all(np.isfinite(values)), (name, values)
    _assert_first_step_agrees("contrastive", got, want, abs_cos=2 * np.sqrt(53) * U_BF16)
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
