"""The image task's logged metrics on 2 mirrored replicas against one device: every
metrics.jsonl value of a generated-images run (loss, the probe's, the collapse monitors,
the kNN) on the same initial weights and batches."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "image_replicas_worker.py")
# The step's own logs are computed on the initial weights: they differ by the float32
# summation order of the split batch, all-reduces and the unfused synced BatchNorm only
# (measured <= 1.3e-6 relative).
STEP_TOL = 1e-5
# The metrics measured after the update (embed_std, effective_rank) inherit the update's
# rounding, which this ResNet at initialisation amplifies: reversing the batch order on one
# device moves them as much as the replicas do (measured: 3.1e-4 vs 3.3e-4 relative, 5e-4 of
# what the step changed). A wrong update (e.g. a gradient off by a factor) changes them by
# the whole step.
UPDATE_SHARE = 0.01


@pytest.mark.slow  # three trainer runs of a ResNet-18 in a subprocess: ~40 s of CPU
def test_logged_metrics_on_two_replicas_equal_one_device(tmp_path):
    out = tmp_path / "lines.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, WORKER, str(out), "reverse"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = json.loads(out.read_text())
    (one0, one1), (two0, two1), (rev0, rev1) = lines["one"], lines["two"], lines["reverse"]
    # At initialisation the monitors run in cross-replica context on the same weights and
    # images with the same kernels: equal to the bit.
    assert two0 == one0 == rev0
    assert set(one0) == {"epoch", "embed_std", "effective_rank", "knn_top1"}
    assert set(two1) == set(one1)
    step_logs = ("loss", "contrastive_acc", "pos_cos", "r_pos", "r_neg", "probe_loss",
                 "probe_acc")
    for key in step_logs:
        assert abs(two1[key] - one1[key]) <= STEP_TOL * abs(one1[key]), key
    for key in ("embed_std", "effective_rank"):
        moved = abs(one1[key] - one0[key])
        assert moved > 0.1 * one0[key], key   # the step really changes it
        assert abs(two1[key] - one1[key]) <= UPDATE_SHARE * moved, key
        assert abs(rev1[key] - one1[key]) <= UPDATE_SHARE * moved, key
    # Held-out accuracies of 25 examples: the rounding above flips no prediction.
    for key in ("epoch", "learning_rate", "probe_test_acc", "knn_top1"):
        assert two1[key] == one1[key], key
