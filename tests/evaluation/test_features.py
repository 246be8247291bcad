"""Feature extraction through an export (pooling, uint8, unlabelled examples), the .npz
cache and its invalidation, and bad datasets."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.evaluation import export, features

SHAPE = (6, 6, 3)


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inp = keras.Input(SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same", name="block1")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    enc = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h), name="enc")
    path = str(tmp_path_factory.mktemp("probe") / "saved_model")
    export.export_encoder(enc, None, path, SHAPE, intermediate_layers=["block1"])
    return enc, path


def _image_ds(n, seed, batch=8):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, *SHAPE)).astype(np.float32)
    y = rng.integers(0, 3, n)
    return x, y, tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def test_extract_features_matches_encoder_and_pools_maps(image_export):
    enc, path = image_export
    loaded = export.load_encoder(path)
    x, y, ds = _image_ds(20, 0)
    feats, labels = features.extract_features(loaded, ds, verbose=0)
    np.testing.assert_allclose(feats, enc(x, training=False).numpy(), atol=1e-6)
    np.testing.assert_array_equal(labels, y)
    block, _ = features.extract_features(loaded, ds, output="block1", verbose=0)
    expected = enc.get_layer("block1")(x).numpy().mean(axis=(1, 2))   # spatial mean
    np.testing.assert_allclose(block, expected, atol=1e-5)
    # uint8 images are scaled to [0, 1].
    x8 = (x * 255).round().astype(np.uint8)
    ds8 = tf.data.Dataset.from_tensor_slices((x8, y)).batch(8)
    feats8, _ = features.extract_features(loaded, ds8, verbose=0)
    np.testing.assert_allclose(feats8, enc(x8 / 255.0, training=False).numpy(), atol=1e-5)


def test_pool_features_modes():
    maps = tf.reshape(tf.range(2 * 3 * 4 * 5, dtype=tf.float32), [2, 3, 4, 5])
    assert features.pool_features(maps).shape == (2, 5)                 # spatial mean
    assert features.pool_features(maps, "flatten").shape == (2, 60)
    assert features.pool_features(tf.zeros([2, 3, 4]), "auto").shape == (2, 12)
    assert features.pool_features(tf.zeros([2, 3, 4]), "mean").shape == (2, 4)
    with pytest.raises(ValueError, match="pool"):
        features.pool_features(maps, "max")
    x, y = features.split_element({"image": 1, "label": 2})
    assert (x, y) == (1, 2)
    with pytest.raises(ValueError, match="'image'"):
        features.split_element({"pixels": 1, "label": 2})


def test_extract_features_drops_unlabelled(image_export):
    enc, path = image_export
    x, y, _ = _image_ds(10, 3)
    y = np.where(np.arange(10) % 3 == 0, -1, y)      # label -1: unlabelled
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    feats, labels = features.extract_features(export.load_encoder(path), ds, verbose=0)
    keep = y >= 0
    np.testing.assert_array_equal(labels, y[keep])
    np.testing.assert_allclose(feats, enc(x[keep], training=False).numpy(), atol=1e-6)


def test_feature_cache_is_shared_and_invalidated_by_reexport(image_export, tmp_path,
                                                             monkeypatch):
    enc, src = image_export
    path = str(tmp_path / "sm")
    export.export_encoder(enc, None, path, SHAPE)
    loaded = export.load_encoder(path)
    _, _, ds = _image_ds(12, 1)
    first = features.cached_features(loaded, ds, "toy", "train", verbose=0)
    cache = features.feature_cache_path(path, "toy", "train")
    assert os.path.exists(cache) and os.path.dirname(cache) == str(tmp_path / "feature_cache")

    def no_extraction(*args, **kwargs):
        raise AssertionError("features should come from the cache")
    monkeypatch.setattr(features, "extract_features", no_extraction)
    again = features.cached_features(loaded, ds, "toy", "train", verbose=0)
    np.testing.assert_array_equal(again[0], first[0])
    assert features.feature_cache_path(path, "toy", "test") != cache
    monkeypatch.undo()

    # The key is the SavedModel's content fingerprint: the same weights re-exported keep
    # the cache, changed weights invalidate it.
    export.export_encoder(enc, None, path, SHAPE)
    assert features.feature_cache_path(path, "toy", "train") == cache
    kernel = enc.get_layer("block1").kernel
    old = kernel.numpy()
    kernel.assign(old + 0.1)
    try:
        export.export_encoder(enc, None, path, SHAPE)
    finally:
        kernel.assign(old)
    assert features.feature_cache_path(path, "toy", "train") != cache


def test_dataset_shape_mismatch_and_empty_split(image_export):
    _, path = image_export
    loaded = export.load_encoder(path)
    wrong = tf.data.Dataset.from_tensor_slices(
        (np.zeros([4, 8, 8, 3], np.float32), np.zeros([4], np.int64))).batch(2)
    with pytest.raises(ValueError, match=r"--dataset: image size or channels \(8, 8, 3\)"):
        features.extract_features(loaded, wrong, verbose=0)
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros([0, *SHAPE], np.float32), np.zeros([0], np.int64))).batch(2)
    with pytest.raises(ValueError, match="empty"):
        features.extract_features(loaded, empty, verbose=0)
