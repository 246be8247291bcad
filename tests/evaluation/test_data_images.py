"""evaluation.data on image datasets: tfds names (mocked) rebuild the image experiment."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dualssl_tf.evaluation import data

CARD = {"flags": {"dataset": "generated_images", "stem": "cifar", "width_multiplier": 0.0625,
                  "proj_hidden_dim": 16, "proj_dim": 8, "loss": "ntxent"}}


def test_tfds_name_gives_probe_splits(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        train, test, classes = data.probe_datasets(
            "cifar10", data_dir=str(tmp_path), batch_size=4, model_card=CARD)
        x, y = next(iter(train))
        assert x.shape == (4, 32, 32, 3) and classes == 10
        assert np.all((y.numpy() >= 0) & (y.numpy() < 10))
        assert sum(int(b[1].shape[0]) for b in test) == 6


def test_unknown_name_still_rejected():
    with pytest.raises(ValueError, match="^--dataset: unknown dataset 'Not-A-Set'"):
        data.probe_datasets("Not-A-Set", model_card=CARD)
