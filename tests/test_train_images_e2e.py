"""tools/train.py on the image path, in a subprocess: bad flags exit 2 with one line; a few
pretraining steps on the generated images write a SavedModel and a probe accuracy."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset=generated_images", "--image_size=16", "--stem=cifar",
        "--width_multiplier=0.0625", "--proj_hidden_dim=16", "--proj_dim=8",
        "--batch_size=16", "--generated_examples=64", "--steps_per_epoch=2", "--epochs=2",
        "--loss=ntxent", "--temperature=0.5", "--optimizer=lars", "--learning_rate=0.5",
        "--lr_schedule=cosine", "--warmup_epochs=1", "--momentum=0.9", "--verbose=2"]


def _run(args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("args,text", [
    (["--dataset=CIFAR-10"], "--dataset: unknown dataset 'CIFAR-10'"),
    (["--dataset=cifar10", "--image_size=0", "--stem=imagenet"],
     "--image_size: 32 px is too small for the imagenet stem"),
    (["--dataset=folder"], "--data_dir: is required with --dataset=folder"),
    (["--optimizer=lars", "--lr_scaling=cubic"], "--lr_scaling: got 'cubic'"),
])
def test_bad_image_flags_exit_2_before_writing(tmp_path, args, text):
    out = tmp_path / "run"
    proc = _run(TINY + args + [f"--model_dir={out}"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_missing_tfds_data_and_empty_folder_exit_2(tmp_path):
    proc = _run(TINY[1:] + ["--dataset=cifar10", "--image_size=32", "--nodownload",
                            f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'r1'}"])
    assert proc.returncode == 2
    assert f"tfds build cifar10 --data_dir={tmp_path}" in proc.stderr.strip().splitlines()[-1]
    (tmp_path / "empty").mkdir()
    proc = _run(TINY[1:] + ["--dataset=folder", f"--data_dir={tmp_path / 'empty'}",
                            f"--model_dir={tmp_path / 'r2'}"])
    assert proc.returncode == 2 and "contains no image files" in proc.stderr
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


@pytest.mark.slow
def test_pretrain_generated_images_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = _run(TINY + [f"--model_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "saved_model" / "saved_model.pb").exists()
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    last = records[-1]
    for key in ("loss", "contrastive_acc", "probe_acc", "probe_test_acc", "embed_std"):
        assert key in last, key
    assert 0.0 <= last["probe_test_acc"] <= 1.0
    assert "probe_test_acc" in proc.stdout  # the end-of-run summary
    flags = (out / "flags.txt").read_text()
    assert "--optimizer=lars" in flags and "--image_size=16" in flags
    meta = json.loads((out / "run.json").read_text())
    assert meta["images"]["num_classes"] == 6 and meta["images"]["image_size"] == 16
    # The export serves the encoder on images of the training size.
    import numpy as np
    import tensorflow as tf
    served = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"](
        tf.zeros([2, 16, 16, 3]))
    assert served["representation"].shape == (2, 32)
    assert served["projection"].shape == (2, 8)
    assert np.all(np.isfinite(served["projection"].numpy()))


def _write_folder(root, classes=3, per_class=8, seed=0):
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            img = (rng.uniform(0, 60, (16, 16, 3)) + 80 * c).astype(np.uint8)
            tf.io.write_file(str(root / f"c{c}" / f"{i}.png"), tf.io.encode_png(img))


@pytest.mark.slow
def test_folder_holdout_train_then_linear_eval(tmp_path):
    """train.py --holdout_fraction on a folder, then linear_eval.py on the export: the test
    split is the recorded held-out files; another folder gets its own features."""
    _write_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    proc = _run(TINY[1:] + ["--dataset=folder", f"--data_dir={tmp_path / 'imgs'}",
                            "--holdout_fraction=0.25", "--batch_size=6", f"--model_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads((out / "saved_model" / "model_card.json").read_text())
    assert card["metadata"]["images"]["holdout"]["num_files"] == 6
    assert "probe_test_acc" in card["final_metrics"]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")

    def linear_eval(*args):
        p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "linear_eval.py"),
                            f"--saved_model={out / 'saved_model'}", "--method=knn",
                            "--knn_k=3", "--verbose=0", *args],
                           capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads((out / "linear_eval.json").read_text())["knn"]

    r = linear_eval()
    assert (r["num_train"], r["num_test"]) == (18, 6)
    # The folder grows: the recorded files stay the test split, the new one is trained on
    # (features extracted anew, not the cached ones of the smaller folder).
    import numpy as np
    import tensorflow as tf
    tf.io.write_file(str(tmp_path / "imgs" / "c1" / "new.png"),
                     tf.io.encode_png(np.full((16, 16, 3), 90, np.uint8)))
    r = linear_eval()
    assert (r["num_train"], r["num_test"]) == (19, 6)
    _write_folder(tmp_path / "other" / "train", per_class=2, seed=1)
    _write_folder(tmp_path / "other" / "val", per_class=1, seed=2)
    r = linear_eval(f"--data_dir={tmp_path / 'other'}")
    assert (r["num_train"], r["num_test"]) == (6, 3)   # not the first folder's cache
