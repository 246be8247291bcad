"""Multi-crop views (issue 24 part 2): local crops on the host, on the device and from the
generated shapes, drawn from new child seeds of each pair seed, so the two global views
are those of a run without local crops; the device's local crops equal the host's for the
same pair seeds (the shared sampler); the options resolve once, TensorFlow-free."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config
from dualssl_tf.data import augment, device_augment as da, pipeline
from dualssl_tf.data.sources.base import ImageSource
from dualssl_tf.data.sources.generated import generated_source
from dualssl_tf.data.generated_images import GeneratedImages
from dualssl_tf.tasks.images import local_view_settings

TOL = 1e-5   # as tests/data/test_device_augment.py: the batched transforms vs the host ops
LOCAL = {"num": 3, "size": 6, "kwargs": {"color_jitter_strength": 0.5, "blur": True,
                                         "blur_prob": 0.5, "area_range": (0.05, 0.4),
                                         "flip_prob": 0.5, "solarize_prob": 0.0}}


def _source(n=8, h=12, w=14):
    rng = np.random.default_rng(0)
    pixels = tf.constant(rng.integers(0, 256, (n, h, w, 3)).astype(np.uint8))
    return ImageSource(
        "noise", tf.data.Dataset.range(n).map(lambda i: (i, tf.cast(i % 2, tf.int32))),
        lambda i: augment.to_float(tf.gather(pixels, i)), n, 2, image_shape=(h, w, 3)), pixels


def test_host_local_crops_leave_the_global_views_and_draw_new_children():
    src, pixels = _source()
    plain = next(iter(pipeline.pretrain_dataset(src, 4, 8, seed=5, shuffle_buffer=1)))
    multi = next(iter(pipeline.pretrain_dataset(src, 4, 8, seed=5, shuffle_buffer=1,
                                              local=LOCAL)))
    assert sorted(multi) == ["label", "local_views", "view1", "view2"]
    np.testing.assert_array_equal(multi["view1"], plain["view1"])   # byte-identical
    np.testing.assert_array_equal(multi["view2"], plain["view2"])
    assert multi["local_views"].shape == (4, 3, 6, 6, 3)
    # Element i (shuffle buffer 1: the source order) from pair seed (5, i): crop j is a
    # SimCLR view from child 2 + j.
    for i in (0, 3):
        seed = tf.constant([5, i], tf.int64)
        children = augment.split_seed(seed, 5)
        for j in (0, 2):
            want = augment.simclr_view(augment.to_float(pixels[i]), children[2 + j], 6,
                                       **LOCAL["kwargs"])
            np.testing.assert_array_equal(multi["local_views"][i, j], want)
    # Crops differ from one another (their own seeds).
    assert float(tf.reduce_max(tf.abs(multi["local_views"][:, 0]
                                      - multi["local_views"][:, 1]))) > 0.05


def test_device_local_crops_equal_the_host_for_the_same_pair_seeds():
    _, pixels = _source()
    seeds = da.pair_seeds(3, tf.constant(11, tf.int64), 0, 8)
    got = da.local_views_from_pair_seeds(pixels, seeds, 3, 6, **LOCAL["kwargs"])
    assert got.shape == (8, 3, 6, 6, 3) and got.dtype == tf.float32
    host = np.stack([augment.local_views(augment.to_float(pixels[i]), seeds[i], 6, 3,
                                         **LOCAL["kwargs"]) for i in range(8)])
    diff = float(np.max(np.abs(got.numpy() - host)))
    assert diff <= TOL, diff   # measured on CPU: ~1e-6 (jitter/blur float order)
    # The global views of device_multi_crop are device_view_pairs' exactly.
    kw = {k: v for k, v in LOCAL["kwargs"].items() if k not in ("color_jitter_strength",
                                                                 "blur")}
    v1, v2, local = da.device_multi_crop(pixels, 3, tf.constant(11, tf.int64), 0, 8, LOCAL,
                                         0.5, True, **kw)
    w1, w2 = da.device_view_pairs(pixels, 3, tf.constant(11, tf.int64), 0, 8, 0.5, True,
                                  **kw)
    np.testing.assert_array_equal(v1, w1)
    np.testing.assert_array_equal(v2, w2)
    np.testing.assert_array_equal(local, got)


@pytest.mark.slow
def test_generated_local_crops_leave_the_global_views():
    data = GeneratedImages(image_size=16, num_examples=16, num_test=8, seed=2)
    src = generated_source(data)
    plain = next(iter(pipeline.pretrain_dataset(src, 2, 16, seed=1, shuffle_buffer=1)))
    multi = next(iter(pipeline.pretrain_dataset(src, 2, 16, seed=1, shuffle_buffer=1,
                                              local=LOCAL)))
    np.testing.assert_array_equal(multi["view1"], plain["view1"])
    np.testing.assert_array_equal(multi["view2"], plain["view2"])
    crops = multi["local_views"].numpy()
    assert crops.shape == (2, 3, 6, 6, 3) and 0 <= crops.min() and crops.max() <= 1
    assert np.max(np.abs(crops[:, 0] - crops[:, 1])) > 0.05


def test_local_view_settings_resolve_once():
    o = config.TrainConfig(dataset="cifar10", method="dino", local_crops=6,
                           local_crop_size=18, local_crop_area="0.08,0.5",
                           color_jitter_strength=0.5).images
    s = local_view_settings(o, 32)
    assert (s["num"], s["size"], s["kwargs"]["area_range"]) == (6, 18, (0.08, 0.5))
    assert s["kwargs"]["color_jitter_strength"] == 0.5 and s["kwargs"]["solarize_prob"] == 0
    d = local_view_settings(config.TrainConfig(local_crops=8).images, 224)
    assert (d["size"], d["kwargs"]["area_range"]) == (96, (0.05, 0.4))   # DINO's
    assert local_view_settings(config.TrainConfig().images, 32) is None


def test_device_views_hook_gives_the_method_its_local_crops():
    """--augment_on=device: the hook returns (view1, view2, local_views) and the step's
    batch carries them (SSLMethod.make_views)."""
    import keras

    from dualssl_tf.methods.dino import DINOMethod, dino_head

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    encoder = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    model = DINOMethod(encoder, dino_head(4, out_dim=6, hidden_dim=8, bottleneck_dim=3),
                       warmup_teacher_temp_epochs=0)
    kw = {k: v for k, v in LOCAL["kwargs"].items() if k not in ("color_jitter_strength",
                                                                 "blur")}
    model.device_views = functools.partial(
        lambda images_, step, replica: da.device_multi_crop(
            images_, 3, step, replica, 8, LOCAL, 0.5, True, **kw))
    _, pixels = _source()
    batch = model.make_views({"image": pixels})
    assert batch["local_views"].shape == (8, 3, 6, 6, 3)
    assert model.forward(batch, training=False)["student"].shape == (8 * 5, 6)
