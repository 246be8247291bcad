import logging

import pytest


@pytest.fixture(scope="package", autouse=True)
def _restore_absl_log_level():
    """Leaves the ``absl`` logger's level as these tests found it.

    ``tf.saved_model.save`` sets the absl verbosity to FATAL and back while it walks the
    objects (TensorFlow's AutoTrackable._trackable_children), which leaves the ``absl``
    logger at an explicit WARNING level; later tests that read absl INFO records with
    ``caplog`` (tests/tasks/test_images.py) would then see none.
    """
    logger = logging.getLogger("absl")
    level = logger.level
    yield
    logger.setLevel(level)
