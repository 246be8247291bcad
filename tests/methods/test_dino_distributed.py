"""Scale-out of DINO: two steps under MirroredStrategy on 2 and 4 logical CPU devices
(SyncBN on) equal the single-device steps on the global batch: the student, the teacher
(moving average), the centre (a GLOBAL-batch mean of the teacher's outputs) and the frozen
last layer; and so do the logged metrics (tests/distribute_worker.py ``dino``, one
process per replica count: splitting the CPU must happen before TensorFlow starts)."""

import pytest

from tests import distribute_worker as worker

TOL = 1e-6
MOVED = 1e-3
LOG_TOL = 1e-5  # logged metrics: float32 sums in another order (tests/test_distribute.py)


def _run(tmp_path, replicas):
    return worker.launch(worker.SCRIPT, ["dino", replicas], tmp_path / f"dino{replicas}.json")


def _check(got, replicas):
    assert got["replicas"] == replicas
    assert got["moved"] > MOVED, got
    assert got["center_moved"] > MOVED, got   # the centre left zero: a real check of it
    assert got["diff"] < TOL, got   # max |difference| / max(1, |variable|)
    # What is logged (loss, teacher_entropy, teacher_temp) is the global batch's.
    assert got["logs_diff"] < LOG_TOL, got
    assert set(got["logs"]) == {"loss", "teacher_entropy", "teacher_temp"}


@pytest.mark.gpu
def test_two_replicas_equal_one_device(tmp_path):
    _check(_run(tmp_path, 2), 2)


@pytest.mark.gpu
@pytest.mark.slow
def test_four_replicas_equal_one_device(tmp_path):
    _check(_run(tmp_path, 4), 4)
