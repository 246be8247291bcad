"""Linear evaluation of a trained image encoder vs the same encoder at initialisation, on the
generated shapes (no download). Minutes on a CPU: marked slow."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("dualssl_tf.data.generated_images")   # the image pipeline (issue 3)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
CONFIG = os.path.join(ROOT, "configs", "generated_images.cfg")
SMALL = ["--generated_examples=2560", "--steps_per_execution=10", "--verbose=0"]


def _tool(name, *args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args],
                          capture_output=True, text=True, env=ENV, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _linear_top1(model_dir, out_dir):
    _tool("linear_eval.py", f"--saved_model={model_dir}/saved_model", "--method=linear,knn",
          "--knn_k=20", f"--output_dir={out_dir}", "--verbose=0")
    with open(os.path.join(out_dir, "linear_eval.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_trained_encoder_beats_random_init(tmp_path):
    trained, random = str(tmp_path / "trained"), str(tmp_path / "random")
    _tool("train.py", f"--flagfile={CONFIG}", *SMALL, "--epochs=8", f"--model_dir={trained}")
    _tool("train.py", f"--flagfile={CONFIG}", *SMALL, "--epochs=0", "--warmup_epochs=0",
          f"--model_dir={random}")
    after = _linear_top1(trained, tmp_path / "eval_trained")
    before = _linear_top1(random, tmp_path / "eval_random")
    # 6 classes (chance 1/6); a clear margin over the same network at initialisation.
    assert after["linear"]["top1"] > before["linear"]["top1"] + 0.1, (before, after)
    assert after["knn"]["top1"] > before["knn"]["top1"] + 0.05, (before, after)
