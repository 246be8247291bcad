"""tools/export.py and tools/linear_eval.py end to end (subprocesses), and their bad input."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config, tasks
from dualssl_tf.evaluation import export
from dualssl_tf.run import checkpoints, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


def run_tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args],
                          capture_output=True, text=True, env=ENV, timeout=300)


# TensorFlow's C++ start-up lines (printed before logging is configured) are not ours.
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} )")


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if not TF_NOISE.match(l)]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small HLTM run dir as tools/train.py leaves it, with a trainer checkpoint whose
    weights differ from any fresh initialisation."""
    model_dir = str(tmp_path_factory.mktemp("tools") / "run")
    cfg = config.TrainConfig(dataset="hltm", hltm_depth=3, hltm_hid=4, batch_size=32,
                             hltm_samples_per_epoch=256, hltm_eval_samples=64, seed=5,
                             model_dir=model_dir)
    exp = tasks.build(cfg)
    model = trainer.build_model(cfg, exp)
    ckpts = checkpoints.RunCheckpoints(model_dir)   # the trainer's checkpoint layout
    ckpts.attach(model)
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "flags.txt"), "w") as f:
        f.write(config.to_flagfile(cfg))
    with open(os.path.join(model_dir, "run.json"), "w") as f:
        json.dump(exp.metadata, f)
    with open(os.path.join(model_dir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"epoch": 0, "loss": 1.0}) + "\n")
        f.write(json.dumps({"epoch": 2, "loss": 0.5}) + "\n")
        f.write(json.dumps({"epoch": 3, "loss": 0.25}) + "\n")
    ckpts.save(epoch=2)
    ckpts.save(epoch=3)
    return model_dir, exp


@pytest.fixture(scope="module")
def exported(run_dir):
    model_dir, exp = run_dir
    proc = run_tool("export.py", f"--model_dir={model_dir}")
    assert proc.returncode == 0, proc.stderr
    return os.path.join(model_dir, "saved_model")


def test_export_tool_reproduces_checkpoint_weights(run_dir, exported):
    _, exp = run_dir
    loaded = export.load_encoder(exported)
    x = np.random.default_rng(1).integers(0, 2, (16, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded(x)["representation"].numpy(),
                               exp.encoder(x).numpy(), rtol=1e-5, atol=1e-5)
    card = loaded.model_card
    assert card["flags"]["seed"] == 5 and card["dataset"] == "hltm"
    assert card["final_metrics"] == {"epoch": 3, "loss": 0.25}
    assert card["metadata"] == json.loads(json.dumps(exp.metadata))
    assert card["checkpoint"].endswith(os.path.join("checkpoints", "ckpt-3"))
    assert {"depth_1", "depth_2"} <= set(loaded.output_keys)   # TreeNet taps


def test_export_into_a_run_that_is_training_is_refused(run_dir, tmp_path):
    """export.py writes into the run directory only under its lock (run/lock.py): while
    another process (here: this one) holds it, one line naming --model_dir, exit 2, and
    nothing written."""
    from dualssl_tf.run.lock import RunLock
    model_dir, _ = run_dir
    before = sorted(os.listdir(model_dir))
    with RunLock(model_dir):
        proc = run_tool("export.py", f"--model_dir={model_dir}",
                        f"--export_dir={os.path.join(model_dir, 'other_export')}")
        assert_one_line_error(proc, "--model_dir:", "in use by another training run",
                              f"pid {os.getpid()}", "--export_dir")
        assert sorted(os.listdir(model_dir)) == sorted(before + ["run.lock"])
    assert sorted(os.listdir(model_dir)) == before


@pytest.mark.slow
def test_export_of_an_older_checkpoint_cards_its_own_epoch(run_dir, tmp_path):
    model_dir, _ = run_dir
    ckpt = os.path.join(model_dir, checkpoints.CHECKPOINT_DIR, "ckpt-2")
    proc = run_tool("export.py", f"--model_dir={model_dir}", f"--checkpoint={ckpt}",
                    f"--export_dir={tmp_path / 'sm'}")
    assert proc.returncode == 0, proc.stderr
    card = export.load_encoder(str(tmp_path / "sm")).model_card
    assert card["final_metrics"] == {"epoch": 2, "loss": 0.5}
    assert card["checkpoint"].endswith("ckpt-2")


def test_linear_eval_tool_linear_and_knn_share_features(exported, tmp_path):
    # Two k in one pass, the second above the 600 train examples (clipped to 600).
    args = [f"--saved_model={exported}", "--num_train=600", "--num_test=300",
            "--weight_decays=0,1e-2", "--knn_k=20,1000", "--verbose=0",
            f"--output_dir={tmp_path}"]
    proc = run_tool("linear_eval.py", *args, "--method=linear,knn")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "linear_eval.json") as f:
        results = json.load(f)
    for method in ("linear", "knn"):
        r = results[method]
        assert r["dataset"] == "hltm" and r["num_train"] == 600 and r["num_test"] == 300
        assert 0.0 <= r["top1"] <= 1.0 and r["top5"] is None     # binary root latent
    r = results["knn"]
    assert r["ks"] == [20, 1000] and r["clipped"] == [1000]
    assert (r["k@20"], r["k@1000"], r["k"]) == (20, 600, 20) and r["top1"] == r["top1@20"]
    assert 0.0 <= r["top1@1000"] <= 1.0 and r["top5@1000"] is None
    assert f"knn@20: top-1 {r['top1@20']:.4f}" in proc.stdout
    assert (f"knn@1000 (k = 600: all 600 train examples): top-1 {r['top1@1000']:.4f}"
            in proc.stdout)
    assert set(results["linear"]["val_top1"]) == {"0.0", "0.01"}
    cache = os.path.join(os.path.dirname(exported), "feature_cache")
    assert len(os.listdir(cache)) == 2                            # one file per split


