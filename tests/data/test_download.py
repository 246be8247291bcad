"""--download (issue 13, part 1) without network: a tiny TFDS builder whose source file is
local is prepared on first use by the code path train.py and linear_eval.py use, then read;
--nodownload and --strategy=tpu say how to prepare it instead."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dualssl_tf import config
from dualssl_tf.data import images
from dualssl_tf.tasks.images import task as image_task

NAME = "local_source_images"
N_TRAIN, N_TEST, SIZE = 12, 4, 16


class LocalSourceImages(tfds.core.GeneratorBasedBuilder):
    """12 train / 4 test 16x16 images read from a local .npz (its "download")."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Test data."}
    code_path = None   # no checksums / README beside the code (see tests/data/tiny_tfds.py)
    SOURCE = None      # the local source file, set by the test

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(SIZE, SIZE, 3)),
            "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        data = np.load(LocalSourceImages.SOURCE)
        return {"train": self._generate_examples(data["x_train"], data["y_train"]),
                "test": self._generate_examples(data["x_test"], data["y_test"])}

    def _generate_examples(self, x, y):
        for i, (image, label) in enumerate(zip(x, y)):
            yield i, {"image": image, "label": int(label)}


@pytest.fixture()
def source(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "source.npz"
    np.savez(path, x_train=rng.integers(0, 255, (N_TRAIN, SIZE, SIZE, 3), np.uint8),
             y_train=np.arange(N_TRAIN) % 3,
             x_test=rng.integers(0, 255, (N_TEST, SIZE, SIZE, 3), np.uint8),
             y_test=np.arange(N_TEST) % 3)
    LocalSourceImages.SOURCE = str(path)
    return path


def _cfg(data_dir, **flags):
    return config.TrainConfig(dataset=NAME, data_dir=str(data_dir), batch_size=4,
                              image_size=SIZE, stem="cifar", **flags)


def test_prepared_on_first_use_then_read(source, tmp_path, capsys):
    data_dir = tmp_path / "tfds"
    assert config.TrainConfig().data.download is True   # the default
    pretrain, probe_train, probe_test, size = image_task.sources(_cfg(data_dir))
    assert "Downloading and preparing local_source_images" in capsys.readouterr().out
    assert os.path.isdir(data_dir / NAME / "1.0.0")
    assert (pretrain.num_examples, probe_test.num_examples, size) == (N_TRAIN, N_TEST, SIZE)
    batches = list(images.eval_dataset(probe_train, 4, SIZE))
    assert batches[0][0].shape == (4, SIZE, SIZE, 3)
    labels = sorted(int(v) for _, y in batches for v in y.numpy())
    assert labels == sorted(np.arange(N_TRAIN) % 3)
    # Prepared now: a second run reads it without preparing again.
    image_task.sources(_cfg(data_dir))
    assert "Downloading" not in capsys.readouterr().out


def test_nodownload_is_the_one_line_hint(source, tmp_path):
    with pytest.raises(config.ConfigError) as e:
        image_task.sources(_cfg(tmp_path / "tfds", download=False))
    assert e.value.flag == "data_dir"
    message = str(e.value)
    assert "\n" not in message and "--nodownload" in message
    assert f"tfds build {NAME} --data_dir={tmp_path / 'tfds'}" in message
    assert not os.path.exists(tmp_path / "tfds" / NAME)


def test_tpu_refuses_with_how_to_prepare(source, tmp_path):
    with pytest.raises(config.ConfigError) as e:
        image_task.sources(_cfg(tmp_path / "tfds", strategy="tpu", tpu="local"))
    assert "with --strategy=tpu" in str(e.value)
    assert f"tfds build {NAME} --data_dir=gs://" in str(e.value)
    assert not os.path.exists(tmp_path / "tfds" / NAME)


@pytest.mark.slow
def test_train_prepares_on_first_use_then_trains_a_step(source, tmp_path):
    from dualssl_tf.run import trainer
    cfg = _cfg(tmp_path / "tfds", model_dir=str(tmp_path / "run"), width_multiplier=0.0625,
               proj_hidden_dim=8, proj_dim=4, steps_per_epoch=1, epochs=1, verbose=0,
               loss="ntxent", temperature=0.5, optimizer="sgd", learning_rate=0.01,
               shuffle_buffer=16)
    result = trainer.run(cfg)
    assert not result["finished"]
    assert os.path.isdir(tmp_path / "tfds" / NAME / "1.0.0")
    assert os.path.exists(tmp_path / "run" / "saved_model" / "saved_model.pb")


def test_gs_data_dir_refuses_with_how_to_prepare():
    """Every worker of a run would download into the same bucket: a gs:// --data_dir that
    lacks the data set says how to prepare it once instead (nothing is downloaded)."""
    class NotPrepared:
        def is_prepared(self):
            return False

        def download_and_prepare(self, **kwargs):
            raise AssertionError("must not download into a bucket")

    with pytest.raises(config.ConfigError) as e:
        images.prepare_tfds(NotPrepared(), "cifar10", "gs://bucket/tensorflow_datasets")
    msg = str(e.value)
    assert msg.startswith("--data_dir: --dataset=cifar10 is not prepared in "
                          "--data_dir=gs://bucket/tensorflow_datasets")
    assert "into a gs:// --data_dir" in msg
    assert "`tfds build cifar10 --data_dir=gs://bucket/tensorflow_datasets`" in msg
