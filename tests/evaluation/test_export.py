"""SavedModel export: outputs, endpoints, reload (in-process, fresh process, TFSMLayer),
fine-tunability, model card, atomicity, and load errors."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import dualssl_tf
from dualssl_tf.evaluation import export

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = (8, 8, 3)


def tiny_image_encoder(seed=0):
    """Conv -> BN -> ReLU -> GAP: a functional encoder with BatchNorm (so inference and
    training mode differ) and a named intermediate block."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same", name="block1")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, h, name="enc")


def tiny_head():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="proj")],
                            name="head")


def _images(n=6, seed=1):
    return np.random.default_rng(seed).uniform(size=(n, *SHAPE)).astype(np.float32)


def _nontrivial_bn(encoder):
    # Moving statistics far from the (0, 1) init, so inference != training mode.
    bn = encoder.get_layer("bn")
    bn.moving_mean.assign(np.full([4], 0.3, np.float32))
    bn.moving_variance.assign(np.full([4], 4.0, np.float32))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    enc, head = tiny_image_encoder(), tiny_head()
    _nontrivial_bn(enc)
    path = str(tmp_path_factory.mktemp("exp") / "saved_model")
    card = export.export_encoder(enc, head, path, SHAPE,
                                 model_card={"dataset": "toy", "epochs": np.int64(3),
                                             "final_metrics": {"loss": np.float32(0.5)}},
                                 intermediate_layers={"block1": "block1"})
    return enc, head, path, card


@pytest.mark.gpu
def test_outputs_match_in_memory_model(exported):
    enc, head, path, _ = exported
    x = _images()
    loaded = export.load_encoder(path)
    out = loaded.module.signatures["serving_default"](x=tf.constant(x))
    rep = enc(x, training=False).numpy()
    np.testing.assert_allclose(out["representation"].numpy(), rep, atol=1e-6)
    np.testing.assert_allclose(out["projection"].numpy(), head(rep).numpy(), atol=1e-6)
    block = enc.get_layer("block1")
    np.testing.assert_allclose(out["block1"].numpy(), block(x).numpy(), atol=1e-6)
    assert sorted(out) == ["block1", "projection", "representation"]
    assert loaded.input_shape == SHAPE


@pytest.mark.gpu
def test_train_mode_uses_batch_statistics(exported):
    enc, _, path, _ = exported
    x = _images()
    loaded = export.load_encoder(path)
    # Train-mode BN normalises by the batch: compute it by hand from the block output.
    pre = enc.get_layer("block1")(x).numpy()
    mean, var = pre.mean(axis=(0, 1, 2)), pre.var(axis=(0, 1, 2))
    bn = enc.get_layer("bn")
    normed = (pre - mean) / np.sqrt(var + bn.epsilon) * bn.gamma.numpy() + bn.beta.numpy()
    expected = np.maximum(normed, 0).mean(axis=(1, 2))
    train_out = loaded.module.train_mode(tf.constant(x))["representation"].numpy()
    np.testing.assert_allclose(train_out, expected, atol=1e-5)
    serve_out = loaded.module.serve(tf.constant(x))["representation"].numpy()
    assert np.abs(serve_out - train_out).max() > 1e-2


@pytest.mark.gpu
def test_fresh_process_reload_matches(exported, tmp_path):
    enc, head, path, _ = exported
    x = _images(5, seed=7)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "out = m.signatures['serving_default'](x=tf.constant(np.load(sys.argv[2])))\n"
        "np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-c", script, path, str(tmp_path / "x.npy"),
                    str(tmp_path / "out.npz")], check=True, env=env, capture_output=True)
    out = np.load(tmp_path / "out.npz")
    rep = enc(x, training=False).numpy()
    np.testing.assert_allclose(out["representation"], rep, atol=1e-6)
    np.testing.assert_allclose(out["projection"], head(rep).numpy(), atol=1e-6)


