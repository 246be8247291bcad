"""Tests of the image pipelines: tfds (mocked), folders, generated images; determinism."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dualssl_tf.data import images
from dualssl_tf.data.errors import DataError
from dualssl_tf.data.generated_images import GeneratedImages
from dualssl_tf.data.pipeline import eval_dataset, pretrain_dataset, shard_source
from dualssl_tf.data.sources.folders import folder_source
from dualssl_tf.data.sources.generated import generated_source
from dualssl_tf.data.sources.tfds import tfds_source


def _first(ds, n=1):
    return [b for b in ds.take(n).as_numpy_iterator()]


def _check_batch(batch, b, s, labelled=True):
    assert set(batch) == ({"view1", "view2", "label"} if labelled else {"view1", "view2"})
    for k in ("view1", "view2"):
        assert batch[k].shape == (b, s, s, 3) and batch[k].dtype == np.float32
        assert batch[k].min() >= 0 and batch[k].max() <= 1
    if labelled:
        assert batch["label"].shape == (b,) and batch["label"].dtype == np.int32


# ---------------------------------------------------------------- tfds (mocked, no files)


def test_tfds_cifar10_pretrain_and_eval(tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        src = tfds_source("cifar10", "train", str(tmp_path))
        assert (src.num_examples, src.num_classes, src.image_shape) == (12, 10, (32, 32, 3))
        ds = pretrain_dataset(src, 4, 32, seed=1, color_jitter_strength=0.5)
        assert ds.element_spec["view1"].shape == (4, 32, 32, 3)  # static for TPU
        (batch,) = _first(ds)
        _check_batch(batch, 4, 32)
        assert np.all((batch["label"] >= 0) & (batch["label"] < 10))
        test = tfds_source("cifar10", "test", str(tmp_path))
        evals = list(eval_dataset(test, 5, 32).as_numpy_iterator())
        assert [x.shape[0] for x, _ in evals] == [5, 5, 2]  # keeps the remainder
        x, y = evals[0]
        assert x.shape == (5, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32


def test_tfds_stl10_train_plus_unlabeled(tmp_path):
    assert images.pretrain_split("stl10") == "train+unlabeled"
    assert images.pretrain_split("cifar100") == "train"
    with tfds.testing.mock_data(num_examples=6):
        pre, train, test = images.sources("stl10", str(tmp_path))
        assert pre.name == "stl10/train+unlabeled" and train.name == "stl10/train"
        assert pre.image_shape == (96, 96, 3) and pre.num_classes == 10
        (batch,) = _first(pretrain_dataset(pre, 3, 24, blur=True))
        _check_batch(batch, 3, 24)
        x, y = _first(eval_dataset(test, 2, 96))[0]
        assert x.shape == (2, 96, 96, 3)
        # Resized for a smaller encoder input by the eval transform (centre resize).
        x, _ = _first(eval_dataset(test, 2, 48))[0]
        assert x.shape == (2, 48, 48, 3)


def test_tfds_cifar100_labels(tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        src = tfds_source("cifar100", "train", str(tmp_path))
        assert src.num_classes == 100


def test_tfds_not_prepared_says_how_to_download(tmp_path):
    with pytest.raises(DataError) as err:
        tfds_source("cifar10", "train", str(tmp_path))
    msg = err.value.message
    assert err.value.argument == "data_dir" and "\n" not in msg
    assert f"tfds build cifar10 --data_dir={tmp_path}" in msg and "--dataset=cifar10" in msg


def test_tfds_unknown_name():
    with pytest.raises(DataError, match="^name: unknown dataset 'no_such_images'"):
        tfds_source("no_such_images", "train")


# ---------------------------------------------------------------- folders


def _write_png(path, value, size=(10, 14)):
    img = np.full(size + (3,), value, np.uint8)
    tf.io.write_file(str(path), tf.io.encode_png(img))


def _make_folder(root, classes=("cat", "dog"), per_class=3):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _write_png(root / name / f"{i}.png", 40 * c + i)
    return root


def test_folder_with_classes(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    src = folder_source(str(root))
    assert (src.num_examples, src.num_classes, src.skipped) == (6, 2, 0)
    (batch,) = _first(pretrain_dataset(src, 4, 8, seed=3))
    _check_batch(batch, 4, 8)
    x, y = list(eval_dataset(src, 6, 8).as_numpy_iterator())[0]
    # Labels follow the sorted class folders; constant images keep their value.
    order = np.argsort(x[:, 0, 0, 0])
    np.testing.assert_array_equal(y[order], [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(np.sort(x[:, 4, 4, 0]) * 255,
                               [0, 1, 2, 40, 41, 42], atol=1e-3)


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(4):
        _write_png(tmp_path / f"img{i}.PNG", i)
    src = folder_source(str(tmp_path))
    assert src.num_classes == 0
    (batch,) = _first(pretrain_dataset(src, 2, 8))
    _check_batch(batch, 2, 8, labelled=False)
    assert list(eval_dataset(src, 2, 8)) == []  # nothing to probe


def test_folder_errors_and_skip_corrupt(tmp_path):
    with pytest.raises(DataError, match=f"^path: {tmp_path} contains no image"):
        folder_source(str(tmp_path))
    with pytest.raises(DataError, match="^path: .* is not a directory"):
        folder_source(str(tmp_path / "missing"))
    root = _make_folder(tmp_path / "imgs", per_class=2)
    bad = root / "dog" / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError) as err:
        folder_source(str(root))
    assert str(bad) in str(err.value) and "--skip_corrupt_images" in str(err.value)
    src = folder_source(str(root), skip_corrupt=True)
    assert (src.num_examples, src.skipped) == (4, 1)


def test_folder_train_test_layout(tmp_path):
    _make_folder(tmp_path / "train")
    _make_folder(tmp_path / "test", per_class=1)
    pre, train, test = images.sources("folder", str(tmp_path))
    assert pre.num_examples == train.num_examples == 6 and test.num_examples == 2
    _, _, none = images.sources("folder", str(tmp_path / "train"))
    assert none is None


def test_folder_imagenet_train_val_layout(tmp_path):
    _make_folder(tmp_path / "train")
    _make_folder(tmp_path / "val", per_class=2)   # ImageNet's DIR/train + DIR/val
    pre, train, test = images.sources("folder", str(tmp_path))
    assert pre.num_examples == 6 and test.num_examples == 4
    assert test.name.endswith("val") and test.num_labelled == 4


def _names(source, root):
    return sorted(os.path.relpath(f.decode(), root)
                  for f, _ in source.elements.as_numpy_iterator())


def test_folder_holdout_fraction(tmp_path):
    root = _make_folder(tmp_path / "imgs", per_class=8)
    _write_png(root / "loose.png", 7)                       # unlabelled: never held out
    pre, train, test = images.sources("folder", str(root), holdout_fraction=0.25,
                                      holdout_seed=5)
    assert pre is train and (pre.num_examples, test.num_examples) == (13, 4)
    held, kept = _names(test, root), _names(pre, root)
    assert not set(held) & set(kept) and len(held) + len(kept) == 17
    assert sum(n.startswith("cat/") for n in held) == 2 == sum(n.startswith("dog/") for n in held)
    assert test.holdout == {"fraction": 0.25, "seed": 5, "num_files": 4, "files": held}
    assert test.num_classes == pre.num_classes == 2 and test.num_labelled == 4
    # Labels of the held-out part are its files' classes.
    labels = dict((os.path.relpath(f.decode(), root), int(y))
                  for f, y in test.elements.as_numpy_iterator())
    assert all(labels[n] == (0 if n.startswith("cat/") else 1) for n in held)
    # Seeded: the same files again, others for another seed; none without a fraction.
    assert _names(images.sources("folder", str(root), holdout_fraction=0.25,
                                 holdout_seed=5)[2], root) == held
    assert any(_names(images.sources("folder", str(root), holdout_fraction=0.25,
                                     holdout_seed=s)[2], root) != held for s in (6, 7, 8))
    assert images.sources("folder", str(root))[2] is None


def test_folder_recorded_holdout_survives_new_files(tmp_path):
    root = _make_folder(tmp_path / "imgs", per_class=6)
    held = images.sources("folder", str(root), holdout_fraction=0.5, holdout_seed=1)[2]
    for i in range(6, 12):                                  # the folder grows after the run
        _write_png(root / "cat" / f"{i}.png", 100 + i)
    again = images.sources("folder", str(root), holdout_files=held.holdout["files"])
    assert _names(again[2], root) == held.holdout["files"]
    assert again[0].num_examples == 18 - 6
    (root / "cat" / held.holdout["files"][0].split("/")[-1]).unlink()
    with pytest.raises(DataError, match="^path: 1 of the 6 held-out files the run "
                                        "recorded are not in"):
        images.sources("folder", str(root), holdout_files=held.holdout["files"])


def test_folder_holdout_errors(tmp_path):
    for i in range(3):
        _write_png(tmp_path / f"flat{i}.png", i)
    with pytest.raises(DataError, match="^fraction: .* no class sub-folders"):
        images.sources("folder", str(tmp_path), holdout_fraction=0.2)
    single = _make_folder(tmp_path / "single", per_class=1)
    with pytest.raises(DataError, match="^fraction: 0.2 sets aside no image"):
        images.sources("folder", str(single), holdout_fraction=0.2)


def test_batch_larger_than_dataset(tmp_path):
    src = folder_source(str(_make_folder(tmp_path / "i", per_class=1)))
    with pytest.raises(DataError, match="^batch_size: 4 is larger than"):
        pretrain_dataset(src, 4, 8)


# ---------------------------------------------------------------- generated + determinism


def test_generated_pipeline_deterministic_and_resumable():
    data = GeneratedImages(image_size=16, num_examples=64, num_test=16, seed=2)
    pre, train, test = images.sources("generated_images", generated=data)
    a = _first(pretrain_dataset(pre, 8, 16, seed=5), 3)
    b = _first(pretrain_dataset(pre, 8, 16, seed=5), 3)
    c = _first(pretrain_dataset(pre, 8, 16, seed=6), 1)
    resumed = _first(pretrain_dataset(pre, 8, 16, seed=5, start_step=2), 1)
    _check_batch(a[0], 8, 16)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert np.abs(a[0]["view1"] - c[0]["view1"]).max() > 0.1
    for k in a[2]:
        np.testing.assert_array_equal(resumed[0][k], a[2][k])
    x, y = list(eval_dataset(test, 16, 16).as_numpy_iterator())[0]
    assert x.shape == (16, 16, 16, 3) and set(y) <= set(range(6))


def test_augmented_folder_pipeline_deterministic(tmp_path):
    src = folder_source(str(_make_folder(tmp_path / "i", per_class=4)))
    a = _first(pretrain_dataset(src, 4, 8, seed=1), 2)
    b = _first(pretrain_dataset(src, 4, 8, seed=1), 2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["view1"], y["view1"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_shard_source_splits_examples():
    data = GeneratedImages(image_size=16, num_examples=10, num_test=4, seed=0)
    src = generated_source(data)
    shards = [shard_source(src, 3, i) for i in range(3)]
    assert [s.num_examples for s in shards] == [4, 3, 3]
    ids = [sorted(int(r) for r, _ in s.elements.as_numpy_iterator()) for s in shards]
    assert sorted(sum(ids, [])) == list(range(10)) and ids[1] == [1, 4, 7]
    assert shard_source(src, 1, 0) is src


def test_stream_is_the_same_for_every_iterator_and_resumes_across_passes():
    # A second iterator of the same dataset (ViewSummary peeks at the first batch of a fresh
    # run only) must not change the order: each pass is shuffled with a seed of its own.
    data = GeneratedImages(image_size=16, num_examples=12, num_test=4, seed=2)
    pre, _, _ = images.sources("generated_images", generated=data)
    ds = pretrain_dataset(pre, 4, 16, seed=5, shuffle_buffer=8)
    first = _first(ds, 1)
    a = _first(ds, 7)  # 28 elements: passes 0, 1 and part of 2
    for k in first[0]:
        np.testing.assert_array_equal(first[0][k], a[0][k])
    resumed = _first(pretrain_dataset(pre, 4, 16, seed=5, shuffle_buffer=8,
                                             start_step=4), 3)  # element 16: inside pass 1
    for x, y in zip(a[4:], resumed):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    labels = np.concatenate([b["label"] for b in a])
    assert sorted(labels[:12]) == sorted(labels[12:24])  # every pass holds every example
    assert not np.array_equal(labels[:12], labels[12:24])  # in another order
