"""The ViT encoders (dualssl_tf.models.vit): parameter counts against timm's, a forward
against a NumPy re-implementation, position-embedding resampling against timm's and by
hand, cloning, and training / export / linear_eval through the package's own paths."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.evaluation import export
from dualssl_tf.models import flops, stems, vit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# benchmarks/vit_reference.py (timm 1.0.31, torch 2.14): parameter counts and resampled
# position embeddings.
with open(os.path.join(os.path.dirname(__file__), "data", "vit_reference.json")) as f:
    REFERENCE = json.load(f)


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


@pytest.mark.parametrize("size,patch,image", [
    ("vit_tiny", 4, 32), ("vit_tiny", 16, 224),
    pytest.param("vit_small", 4, 32, marks=pytest.mark.slow),
    pytest.param("vit_small", 16, 224, marks=pytest.mark.slow),
    pytest.param("vit_base", 4, 32, marks=pytest.mark.slow),
    pytest.param("vit_base", 16, 224, marks=pytest.mark.slow)])
def test_parameter_count_equals_timm(size, patch, image):
    model = vit.vit(size, image_size=image, patch_size=patch)
    assert _trainable(model) == REFERENCE["params"][f"{size}_p{patch}_s{image}"]
    assert model.count_params() == _trainable(model)          # no non-trainable state
    assert model.output_shape == (None, vit.SIZES[size][1])


def test_default_patch_sizes_and_refusals():
    assert [stems.default_patch_size(s) for s in (16, 32, 64, 96, 128, 224)] == [
        4, 4, 8, 8, 16, 16]
    assert stems.patch_size_problem(32, 0) is None
    assert stems.patch_size_problem(30, 0) == ("4 (the default) does not divide the 30 px "
                                               "image size; use a divisor of it (2, 3, 5, 6)")
    assert stems.patch_size_problem(32, 5).startswith("5 does not divide the 32 px")
    with pytest.raises(ValueError, match="patch_size=5 does not divide image_size=32"):
        vit.vit("vit_tiny", image_size=32, patch_size=5)
    assert vit.vit("vit_tiny", 64, depth=1, width=8, heads=2).get_layer(
        "patch_embed").kernel.shape == (8, 8, 3, 8)            # default patch 8 at 64 px


# -- a forward against NumPy ---------------------------------------------------------------

def _layer_norm(x, g, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _numpy_vit(model, x, patch, heads):
    """The model's forward in float64 from its weights: patchify, [CLS] + positions, each
    pre-norm block (timm's Attention and Mlp), final LayerNorm, [CLS] token."""
    w = {v.path: np.asarray(v.numpy(), np.float64) for v in model.weights}
    b, s, _, c = x.shape
    g = s // patch
    # Conv with kernel = stride = patch == a matmul on each patch's (row, col, channel).
    p = x.reshape(b, g, patch, g, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
    t = p @ w["patch_embed/kernel"].reshape(-1, w["patch_embed/kernel"].shape[-1])
    t = t + w["patch_embed/bias"]
    dim = t.shape[-1]
    t = np.concatenate([np.broadcast_to(w["tokens/cls_token"], (b, 1, dim)), t], 1)
    t = t + w["tokens/pos_embed"]
    n = t.shape[1]
    for i in range(sum(1 for k in w if k.endswith("_attn/qkv/kernel"))):
        k = f"block{i}"
        y = _layer_norm(t, w[f"{k}_norm1/gamma"], w[f"{k}_norm1/beta"])
        qkv = (y @ w[f"{k}_attn/qkv/kernel"] + w[f"{k}_attn/qkv/bias"])
        qkv = qkv.reshape(b, n, 3, heads, dim // heads).transpose(2, 0, 3, 1, 4)
        q, kk, v = qkv                                            # [B, H, T, d]
        a = _softmax(q @ kk.transpose(0, 1, 3, 2) / math.sqrt(dim // heads))
        y = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, dim)
        t = t + y @ w[f"{k}_attn/proj/kernel"] + w[f"{k}_attn/proj/bias"]
        y = _layer_norm(t, w[f"{k}_norm2/gamma"], w[f"{k}_norm2/beta"])
        y = _gelu(y @ w[f"{k}_fc1/kernel"] + w[f"{k}_fc1/bias"])
        t = t + y @ w[f"{k}_fc2/kernel"] + w[f"{k}_fc2/bias"]
    t = _layer_norm(t, w["norm/gamma"], w["norm/beta"])
    return t[:, 0], t[:, 1:].mean(1)


def _randomised(model, seed=0):
    # Every weight away from its init (LayerNorm gains and biases included), so a swapped or
    # unused variable shows.
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign((rng.standard_normal(v.shape) * 0.3 + (1.0 if "gamma" in v.path else 0.0))
                 .astype(np.float32))
    return model


def test_block_forward_matches_numpy():
    model = _randomised(vit.vit("vit_tiny", image_size=8, patch_size=4, depth=1, width=8,
                                heads=2))
    x = np.random.default_rng(1).uniform(size=(3, 8, 8, 3)).astype(np.float32)
    want_cls, want_mean = _numpy_vit(model, x.astype(np.float64), 4, 2)
    got = model(x, training=False).numpy()
    # float32 kernels against float64: a few ulps of values of order 1 through 2 LayerNorms.
    np.testing.assert_allclose(got, want_cls, rtol=0, atol=2e-5)
    tap = keras.Model(model.inputs, vit.patch_mean(model))
    np.testing.assert_allclose(tap(x).numpy(), want_mean, rtol=0, atol=2e-5)


# -- position embeddings ---------------------------------------------------------------------

def test_resize_matrix_identity_and_by_hand():
    np.testing.assert_array_equal(vit.resize_matrix(5, 5), np.eye(5))
    # 2 -> 4, output 0: centre 0.25 in input pixels, taps at distances 0.25 and 1.25 of
    # Keys' cubic (a = -0.5): 0.8671875 and -0.0703125, normalised by their sum 0.796875.
    r = vit.resize_matrix(2, 4)
    np.testing.assert_allclose(r[0], [0.8671875 / 0.796875, -0.0703125 / 0.796875],
                               rtol=1e-15)
    np.testing.assert_allclose(r, [r[0], r[1], r[1][::-1], r[0][::-1]], rtol=1e-15)
    np.testing.assert_allclose(r.sum(1), 1.0, rtol=1e-15)


def test_position_embeddings_exact_at_same_size_and_resampled_as_timm():
    ref = REFERENCE["resample"]
    grid = ref["grid"]
    pos = np.asarray(ref["pos_embed"], np.float32)
    layer = vit.ClassTokenPositions(grid)
    layer.build((None, grid * grid, pos.shape[-1]))
    layer.pos_embed.assign(pos)
    assert layer.positions(grid) is layer.pos_embed           # no resampling at all
    for new, want in ref["to"].items():
        got = layer.positions(int(new)).numpy()
        # timm resamples in float64 here; ours in float32 from float32 weights.
        np.testing.assert_allclose(got, np.asarray(want), rtol=0, atol=2e-6)


def test_model_at_another_image_size_takes_the_same_weights():
    # Weights of a ViT made for 16 px (grid 4) in one used at 24 px (grid 6): the same
    # variables, the patch positions resampled, the [CLS] token's kept.
    small = vit.vit("vit_tiny", image_size=16, patch_size=4, depth=1, width=8, heads=2)
    tokens = vit.ClassTokenPositions(4, name="tokens")
    tokens.build((None, 36, 8))
    tokens.set_weights(small.get_layer("tokens").get_weights())
    got = tokens(np.zeros([1, 36, 8], np.float32)).numpy()[0]
    pos = small.get_layer("tokens").pos_embed.numpy()[0]
    r = vit.resize_matrix(4, 6)
    want = np.einsum("ia,jb,abd->ijd", r, r, pos[1:].reshape(4, 4, 8).astype(np.float64))
    np.testing.assert_allclose(got[1:], want.reshape(36, 8), rtol=0, atol=1e-6)
    cls = small.get_layer("tokens").cls_token.numpy()[0, 0]
    np.testing.assert_array_equal(got[0], pos[0] + cls)


def test_built_at_16_called_at_8_equals_a_vit_built_at_8_on_resampled_positions():
    # One model, two sides: at 8 px its 4 x 4 grid of positions is resampled to 2 x 2 in the
    # call (timm's rule, float64 NumPy here), and the result is exactly a ViT built at 8 px
    # holding those positions; at 16 px nothing is resampled.
    big = _randomised(vit.vit("vit_tiny", image_size=16, patch_size=4, depth=1, width=8,
                              heads=2))
    small = vit.vit("vit_tiny", image_size=8, patch_size=4, depth=1, width=8, heads=2)
    tokens = big.get_layer("tokens")
    resampled = tokens.positions(2).numpy()
    pos = tokens.pos_embed.numpy()[0]
    r = vit.resize_matrix(4, 2)
    want = np.einsum("ia,jb,abd->ijd", r, r, pos[1:].reshape(4, 4, 8).astype(np.float64))
    # float32 einsum of 16 terms against float64: a few ulps of values ~0.3.
    np.testing.assert_allclose(resampled[0, 1:], want.reshape(4, 8), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(resampled[0, 0], pos[0])       # [CLS]'s own, as is
    for v_small, v_big in zip(small.weights, big.weights):
        v_small.assign(resampled if v_small.path == "tokens/pos_embed" else v_big.numpy())
    x8 = np.random.default_rng(4).uniform(size=(3, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(big(x8).numpy(), small(x8).numpy())
    assert big.input_shape == (None, 16, 16, 3)                  # what the export signs
    x16 = np.random.default_rng(5).uniform(size=(3, 16, 16, 3)).astype(np.float32)
    want16, _ = _numpy_vit(big, x16.astype(np.float64), 4, 2)   # stored positions as they are
    np.testing.assert_allclose(big(x16).numpy(), want16, rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="takes image sides that 4 divides; got 10 x 10"):
        big(np.zeros([1, 10, 10, 3], np.float32))


def test_xla_traces_once_per_side_and_a_clone_takes_any_side():
    from dualssl_tf.methods.momentum import clone_network

    model = vit.vit("vit_tiny", image_size=16, patch_size=4, depth=1, width=8, heads=2)
    fn = tf.function(lambda x: model(x, training=False), jit_compile=True)
    for side in (16, 8, 16):
        x = tf.random.stateless_uniform([2, side, side, 3], seed=[side, 0])
        # XLA fuses differently from the eager kernels: float32 rounding only.
        np.testing.assert_allclose(fn(x).numpy(), model(x).numpy(), rtol=0, atol=1e-5)
    assert fn.experimental_get_tracing_count() == 2              # 16 and 8 px
    copy = clone_network(model, (16, 16, 3))
    x = tf.random.stateless_uniform([2, 8, 8, 3], seed=[1, 2])
    np.testing.assert_array_equal(copy(x).numpy(), model(x).numpy())


def test_clone_model_and_config_round_trip():
    model = vit.vit("vit_tiny", image_size=8, patch_size=4, depth=2, width=8, heads=2)
    x = np.random.default_rng(2).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    for copy in (keras.models.clone_model(model), keras.Model.from_config(model.get_config())):
        copy.set_weights(model.get_weights())
        np.testing.assert_array_equal(copy(x).numpy(), model(x).numpy())
    assert export.default_intermediates(model) == {"patch_mean": vit.patch_mean}


def test_flops_count_attention():
    model = vit.vit("vit_tiny", image_size=8, patch_size=4, depth=1, width=8, heads=2)
    t, d = 5, 8                                                   # 4 patches + [CLS]
    patch = 2 * 4 * (4 * 4 * 3) * d
    attn = 2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * t * d
    mlp = 2 * t * d * 4 * d * 2
    assert flops.forward_flops(model) == {"total": patch + attn + mlp, "first_conv": patch}


# -- through the trainer, the export and linear_eval -----------------------------------------

# A ViT-T sized down to 2 blocks of width 32 (2 heads) at 16 px, patch 4.
SMALL = (2, 32, 2)


@pytest.fixture()
def small_vit(monkeypatch):
    monkeypatch.setitem(vit.SIZES, "vit_tiny", SMALL)


def _tiny_run(tmp_path, **changes):
    from tests.tiny_runs import TINY_IMAGES, train

    base = TINY_IMAGES.replace(encoder="vit_tiny", epochs=1, steps_per_epoch=2,
                               steps_per_execution=1, checkpoint_every=1)
    return train(tmp_path / "run", base=base, **changes), str(tmp_path / "run")


@pytest.mark.slow   # ~1 min on a shared 2-core CPU (training, export, reload)
def test_simclr_trains_and_exports_cls_and_patch_mean(small_vit, tmp_path):
    result, run_dir = _tiny_run(tmp_path)
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert rows[-1]["epoch"] == 1 and np.isfinite(rows[-1]["loss"])
    assert json.load(open(os.path.join(run_dir, "run.json")))["images"]["patch_size"] == 4
    loaded = export.load_encoder(os.path.join(run_dir, "saved_model"))
    assert {"representation", "projection", "patch_mean"} <= set(loaded.output_keys)
    # The export signs the side the ViT was built for, though the model takes others.
    serving = tf.saved_model.load(os.path.join(run_dir, "saved_model")).signatures[
        "serving_default"]
    assert serving.structured_input_signature[1]["x"].shape.as_list() == [None, 16, 16, 3]
    x = np.random.default_rng(3).uniform(size=(4, 16, 16, 3)).astype(np.float32)
    out = {k: v.numpy() for k, v in loaded(x, training=False).items()}
    assert out["representation"].shape == out["patch_mean"].shape == (4, SMALL[1])
    # The export's two outputs come from one forward pass of the encoder: the [CLS] token
    # and the patch-token mean of the same final LayerNorm output; checked against the
    # NumPy forward of an encoder rebuilt from the flags, with the export's weights.
    from dualssl_tf import config, tasks
    cfg = config.from_flag_strings(config.read_flagfile(os.path.join(run_dir, "flags.txt")))
    encoder = tasks.build(cfg).encoder
    tf.train.Checkpoint(encoder=encoder).read(
        os.path.join(run_dir, "saved_model", "variables", "variables")).expect_partial()
    want_cls, want_mean = _numpy_vit(encoder, x.astype(np.float64), 4, SMALL[2])
    # float32 through 2 blocks against float64.
    np.testing.assert_allclose(out["representation"], want_cls, rtol=0, atol=5e-5)
    np.testing.assert_allclose(out["patch_mean"], want_mean, rtol=0, atol=5e-5)
    assert np.abs(out["representation"] - out["patch_mean"]).max() > 0.1


@pytest.mark.slow
def test_byol_clones_the_vit_and_trains(small_vit, tmp_path):
    _, run_dir = _tiny_run(tmp_path, method="byol", loss="nce", temperature=0.1,
                           byol_pred_hidden_dim=16)
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert np.isfinite(rows[-1]["loss"]) and "pred_cos" in rows[-1]
    loaded = export.load_encoder(os.path.join(run_dir, "saved_model"))
    assert {"representation", "patch_mean", "prediction"} <= set(loaded.output_keys)


@pytest.mark.slow
def test_linear_eval_runs_unchanged_on_a_vit_export(small_vit, tmp_path):
    _, run_dir = _tiny_run(tmp_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    for output in ("representation", "patch_mean"):
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tools", "linear_eval.py"),
             f"--saved_model={run_dir}/saved_model", "--num_train=64", "--num_test=32",
             "--method=linear,knn", f"--output={output}", "--verbose=0",
             f"--output_dir={tmp_path}/{output}"],
            capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        with open(tmp_path / output / "linear_eval.json") as f:
            results = json.load(f)
        assert 0.0 <= results["linear"]["top1"] <= 1.0
        assert results["knn"]["num_train"] == results["linear"]["num_train"] > 0
        assert results["knn"]["num_test"] == results["linear"]["num_test"] > 0


def test_mixed_bfloat16_forward_stays_close(small_vit):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        low = vit.vit("vit_tiny", image_size=16, patch_size=4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    full = vit.vit("vit_tiny", image_size=16, patch_size=4)
    full.set_weights(low.get_weights())
    x = tf.random.stateless_uniform([4, 16, 16, 3], seed=[0, 1])
    a, b = low(x).numpy().astype(np.float32), full(x).numpy()
    assert low(x).dtype == "bfloat16"
    # bfloat16 keeps 8 bits of mantissa: ~0.4% per rounding, a few through 2 blocks.
    np.testing.assert_allclose(a, b, rtol=0, atol=0.1 * np.abs(b).max())


def test_analysis_notes_what_holds_for_a_vit():
    from dualssl_tf import config
    from dualssl_tf.analysis import report

    resnet = config.TrainConfig(dataset="generated_images")
    assert report.encoder_note(resnet) is None
    logged = [{"epoch": 0, "op_w_norm": {"a": 1.0}, "op_grad_cos": {"a": 0.5}}]
    assert "note" not in report.monitor_report("RUN", resnet, logged)
    vit_cfg = config.TrainConfig(dataset="cifar10", encoder="vit_small")
    note = report.monitor_report("RUN", vit_cfg, [])["note"]
    assert note.startswith("for a ViT, Theorem 3") and "\n" not in note
    assert note.endswith("only the collapse figure is drawn")


@pytest.mark.slow
def test_two_mirrored_replicas_equal_one_device(tmp_path):
    # tests/distribute_worker.py vit: 2 SGD steps (lr 0.5) of SimCLR, BYOL and DINO (4 px
    # local crops of the 8 px ViT, clipping and the weight-decay cosine) on a tiny ViT on 2
    # logical CPU devices vs one device on the same global batches.
    out = tmp_path / "vit2.json"
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "distribute_worker.py"),
                           "vit", "2", str(out)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["replicas"] == 2 and set(result["cases"]) == {"simclr", "byol", "dino"}
    for name, got in result["cases"].items():
        assert got["moved"] > 1e-3, (name, got)
        # float32 sums in another order over 2 replicas: a few ulps of how far the two
        # steps moved the weights (measured: SimCLR 9.6e-7, weights ~0.5; BYOL 4.3e-6
        # after moving 19.7 at lr 0.5). What is logged is the global batch's (measured
        # 1.2e-7 and 2.4e-7).
        assert got["diff"] < 2e-6 * max(1.0, got["moved"]), (name, got)
        assert got["logs_diff"] < 1e-6, (name, got)
