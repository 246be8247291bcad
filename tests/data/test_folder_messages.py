"""What an image folder's listing says about messy data (issue 27): files left out by
--skip_corrupt_images, class folders without a supported image, a single class; and the
image decoders' own stderr lines about bad files are captured (the caller words them)."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import tasks
from dualssl_tf.config import ConfigError
from dualssl_tf.data.errors import DataError
from dualssl_tf.data.sources import folders
from dualssl_tf.evaluation import data as eval_data
from tests.tiny_runs import TINY_IMAGES


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(folders, "_WARNED", set())   # each message once per process
    monkeypatch.setattr(sys, "argv", ["train.py"])  # the prefix names the running tool
    monkeypatch.delenv("DUALSSL_TF_LOG", raising=False)  # what the user did not ask for
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")


def _jpeg(path, value, size=(12, 12)):
    tf.io.write_file(str(path), tf.io.encode_jpeg(np.full(size + (3,), value, np.uint8)))


def _folder(root, classes=("cat", "dog"), per_class=3):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _jpeg(root / name / f"{i}.jpg", 40 * c + i)
    return root


def test_skipped_files_are_one_warning_and_the_decoders_lines_are_captured(tmp_path, capfd):
    root = _folder(tmp_path / "imgs")
    good = (root / "cat" / "0.jpg").read_bytes()
    (root / "cat" / "0.jpg").write_bytes(good[: len(good) // 2])   # truncated JPEG
    (root / "dog" / "9.jpg").write_bytes(good[:200])
    capfd.readouterr()
    with pytest.raises(DataError, match=r"^path: 2 of 7 image files cannot be "
                       rf"decoded, e.g. {root}/cat/0.jpg; fix or remove them, or pass "
                       r"--skip_corrupt_images to leave them out$"):
        folders.folder_source(str(root))
    # libjpeg's "Improper call to JPEG library ..." / jpeg_mem.cc's "Premature end of
    # JPEG data" would be printed here, before the tool's own line.
    assert capfd.readouterr().err == ""
    src = folders.folder_source(str(root), skip_corrupt=True)
    assert (src.num_examples, src.skipped, src.labelled_classes) == (5, 2, 2)
    assert capfd.readouterr().err == (
        f"train.py: warning: --skip_corrupt_images: left out 2 of 7 image files of {root} "
        f"that cannot be decoded, e.g. {root}/cat/0.jpg\n")


@pytest.mark.parametrize("env", [{"TF_CPP_MIN_LOG_LEVEL": "0"},
                                 {"DUALSSL_TF_LOG": "1"}],  # a tool's --tf_log (tools/cli.py)
                         ids=["TF_CPP_MIN_LOG_LEVEL", "tf_log"])
def test_decoder_lines_are_shown_when_the_user_asks_for_tf_logging(tmp_path, capfd,
                                                                   monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = _folder(tmp_path / "imgs", per_class=1)
    good = (root / "cat" / "0.jpg").read_bytes()
    (root / "cat" / "1.jpg").write_bytes(good[: len(good) // 2])
    capfd.readouterr()
    folders.folder_source(str(root), skip_corrupt=True)
    err = capfd.readouterr().err.splitlines()
    assert err[-1].startswith("train.py: warning: --skip_corrupt_images: left out 1 of 3")
    assert len(err) > 1  # the decoder's own line(s) came through


def test_class_folders_without_supported_images_are_named(tmp_path, capfd):
    root = _folder(tmp_path / "imgs")
    (root / "empty").mkdir()
    (root / "webp").mkdir()
    (root / "webp" / "a.webp").write_bytes(b"RIFF")
    (root / "webp" / "b.TIF").write_bytes(b"II*")
    capfd.readouterr()
    src = folders.folder_source(str(root))
    assert (src.num_classes, src.labelled_classes) == (4, 2)  # labels stay folder-sorted
    assert capfd.readouterr().err == (
        f"train.py: warning: 2 class folders of {root} hold no image file of a supported "
        "type (.jpg, .jpeg, .png, .bmp, .gif): empty/ (empty), webp/ (only .tif, .webp); "
        "they still count as classes (labels follow the sorted folder names): add images "
        "or remove them\n")
    folders.folder_source(str(root))
    assert capfd.readouterr().err == ""  # said once


def test_single_class_folder_is_warned_by_training(tmp_path, capfd):
    root = _folder(tmp_path / "imgs", classes=("cat",), per_class=8)
    capfd.readouterr()
    cfg = TINY_IMAGES.replace(dataset="folder", data_dir=str(root), batch_size=4,
                              model_dir=str(tmp_path / "run"))
    task = tasks.build(cfg)
    assert task.probe is not None
    assert capfd.readouterr().err == (
        f"train.py: warning: {root} has images of a single class: the online probe's "
        "accuracy is 1.0 whatever the features (add a sub-folder per class, or pass "
        "--noprobe)\n")


def test_probe_data_skips_corrupt_images_on_request(tmp_path, capfd):
    """linear_eval's --skip_corrupt_images reaches the same folder code as train.py's."""
    root = tmp_path / "imgs"
    _folder(root / "train")
    _folder(root / "val", per_class=2)
    (root / "val" / "dog" / "bad.jpg").write_bytes(b"not an image")
    card = {"dataset": "folder", "flags": {"dataset": "folder", "image_size": "12"}}
    with pytest.raises(ConfigError, match="--skip_corrupt_images to leave them out$"):
        eval_data.probe_datasets("folder", str(root), batch_size=4, model_card=card)
    train, test, classes = eval_data.probe_datasets("folder", str(root), batch_size=4,
                                                    model_card=card, skip_corrupt_images=True)
    assert classes == 2 and sum(len(y) for _, y in test) == 4
    assert capfd.readouterr().err.endswith(
        f"--skip_corrupt_images: left out 1 of 5 image files of {root}/val that cannot be "
        f"decoded, e.g. {root}/val/dog/bad.jpg\n")
