"""A DINO run resumed from its checkpoint equals the uninterrupted run bit for bit: the
teacher (moved only by the moving average), the centre, the frozen-then-trained last
layer, the local crops and the optimizer state are all in the checkpoint or a function of
the step (tiny generated images with 2 local crops, CPU, deterministic ops)."""

import os
import shutil

import numpy as np
import pytest

from tests.tiny_runs import (TINY_HLTM, TINY_IMAGES, ckpt_tensors as _tensors,
                              metrics_bytes as _metrics, train)

DINO = dict(method="dino", dino_out_dim=16, dino_hidden_dim=8, dino_bottleneck_dim=4,
            dino_warmup_teacher_temp_epochs=2, dino_freeze_last_layer=1, local_crops=2,
            local_crop_size=8, generated_examples=48, steps_per_execution=1, loss="nce",
            temperature=0.1)  # the contrastive options back at their defaults


def _check_resume(tmp_path, base, **kw):
    """A 2-epoch run, and its copy as a kill during epoch 2 leaves it, resumed."""
    ref, part = tmp_path / "ref", tmp_path / "part"
    train(ref, base=base, epochs=2, **kw)
    shutil.copytree(ref, part)
    for name in os.listdir(part / "checkpoints"):
        if name.startswith("ckpt-2."):
            os.remove(part / "checkpoints" / name)
    shutil.rmtree(part / "saved_model")
    os.remove(part / "finished.json")
    train(part, base=base, epochs=2, **kw)   # resumes from ckpt-1
    assert _metrics(ref) == _metrics(part)
    a, b = _tensors(ref, 2), _tensors(part, 2)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    return a


def test_dino_resume_is_bit_identical_hltm(tmp_path):
    """The tiny HLTM run (head-less task: DINO makes its head), a few seconds."""
    a = _check_resume(tmp_path, TINY_HLTM, method="dino", dino_out_dim=16,
                      dino_hidden_dim=8, dino_bottleneck_dim=4,
                      dino_warmup_teacher_temp_epochs=2, dino_freeze_last_layer=1,
                      loss="nce", temperature=0.1)
    centers = [v for k, v in a.items() if k.startswith("model/") and v.shape == (16,)
               and np.all(v != 0)]
    assert centers


@pytest.mark.slow
def test_dino_resume_is_bit_identical_images_with_local_crops(tmp_path):
    a = _check_resume(tmp_path, TINY_IMAGES, **DINO)
    # The centre is in the checkpoint and has moved; the teacher differs from the student.
    centers = [v for k, v in a.items() if k.startswith("model/") and v.shape == (16,)
               and np.all(v != 0)]
    assert centers, sorted(k for k in a if k.startswith("model/"))
