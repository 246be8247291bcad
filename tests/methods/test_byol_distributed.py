"""Scale-out of BYOL and SimSiam: one update under MirroredStrategy on 2 and 4 logical CPU
devices (SyncBN on) equals the single-device update on the global batch, target network,
predictor and DirectPred's F included, also with the predictor's own learning rate (10x,
fixed) under momentum and a schedule, and so do the logged metrics
(tests/distribute_worker.py, one process per replica count: splitting the CPU must happen
before TensorFlow starts)."""

import pytest

from tests import distribute_worker as worker

TOL = 1e-6
MOVED = 1e-3
LOG_TOL = 1e-5  # logged metrics: float32 sums in another order (tests/test_distribute.py)
CASES = ("byol", "byol_directpred", "simsiam", "simsiam_pred_lr")


def _run(tmp_path, replicas):
    return worker.launch(worker.SCRIPT, ["siamese", replicas],
                         tmp_path / f"siamese{replicas}.json")


def _check(result, replicas):
    assert result["replicas"] == replicas
    assert set(result["cases"]) == set(CASES)
    for name, got in result["cases"].items():
        assert got["moved"] > MOVED, (name, got)
        assert got["diff"] < TOL, (name, got)
        # What is logged (loss, pos_cos, pred_cos) is the global batch's, not a share.
        assert got["logs_diff"] < LOG_TOL, (name, got)
        assert abs(got["logs"]["loss"]) * (1 - 1 / replicas) > 100 * LOG_TOL, (name, got)


@pytest.mark.gpu
def test_two_replicas_equal_one_device(tmp_path):
    _check(_run(tmp_path, 2), 2)


@pytest.mark.gpu
@pytest.mark.slow
def test_four_replicas_equal_one_device(tmp_path):
    _check(_run(tmp_path, 4), 4)
