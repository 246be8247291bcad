"""--download (issue 13, part 1) without network: a tiny TFDS builder whose source file is
local is prepared on first use by the code path train.py and linear_eval.py use, then read;
--nodownload and --strategy=tpu say how to prepare it instead."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dualssl_tf import config
from dualssl_tf.data.errors import DataError
from dualssl_tf.data.pipeline import eval_dataset
from dualssl_tf.data.sources import tfds as tfds_sets
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
    batches = list(eval_dataset(probe_train, 4, SIZE))
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

    with pytest.raises(DataError) as e:
        tfds_sets.prepare_tfds(NotPrepared(), "cifar10", "gs://bucket/tensorflow_datasets")
    msg = str(e.value)
    assert msg.startswith("data_dir: --dataset=cifar10 is not prepared in "
                          "--data_dir=gs://bucket/tensorflow_datasets")
    assert "into a gs:// --data_dir" in msg
    assert "`tfds build cifar10 --data_dir=gs://bucket/tensorflow_datasets`" in msg


# -- a registered builder's download tables (issue 20, part 1) ----------------------------
# Each data set's one archive, as tfds 4.9.10 ships it in the package's checksums files.
# The tiny builder above has no code path, so it never reads these tables; a registered one
# does, through tfds' lazy `importlib_resources` import (a dependency of this package,
# setup.cfg: tfds itself asks for it only on Python < 3.9).
ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", 170052171,
                "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", 168513733,
                 "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"),
    "stl10": ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", 2640397119,
              "f31fd99273a1acb8609c8db427cebb1de3f71de77758cdc0e22956e1289b9866"),
}


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("this test must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_registered_builder_url_and_checksum_tables_load(name, tmp_path, no_network):
    # What download_and_prepare hands its download manager first (url_infos: URL -> size
    # and sha256); on a fresh install without importlib_resources this raised
    # ModuleNotFoundError, so no registered data set could be downloaded.
    builder = tfds.builder(name, data_dir=str(tmp_path))
    url, size, sha256 = ARCHIVES[name]
    infos = builder.url_infos
    assert list(infos) == [url]
    assert (int(infos[url].size), infos[url].checksum) == (size, sha256)
    # The size the --nodownload hint quotes (tfds_sets.DOWNLOAD_SIZES) is this one.
    assert str(infos[url].size) == tfds_sets.DOWNLOAD_SIZES[name]
    assert not builder.is_prepared() and os.listdir(tmp_path) == []
