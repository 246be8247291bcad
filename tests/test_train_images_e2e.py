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
