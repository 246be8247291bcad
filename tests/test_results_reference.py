"""benchmarks/results.py --reference=torch without torch: a Python that cannot import torch
is one line naming the flag and exit 2 with nothing written; a cell's recipe is the
config's typed flags; and the TensorFlow-side glue on a tiny grid: the views written for
the reference are the batches train.py fits on (to float16 rounding), the probe images are
linear_eval.py's, and the reference's features are scored by our own probes. A stand-in
for reference_torch.py writes the features, so no test imports torch."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "benchmarks", "results.py")
# tests/test_results_harness.py's tiny recipe: 64 examples of 3 classes, 2 steps of 16.
TINY = ["--width_multiplier=0.0625", "--proj_hidden_dim=16", "--proj_dim=8", "--batch_size=16",
        "--generated_examples=64", "--generated_classes=3", "--steps_per_epoch=2",
        "--steps_per_execution=1"]


def _load():
    spec = importlib.util.spec_from_file_location("results_reference", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_python_without_torch_is_one_line_and_exit_2(tmp_path):
    # A Python without site-packages: whatever this one has, torch cannot import there.
    fake = tmp_path / "python-without-torch"
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    fake.chmod(0o755)
    work, out = tmp_path / "work", tmp_path / "docs" / "results.md"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, HARNESS, "--reference=torch",
                           f"--torch_python={fake}", f"--work_dir={work}", f"--out={out}"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"results.py: error: --reference: torch does not import in "
                     f"--torch_python={fake}; pip install -e '.[bench]' there, or pass "
                     "--torch_python=a Python that has torch, or drop --reference"], lines
    assert not work.exists() and not out.parent.exists()


@pytest.fixture
def harness():
    from absl import flags
    module = _load()
    module.define_flags()
    yield module
    flags.FLAGS.unparse_flags()


def test_cell_config_is_the_configs_typed_flags(harness):
    harness.FLAGS(["results.py", "--extra_flags=--batch_size=32,--noprobe"])
    cfg = harness.cell_config("generated_images", "byol", 2).flags()
    # configs/generated_images_byol.cfg, then the harness' own flags after it.
    assert (cfg["method"], cfg["byol_pred_lr_mult"], cfg["byol_base_momentum"]) == \
        ("byol", 10.0, 0.99)
    assert (cfg["seed"], cfg["epochs"], cfg["batch_size"], cfg["probe"]) == (2, 4, 32, False)
    cfg = harness.cell_config("generated_images", "simclr", 1).flags()
    assert (cfg["method"], cfg["loss"], cfg["temperature"]) == ("contrastive", "ntxent", 0.5)


FAKE_REFERENCE = '''
import json, os, sys
import numpy as np
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
probe = np.load(os.path.join(args["data"], "probe.npz"))
views = np.load(os.path.join(args["data"], "views.npy"))
# Features: each image's mean colour and its first 9 pixel values, [N, 12].
feats = {s: np.concatenate([probe[s + "_x"].mean((1, 2)),
                            probe[s + "_x"].reshape(len(probe[s + "_x"]), -1)[:, :9]], 1)
         for s in ("train", "test")}
np.savez(os.path.join(args["out"], "features.npz"), **feats)
with open(os.path.join(args["out"], "reference.json"), "w") as f:
    json.dump({"args": args, "views_shape": list(views.shape)}, f)
'''


def test_reference_cell_trains_on_our_batches_and_uses_our_probes(harness, tmp_path):
    (tmp_path / "fake_reference.py").write_text(FAKE_REFERENCE)
    fake = tmp_path / "python-with-torch"
    fake.write_text(f'#!/bin/sh\n[ "$1" = -c ] && exit 0\nshift\n'
                    f'exec "{sys.executable}" "{tmp_path / "fake_reference.py"}" "$@"\n')
    fake.chmod(0o755)
    harness.FLAGS(["results.py", "--methods=simclr", "--reference=torch", "--epochs=1",
                   f"--torch_python={fake}", "--extra_flags=" + ",".join(TINY),
                   f"--work_dir={tmp_path / 'work'}"])
    harness.check_flags()
    path = tmp_path / "work" / "generated_images" / "simclr-torch_e1_s1.json"
    result = harness.run_reference_cell("generated_images", "simclr-torch", 1, str(path))

    from dualssl_tf import tasks
    from dualssl_tf.evaluation import knn, linear
    cfg = harness.cell_config("generated_images", "simclr", 1)
    data = tmp_path / "work" / "generated_images" / "torch_data_s1"
    views = np.load(data / "views.npy")
    assert views.shape == (2, 2, 16, 16, 16, 3) and views.dtype == np.float16
    batches = list(tasks.build(cfg.replace(model_dir="")).make_data(16).take(2))
    for i, batch in enumerate(batches):
        for v in (0, 1):
            # float16 keeps 11 significant bits: |error| <= 2^-12 for values in [0, 1].
            np.testing.assert_allclose(views[i, v], batch[f"view{v + 1}"].numpy(), rtol=0,
                                       atol=2.0 ** -12)
    probe = np.load(data / "probe.npz")
    train_ds, test_ds, _ = tasks.eval_data(cfg, 256)
    for split, ds in (("train", train_ds), ("test", test_ds)):
        x, y = (np.concatenate(a) for a in zip(*[(x.numpy(), y.numpy()) for x, y in ds]))
        np.testing.assert_array_equal(probe[f"{split}_x"], x)
        np.testing.assert_array_equal(probe[f"{split}_y"], y)
    assert len(probe["train_y"]) == 64 and len(probe["test_y"]) == 16

    cell = path.parent / "simclr-torch_e1_s1"
    log = json.loads((cell / "reference.json").read_text())
    assert log["args"]["method"] == "simclr" and log["args"]["threads"] == "1"
    recipe = json.loads((cell / "recipe.json").read_text())
    assert (recipe["steps_per_epoch"], recipe["total_steps"]) == (2, 2)
    assert recipe["flags"]["width_multiplier"] == 0.0625 and recipe["flags"]["seed"] == 1
    feats = np.load(cell / "features.npz")
    xtr, xte, ytr, yte = feats["train"], feats["test"], probe["train_y"], probe["test_y"]
    lin = linear.linear_probe(xtr, ytr, xte, yte, 3)
    nn = knn.knn_probe(xtr, ytr, xte, yte, 3, k=[20, 200])
    assert result["linear"] == lin["top1"]
    assert (result["knn@20"], result["knn@200"]) == (nn["top1@20"], nn["top1@200"])
    assert result["knn_k_used@200"] == 64 and result["method"] == "simclr-torch"
    # A second cell of the seed reuses the written data.
    stamp = (data / "views.npy").stat().st_mtime_ns
    harness.run_reference_cell("generated_images", "simclr-torch", 1, str(path))
    assert (data / "views.npy").stat().st_mtime_ns == stamp
    row, = harness.rows([result], ["generated_images"], harness.table_methods())
    assert harness.label(row) == "SimCLR (NT-Xent), PyTorch reference"