@pytest.mark.gpu
def test_tfsm_layer_in_new_keras_model(exported):
    enc, _, path, _ = exported
    layer = keras.layers.TFSMLayer(path, call_endpoint="serve",
                                   call_training_endpoint="train_mode", trainable=True)
    inp = keras.Input(SHAPE)
    logits = keras.layers.Dense(2, name="cls")(layer(inp)["representation"])
    model = keras.Model(inp, logits)
    x = _images()
    cls = model.get_layer("cls")
    expected = enc(x, training=False).numpy() @ cls.kernel.numpy() + cls.bias.numpy()
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-5)
    # Conv kernel + bias, BN gamma + beta, head kernel + bias; moving stats not trainable.
    assert len(layer.trainable_weights) == 6
    assert len(layer.non_trainable_weights) == 2


@pytest.mark.gpu
def test_variables_are_trainable_and_get_gradients(exported):
    _, _, path, _ = exported
    loaded = export.load_encoder(path)
    variables = loaded.trainable_variables
    assert len(variables) == 6
    x = tf.constant(_images())
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(loaded(x, training=True)["projection"] ** 2)
    grads = tape.gradient(loss, variables)
    assert all(g is not None for g in grads)
    # Finite-difference check on the head bias (the loss is quadratic in it).
    bias = [v for v in variables if "proj/bias" in v.name][0]
    g = grads[[id(v) for v in variables].index(id(bias))].numpy()
    eps = 1e-2
    old = bias.numpy()
    bias.assign(old + np.array([eps, 0, 0], np.float32))
    up = tf.reduce_sum(loaded(x, training=True)["projection"] ** 2).numpy()
    bias.assign(old - np.array([eps, 0, 0], np.float32))
    down = tf.reduce_sum(loaded(x, training=True)["projection"] ** 2).numpy()
    bias.assign(old)
    np.testing.assert_allclose(g[0], (up - down) / (2 * eps), rtol=1e-3)


def test_model_card(exported):
    _, _, path, card = exported
    with open(os.path.join(path, export.MODEL_CARD)) as f:
        on_disk = json.load(f)
    assert on_disk == card
    assert on_disk["dualssl_tf_version"] == dualssl_tf.__version__
    assert on_disk["dataset"] == "toy" and on_disk["epochs"] == 3
    assert on_disk["final_metrics"]["loss"] == pytest.approx(0.5)
    assert on_disk["input_shape"] == [8, 8, 3]
    assert on_disk["outputs"] == {"representation": [None, 4], "projection": [None, 3],
                                  "block1": [None, 8, 8, 4]}


