import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global seeds, so unseeded Keras initialisers
    give the same weights whatever ran before: a pass or fail never depends on order."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    # On a GPU (``pytest -m gpu``, benchmarks/accelerator_check.sh): float32 matmuls and
    # convolutions in float32, not TF32 (TensorFlow's default on Ampere and later, 10-bit
    # mantissas), since the tests compare float32 results to ~1e-5. No-op on a CPU.
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield


@pytest.fixture(autouse=True)
def _augment_on_auto_is_host(request, monkeypatch):
    """``--augment_on=auto`` resolves by the machine (device views when a GPU is visible);
    the suite's expectations (batches of views from the task's data) are the CPU ones, so
    auto resolves to host here unless a test is marked ``gpu``."""
    if request.node.get_closest_marker("gpu") is None:
        from dualssl_tf.tasks.images import task as image_task

        monkeypatch.setattr(image_task, "accelerator_visible", lambda cfg: False)
