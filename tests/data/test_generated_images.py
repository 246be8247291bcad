"""Tests of the generated image data set: latent factors, rendering, views."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.data import generated_images as gen


def test_factor_ranges_and_contrast():
    f = np.stack([gen.sample_factors(tf.constant([0, i])).numpy() for i in range(200)])
    assert f[:, :2].min() >= 0.3 and f[:, :2].max() <= 0.7
    assert f[:, 2].min() >= 0.2 and f[:, 2].max() <= 0.35
    luma = f[:, 3:6] @ np.array([0.2989, 0.587, 0.114])
    gap = np.abs(f[:, 6] - luma)
    # Background is luma + U(0.3, 0.7) modulo 1: at least 0.3 away either way round.
    assert np.all(np.minimum(gap, 1 - gap) >= 0.3 - 1e-5)


def test_render_colours_and_disc_area():
    size = 64
    factors = tf.constant([0.5, 0.5, 0.3, 0.9, 0.1, 0.2, 0.6])
    img = gen.render(0, factors, size).numpy()
    obj = np.all(np.isclose(img, [0.9, 0.1, 0.2], atol=1e-6), axis=-1)
    bg = np.all(np.isclose(img, 0.6, atol=1e-6), axis=-1)
    assert np.all(obj | bg)
    # Disc of radius 0.3 * 64 pixels.
    assert obj.sum() == pytest.approx(math.pi * (0.3 * size) ** 2, rel=0.03)
    square = gen.render(1, factors, size).numpy()
    assert np.all(np.isclose(square, [0.9, 0.1, 0.2]), axis=-1).sum() == pytest.approx(
        (2 * 0.85 * 0.3 * size) ** 2, rel=0.05)


def test_every_shape_is_distinct_and_nonempty():
    masks = gen.shape_masks(tf.constant([0.5, 0.5, 0.3, 0, 0, 0, 0]), 32).numpy()
    assert masks.shape == (6, 32, 32)
    assert np.all(masks.sum(axis=(1, 2)) > 20)
    flat = masks.reshape(6, -1)
    for i in range(6):
        for j in range(i + 1, 6):
            assert np.abs(flat[i] - flat[j]).sum() > 10


def test_labels_balanced_and_deterministic():
    data = gen.GeneratedImages(image_size=16, num_classes=4, seed=3)
    labels = np.array([int(data.label(tf.constant(i, tf.int64))) for i in range(400)])
    assert set(labels) == {0, 1, 2, 3}
    counts = np.bincount(labels, minlength=4)
    assert np.all(np.abs(counts - 100) < 4 * math.sqrt(400 * 0.25 * 0.75))
    again = gen.GeneratedImages(image_size=16, num_classes=4, seed=3)
    img1, l1, f1 = data.example(tf.constant(7, tf.int64))
    img2, l2, f2 = again.example(tf.constant(7, tf.int64))
    np.testing.assert_array_equal(img1.numpy(), img2.numpy())
    assert int(l1) == int(l2)


def test_views_keep_class_change_factors():
    data = gen.GeneratedImages(image_size=32, noise=0.0, seed=1)
    i = tf.constant(11, tf.int64)
    v1, v2 = data.views(i, tf.constant([4, 4], tf.int64))
    assert v1.shape == v2.shape == (32, 32, 3)
    assert np.abs(v1.numpy() - v2.numpy()).max() > 0.1
    # Re-rendering each view from its factors with the example's class reproduces it.
    s = tf.random.experimental.stateless_split(tf.constant([4, 4], tf.int64), 4)
    np.testing.assert_allclose(
        v2.numpy(), gen.render(data.label(i), gen.sample_factors(s[2]), 32).numpy())


def test_splits_and_errors():
    data = gen.GeneratedImages(image_size=16, num_examples=10, num_test=4)
    assert int(data.indices("train").cardinality()) == 10
    test_idx = list(data.indices("test").as_numpy_iterator())
    assert len(test_idx) == 4 and min(test_idx) == gen.SPLIT_OFFSETS["test"]
    with pytest.raises(ValueError, match="num_classes"):
        gen.GeneratedImages(num_classes=9)
    with pytest.raises(ValueError, match="split"):
        data.indices("val")