def test_vector_input_without_head_and_callable_intermediates(tmp_path):
    """HLTM-like export: [None, 32] input, subclassed-style taps through a callable."""
    keras.utils.set_random_seed(0)
    l1 = keras.layers.Dense(6, activation="relu", name="l1")
    l2 = keras.layers.Dense(3, name="l2")
    enc = keras.Sequential([keras.Input((32,)), l1, l2])
    path = str(tmp_path / "sm")
    export.export_encoder(enc, None, path, (32,),
                          intermediate_layers=lambda x, training: {"depth-1": l1(x)})
    loaded = export.load_encoder(path)
    x = np.random.default_rng(0).integers(0, 2, (4, 32)).astype(np.float32)
    out = loaded(x)
    np.testing.assert_allclose(out["representation"].numpy(), enc(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(out["projection"].numpy(), enc(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(out["depth_1"].numpy(), l1(x).numpy(), atol=1e-6)
    assert loaded.input_shape == (32,)


def _export_small(path, seed, card=None):
    keras.utils.set_random_seed(seed)
    enc = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    export.export_encoder(enc, None, path, (5,), model_card=card)
    return enc


def test_interrupted_export_keeps_previous_and_reexport_overwrites(tmp_path, monkeypatch):
    path = str(tmp_path / "sm")
    x = np.ones([1, 5], np.float32)
    first = _export_small(path, seed=1, card={"run": 1})
    before = sorted(os.listdir(path))

    real_save = tf.saved_model.save

    def broken_save(obj, export_dir, *args, **kwargs):
        real_save(obj, export_dir, *args, **kwargs)      # files half-way there ...
        os.remove(os.path.join(export_dir, "saved_model.pb"))
        raise KeyboardInterrupt("killed mid-write")       # ... then the process dies

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        _export_small(path, seed=2, card={"run": 2})
    monkeypatch.setattr(tf.saved_model, "save", real_save)

    assert os.listdir(tmp_path) == ["sm"]                 # no temporary dirs left behind
    assert sorted(os.listdir(path)) == before
    loaded = export.load_encoder(path)
    assert loaded.model_card["run"] == 1
    np.testing.assert_allclose(loaded(x)["representation"].numpy(), first(x).numpy(),
                               atol=1e-6)

    second = _export_small(path, seed=3, card={"run": 3})
    loaded = export.load_encoder(path)
    assert loaded.model_card["run"] == 3
    np.testing.assert_allclose(loaded(x)["representation"].numpy(), second(x).numpy(),
                               atol=1e-6)
    assert np.abs(first(x).numpy() - second(x).numpy()).max() > 1e-3
    assert os.listdir(tmp_path) == ["sm"]


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="no such directory") as e:
        export.load_encoder(str(tmp_path / "missing"))
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a SavedModel") as e:
        export.load_encoder(str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(e.value)

    # A SavedModel without serving_default.
    module = tf.Module()
    module.v = tf.Variable(1.0)
    module.f = tf.function(lambda x: x * module.v,
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "nosig"), signatures={})
    with pytest.raises(ValueError, match="no 'serving_default' signature") as e:
        export.load_encoder(str(tmp_path / "nosig"))
    assert "\n" not in str(e.value)


def test_bad_arguments(tmp_path):
    enc = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="input_shape"):
        export.export_encoder(enc, None, str(tmp_path / "a"), ())
    with pytest.raises(ValueError, match="not a functional model|has no layer"):
        export.export_encoder(enc, None, str(tmp_path / "a"), (5,),
                              intermediate_layers=["nope"])
    assert not os.path.exists(tmp_path / "a")


def test_default_intermediates_picks_last_block_of_each_stage():
    inp = keras.Input((8, 8, 3))
    h = inp
    for stage in (1, 2):
        for block in (0, 1):
            h = keras.layers.Conv2D(2, 3, padding="same", name=f"layer{stage}_{block}_conv")(h)
            h = keras.layers.ReLU(name=f"layer{stage}_{block}_out")(h)
    enc = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h))
    assert export.default_intermediates(enc) == {"layer1": "layer1_1_out",
                                                 "layer2": "layer2_1_out"}
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert export.default_intermediates(plain) is None


def test_checkpoint_keys_follow_object_paths(exported):
    """Variables are filed under encoder/... and head/... (what analysis.runs reads back)."""
    enc, head, path, _ = exported
    keys = [k for k, _ in tf.train.list_variables(os.path.join(path, "variables",
                                                               "variables"))
            if k.endswith("/.ATTRIBUTES/VARIABLE_VALUE")]
    assert len(keys) == len(enc.weights) + len(head.weights)
    assert sum(k.startswith("encoder/") for k in keys) == len(enc.weights)
    assert sum(k.startswith("head/") for k in keys) == len(head.weights)


def test_export_of_networks_built_under_a_mirrored_strategy(tmp_path):
    """A multi-replica run's networks hold distributed variables (SyncBN included); the
    export at the end of its training must save them (a concrete function traced outside
    the strategy cannot be saved: the signatures are the tf.functions themselves)."""
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        inp = keras.Input((6, 6, 3))
        h = keras.layers.Conv2D(4, 3, kernel_initializer=keras.initializers.GlorotUniform(1))(inp)
        h = keras.layers.BatchNormalization(synchronized=True)(h)
        enc = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h))
    x = np.random.default_rng(0).uniform(size=(3, 6, 6, 3)).astype(np.float32)
    export.export_encoder(enc, None, tmp_path / "sm", (6, 6, 3))
    loaded = export.load_encoder(str(tmp_path / "sm"))
    np.testing.assert_allclose(loaded(x)["representation"].numpy(),
                               enc(x, training=False).numpy(), rtol=1e-6, atol=1e-6)
