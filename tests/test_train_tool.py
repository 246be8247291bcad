"""tools/train.py end to end on a small HLTM, and its handling of bad flags."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "train.py")
SMALL = ["--dataset=hltm", "--hltm_depth=3", "--hltm_hid=10", "--hltm_delta_lower=0.8",
         "--batch_size=64", "--hltm_samples_per_epoch=3200", "--hltm_eval_samples=4000",
         "--epochs=3", "--loss=nce", "--temperature=0.1", "--learning_rate=0.1",
         "--steps_per_execution=10", "--verbose=2", "--seed=1"]


def run_tool(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("run") / "hltm")
    proc = run_tool(*SMALL, f"--model_dir={model_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir, proc


def test_run_writes_flags_metrics_and_saved_model(small_run):
    model_dir, proc = small_run
    assert {"checkpoints", "flags.txt", "logs", "metrics.jsonl", "run.json",
            "saved_model"} <= set(os.listdir(model_dir))
    records = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert set(records[0]["best_corr"]) == {"1", "2", "3"}
    for r in records[1:]:
        assert {"loss", "learning_rate", "r_pos", "r_neg", "best_corr"} <= set(r)
        assert r["learning_rate"] == pytest.approx(0.1)
    assert "depth" in proc.stdout and "(root)" in proc.stdout

    tree = json.load(open(os.path.join(model_dir, "run.json")))["hltm"]
    assert tree["depth"] == 3 and len(tree["rho"]) == 3
    loaded = tf.saved_model.load(os.path.join(model_dir, "saved_model"))
    out = loaded.signatures["serving_default"](tf.zeros([2, 8]))
    assert out["representation"].shape == (2, 10)


def test_training_raises_top_depth_correlation(small_run):
    model_dir, _ = small_run
    records = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
    first, last = records[0]["best_corr"], records[-1]["best_corr"]
    assert last["3"] > first["3"] + 0.05, (first, last)
    assert np.isfinite([r["loss"] for r in records[1:]]).all()


def test_flags_txt_is_a_reusable_flagfile(small_run, tmp_path):
    model_dir, _ = small_run
    # Re-using the flagfile with zero epochs validates and rebuilds the same run.
    proc = run_tool(f"--flagfile={os.path.join(model_dir, 'flags.txt')}", "--epochs=0",
                    f"--model_dir={tmp_path / 'again'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.load(open(tmp_path / "again" / "run.json"))
    assert again == json.load(open(os.path.join(model_dir, "run.json")))


@pytest.mark.parametrize("bad,flag", [
    ("--hltm_depth=0", "hltm_depth"),
    ("--hltm_children=1", "hltm_children"),
    ("--hltm_delta_lower=1.5", "hltm_delta_lower"),
    ("--hltm_hid=0", "hltm_hid"),
    ("--batch_size=0", "batch_size"),
    ("--temperature=0", "temperature"),
    ("--batch_size=abc", "batch_size"),
    ("--no_such_flag=1", "no_such_flag"),
    ("--flagfile=/nonexistent/x.cfg", "x.cfg"),
])
def test_bad_flags_exit_2_with_one_line_and_write_nothing(tmp_path, bad, flag):
    model_dir = tmp_path / "out"
    proc = run_tool(*SMALL, f"--model_dir={model_dir}", bad)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and flag in lines[0], proc.stderr
    assert not model_dir.exists()
