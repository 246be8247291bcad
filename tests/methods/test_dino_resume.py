"""A DINO run resumed from its checkpoint equals the uninterrupted run bit for bit: the
teacher (moved only by the moving average), the centre, the frozen-then-trained last
layer, the local crops and the optimizer state are all in the checkpoint or a function of
the step (tiny generated images with 2 local crops, CPU, deterministic ops)."""


import numpy as np
import pytest

from tests.tiny_runs import TINY_HLTM, TINY_IMAGES, check_resume

DINO = dict(method="dino", dino_out_dim=16, dino_hidden_dim=8, dino_bottleneck_dim=4,
            dino_warmup_teacher_temp_epochs=2, dino_freeze_last_layer=1, local_crops=2,
            local_crop_size=8, generated_examples=48, steps_per_execution=1, loss="nce",
            temperature=0.1)  # the contrastive options back at their defaults


def test_dino_resume_is_bit_identical_hltm(tmp_path):
    """The tiny HLTM run (head-less task: DINO makes its head), a few seconds."""
    a = check_resume(tmp_path, TINY_HLTM, method="dino", dino_out_dim=16,
                      dino_hidden_dim=8, dino_bottleneck_dim=4,
                      dino_warmup_teacher_temp_epochs=2, dino_freeze_last_layer=1,
                      loss="nce", temperature=0.1)
    centers = [v for k, v in a.items() if k.startswith("model/") and v.shape == (16,)
               and np.all(v != 0)]
    assert centers


@pytest.mark.slow
def test_dino_resume_is_bit_identical_images_with_local_crops(tmp_path):
    a = check_resume(tmp_path, TINY_IMAGES, **DINO)
    # The centre is in the checkpoint and has moved; the teacher differs from the student.
    centers = [v for k, v in a.items() if k.startswith("model/") and v.shape == (16,)
               and np.all(v != 0)]
    assert centers, sorted(k for k in a if k.startswith("model/"))