@pytest.mark.slow
def test_linear_eval_tool_second_method_reuses_cache(exported, tmp_path):
    args = [f"--saved_model={exported}", "--num_train=600", "--num_test=300",
            "--weight_decays=0,1e-2", "--knn_k=20", "--verbose=0",
            f"--output_dir={tmp_path}"]
    proc = run_tool("linear_eval.py", *args, "--method=linear")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "linear_eval.json") as f:
        results = json.load(f)
    cache = os.path.join(os.path.dirname(exported), "feature_cache")
    n_cached = len(os.listdir(cache))
    # A second method reuses the cached features and keeps the earlier results.
    proc = run_tool("linear_eval.py", *args, "--method=knn", "--knn_k=5")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "linear_eval.json") as f:
        again = json.load(f)
    assert again["linear"] == results["linear"] and again["knn"]["k"] == 5
    assert len(os.listdir(cache)) == n_cached


def test_export_tool_bad_input(run_dir, tmp_path):
    model_dir, _ = run_dir
    assert_one_line_error(run_tool("export.py", f"--model_dir={tmp_path}"),
                          "--model_dir", "flags.txt")
    assert_one_line_error(run_tool("export.py", f"--model_dir={model_dir}",
                                   f"--checkpoint={tmp_path}/nope.weights.h5"),
                          "--checkpoint", "does not exist")
    (tmp_path / "flags.txt").write_text("--dataset=hltm\n--bogus=1\n")
    assert_one_line_error(run_tool("export.py", f"--model_dir={tmp_path}"),
                          "--model_dir", "--bogus")


def test_linear_eval_tool_bad_input_before_tensorflow(tmp_path):
    (tmp_path / "plain").mkdir()
    assert_one_line_error(run_tool("linear_eval.py", f"--saved_model={tmp_path}/plain"),
                          "--saved_model", "not a SavedModel", str(tmp_path / "plain"))
    assert_one_line_error(run_tool("linear_eval.py", f"--saved_model={tmp_path}/none"),
                          "--saved_model", "not a directory")
    assert_one_line_error(run_tool("linear_eval.py", f"--saved_model={tmp_path}/plain",
                                   "--method=svm"), "--method")
    assert_one_line_error(run_tool("linear_eval.py", f"--saved_model={tmp_path}/plain",
                                   "--weight_decays=-1"), "--weight_decays")
    assert_one_line_error(run_tool("linear_eval.py", f"--saved_model={tmp_path}/plain",
                                   "--knn_k=20,0"),
                          "--knn_k: expected one or more integers >= 1 (e.g. 20,200), got 20,0")
    assert_one_line_error(run_tool("linear_eval.py", f"--saved_model={tmp_path}/plain",
                                   "--knn_k=twenty"), "--knn_k: expected one or more integers")


@pytest.mark.slow
def test_linear_eval_tool_bad_input(exported, tmp_path):
    # A SavedModel without serving_default.
    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(tmp_path / "nosig"), signatures={})
    # (--dataset given: without a model card and without it, the tool stops before
    # loading, on the missing dataset.)
    assert_one_line_error(run_tool("linear_eval.py", f"--saved_model={tmp_path}/nosig",
                                   "--dataset=hltm"), "--saved_model", "serving_default")
    # Data whose shape does not match the SavedModel input ([None, 8]).
    x = np.zeros([10, 5], np.float32)
    y = np.arange(10) % 2
    np.savez(tmp_path / "wrong.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    assert_one_line_error(run_tool("linear_eval.py", f"--saved_model={exported}",
                                   f"--dataset=npz:{tmp_path}/wrong.npz"),
                          "--dataset", "(5,)", "(8,)")
    # An empty split.
    x = np.zeros([10, 8], np.float32)
    np.savez(tmp_path / "empty.npz", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0])
    assert_one_line_error(run_tool("linear_eval.py", f"--saved_model={exported}",
                                   f"--dataset=npz:{tmp_path}/empty.npz"),
                          "--dataset", "test split", "empty")
