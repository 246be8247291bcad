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

    keras.utils.set_random_seed(0)
    yield
