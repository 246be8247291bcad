"""Tests of the SimCLR augmentations: ranges, shapes, probabilities, determinism, blur."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.data import augment

N = 400  # images per probability test; 4-sigma bands below


def _image(h=20, w=28, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(size=(h, w, 3)), tf.float32)


def _seeds(n, offset=0):
    return tf.stack([tf.fill([n], 7), tf.range(offset, offset + n)], axis=1)


@tf.function
def _batch(images, seeds, size, **kw):
    return augment.augment_batch(images, seeds, size, **kw)


def _band(p, n=N):
    return 4 * math.sqrt(p * (1 - p) / n)


def test_view_shape_range_and_determinism():
    img = _image(33, 47)
    v1 = augment.simclr_view(img, tf.constant([1, 2]), 24, color_jitter_strength=1.0,
                             blur=True)
    v2 = augment.simclr_view(img, tf.constant([1, 2]), 24, color_jitter_strength=1.0,
                             blur=True)
    v3 = augment.simclr_view(img, tf.constant([1, 3]), 24, color_jitter_strength=1.0,
                             blur=True)
    assert v1.shape == (24, 24, 3) and v1.dtype == tf.float32
    np.testing.assert_array_equal(v1.numpy(), v2.numpy())
    assert np.abs(v1.numpy() - v3.numpy()).max() > 1e-3
    a, b = augment.two_views(img, tf.constant([5, 5]), 16, color_jitter_strength=0.5)
    assert a.shape == b.shape == (16, 16, 3)
    assert np.abs(a.numpy() - b.numpy()).max() > 1e-3


def test_batch_range_and_shape_full_pipeline():
    imgs = tf.tile(_image(32, 32)[None], [64, 1, 1, 1])
    # Extreme pixel values too: jitter must not leave [0, 1].
    imgs = tf.concat([imgs, tf.ones([8, 32, 32, 3]), tf.zeros([8, 32, 32, 3])], axis=0)
    out = _batch(imgs, _seeds(80), 16, color_jitter_strength=2.0, blur=True).numpy()
    assert out.shape == (80, 16, 16, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    # Batched result equals the single-image function with the same seed.
    single = augment.simclr_view(imgs[3], _seeds(80)[3], 16, color_jitter_strength=2.0,
                                 blur=True)
    np.testing.assert_allclose(out[3], single.numpy(), atol=1e-6)


def test_crop_window_bounds_and_scale():
    window = tf.function(lambda s: tf.stack(augment.crop_window(60, 80, s)))
    areas, ratios = [], []
    for i in range(200):
        y0, x0, h, w = window(tf.constant([3, i])).numpy()
        assert 0 <= y0 and y0 + h <= 60 and 0 <= x0 and x0 + w <= 80
        areas.append(h * w / (60 * 80))
        ratios.append(w / h)
    areas, ratios = np.array(areas), np.array(ratios)
    # Rounding to whole pixels widens the ranges slightly.
    assert areas.min() >= 0.07 and areas.max() <= 1.0
    assert ratios.min() >= 0.70 and ratios.max() <= 1.40
    # Roughly uniform area: mean of U(0.08, 1) is 0.54 (rejections bias it a little lower).
    assert 0.40 < areas.mean() < 0.62


def test_crop_full_window_resize_is_identity():
    img = _image(16, 16)
    out = augment.random_resized_crop(img, tf.constant([0, 0]), 16, area_range=(1.0, 1.0),
                                      aspect_range=(1.0, 1.0))
    np.testing.assert_allclose(out.numpy(), img.numpy(), atol=1e-6)


def test_flip_probability():
    img = _image(8, 8)
    out = _batch(tf.tile(img[None], [N, 1, 1, 1]), _seeds(N), 8, crop=False,
                 color_jitter_strength=0.0, grayscale_prob=0.0).numpy()
    flipped = np.all(np.isclose(out, img.numpy()[:, ::-1][None]), axis=(1, 2, 3))
    same = np.all(np.isclose(out, img.numpy()[None]), axis=(1, 2, 3))
    assert np.all(flipped ^ same)
    assert abs(flipped.mean() - 0.5) < _band(0.5)


def test_grayscale_probability_and_values():
    img = _image(8, 8)
    out = _batch(tf.tile(img[None], [N, 1, 1, 1]), _seeds(N), 8, crop=False, flip=False,
                 color_jitter_strength=0.0, grayscale_prob=0.2).numpy()
    gray = np.all(np.isclose(out[..., 0], out[..., 1]) & np.isclose(out[..., 1],
                                                                     out[..., 2]),
                  axis=(1, 2))
    assert abs(gray.mean() - 0.2) < _band(0.2)
    luma = img.numpy() @ np.array([0.2989, 0.587, 0.114])
    np.testing.assert_allclose(out[gray][0, ..., 0], luma, atol=2e-3)
    np.testing.assert_allclose(out[~gray][0], img.numpy(), atol=1e-6)


def test_color_jitter_probability():
    img = _image(8, 8)
    out = _batch(tf.tile(img[None], [N, 1, 1, 1]), _seeds(N), 8, crop=False, flip=False,
                 color_jitter_strength=1.0, grayscale_prob=0.0).numpy()
    changed = np.abs(out - img.numpy()[None]).max(axis=(1, 2, 3)) > 1e-4
    assert abs(changed.mean() - 0.8) < _band(0.8)


def test_blur_probability():
    img = _image(40, 40)
    out = _batch(tf.tile(img[None], [N, 1, 1, 1]), _seeds(N), 40, crop=False, flip=False,
                 color_jitter_strength=0.0, grayscale_prob=0.0, blur=True).numpy()
    changed = np.abs(out - img.numpy()[None]).max(axis=(1, 2, 3)) > 1e-4
    assert abs(changed.mean() - 0.5) < _band(0.5)


def test_brightness_is_a_bounded_multiplicative_factor():
    img = _image(6, 6) * 0.5  # no clipping at factor <= 1.8 * 0.5 < 1
    for i in range(20):
        out = augment._jitter_op("brightness", img, tf.constant([i, 1]), 1.0).numpy()
        factor = out / img.numpy()
        np.testing.assert_allclose(factor, factor.flat[0], rtol=1e-5)
        assert 0.2 <= factor.flat[0] <= 1.8


def test_color_jitter_strength_zero_is_identity():
    img = _image(6, 6)
    np.testing.assert_array_equal(augment.color_jitter(img, tf.constant([1, 1]), 0.0), img)


def test_color_jitter_order_varies_with_seed():
    # With ops fixed per seed index but the order random, the same per-op seeds give
    # different results for different orders: check several seeds give >1 distinct order.
    orders = set()
    for i in range(30):
        s = augment.split_seed(tf.constant([0, i]), 5)
        orders.add(tuple(tf.argsort(augment._uniform(s[-1], 0.0, 1.0, [4])).numpy()))
    assert len(orders) > 5


def test_blur_kernel_sums_to_one_and_matches_gaussian():
    assert augment.blur_kernel_size(96) == 9 and augment.blur_kernel_size(32) == 3
    k = augment.gaussian_kernel_1d(1.3, 9).numpy()
    x = np.arange(-4, 5)
    ref = np.exp(-x ** 2 / (2 * 1.3 ** 2))
    np.testing.assert_allclose(k, ref / ref.sum(), rtol=1e-5)
    assert abs(k.sum() - 1) < 1e-6


def test_blur_impulse_response_and_constant_image():
    img = np.zeros((15, 15, 3), np.float32)
    img[7, 7, :] = 1.0
    out = augment.gaussian_blur(tf.constant(img), 1.0, 5).numpy()
    k = augment.gaussian_kernel_1d(1.0, 5).numpy()
    np.testing.assert_allclose(out[5:10, 5:10, 1], np.outer(k, k), atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=(0, 1)), [1, 1, 1], atol=1e-5)
    const = augment.gaussian_blur(tf.fill([10, 10, 3], 0.3), 2.0, 5).numpy()
    np.testing.assert_allclose(const, 0.3, atol=1e-6)  # reflect padding: no dark border


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_hue_and_saturation_keep_range(strength):
    img = _image(10, 10)
    for name in ("contrast", "saturation", "hue"):
        out = augment._jitter_op(name, img, tf.constant([2, 9]), strength).numpy()
        assert out.min() >= 0 and out.max() <= 1 and out.shape == (10, 10, 3)
