"""Device augmentations (data/device_augment.py) against the host path (data/augment.py).

Equivalence: the batched sampler draws the host's parameters exactly for the same seeds;
each batched transform equals the host op given the same parameters (float tolerance;
the max abs differences measured on CPU are in the comments); the two samplers' draws
from independent seeds have the same distributions (KS and 4-standard-error bands);
jit_compile gives the eager views; steps and replicas seed different views. Small
tensors throughout (the default suite runs on 2 shared cores).
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.data import augment, device_augment as da, pipeline
from dualssl_tf.data.sources.base import ImageSource
from dualssl_tf.data.sources.folders import folder_source

B = 12
TOL = 1e-5   # per-transform tolerance; the measured max abs diffs (CPU, 64 images) are in
             # the comments: 0 for crop/flip/gray/brightness, <= 1.7e-6 for the rest


def _seeds(n, first=7, offset=0):
    """[n, 2] int64 seeds, with large and negative values (all 64 bits matter)."""
    i = tf.range(offset, offset + n, dtype=tf.int64)
    return tf.stack([tf.fill([n], tf.constant(first, tf.int64)), i * 2_654_435_761 - 3], 1)


def _images(n=B, h=20, w=28, seed=0):
    """uint8 [n, h, w, 3] noise with flat grey, black, white and two-equal-channel pixels
    (the ties of the HSV ops)."""
    x = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3)).astype(np.uint8)
    x[:, 0, :4] = 128
    x[:, 1, :4] = 0
    x[:, 2, :4] = 255
    x[:, 3, :4, 1] = x[:, 3, :4, 0]
    return tf.constant(x)


def _floats(n=B, size=16, seed=1):
    return augment.to_float(_images(n, size, size, seed))


def _host(fn, *batches):
    """fn applied image by image (the host path), stacked."""
    return np.stack([np.asarray(fn(*(b[i] for b in batches))) for i in range(len(batches[0]))])


def _maxdiff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# -- the random numbers --------------------------------------------------------------------


def test_batched_philox_draws_equal_tf_random_per_seed():
    seeds = tf.concat([_seeds(20), tf.constant([[0, 0], [-1, -1], [2 ** 62, -5]], tf.int64)],
                      0)
    u = da.draw(lambda rng, s: rng.uniform(s, 0.08, 1.0, [10]), seeds)
    np.testing.assert_array_equal(u, _host(lambda s: tf.random.stateless_uniform(
        [10], s, 0.08, 1.0), seeds))
    scalar = da.draw(lambda rng, s: rng.uniform(s, -0.2, 0.2), seeds)
    np.testing.assert_array_equal(scalar, _host(lambda s: tf.random.stateless_uniform(
        [], s, -0.2, 0.2), seeds))
    # split: the children's words, and a draw two levels down.
    grand = da.draw(lambda rng, s: rng.uniform(rng.split(rng.split(s, 3)[2], 5)[4], 0., 1.),
                    seeds)
    np.testing.assert_array_equal(grand, _host(lambda s: tf.random.stateless_uniform(
        [], augment.split_seed(augment.split_seed(s, 3)[2], 5)[4]), seeds))
    words = da._blocks(da.seed_words(seeds), 3)
    np.testing.assert_array_equal(da.words_to_seeds(words), _host(
        lambda s: augment.split_seed(s, 3), seeds))


def test_sample_params_are_the_host_draws():
    seeds = _seeds(32)
    kw = dict(color_jitter_strength=0.7, blur=True)
    dev = da.sample_params(seeds, 40, 52, **kw)
    assert sorted(dev) == sorted(["y0", "x0", "crop_h", "crop_w", "flip", "jitter",
                                  "brightness", "contrast", "saturation", "hue", "order",
                                  "gray", "blur", "sigma"])
    host = [augment.sample_view_params(s, 40, 52, **kw) for s in seeds]
    for k, v in dev.items():
        assert v.shape[0] == 32
        # Eager: the same float32 ops on the same numbers, so exact.
        np.testing.assert_array_equal(v, np.stack([h[k] for h in host]), err_msg=k)
    assert "blur" not in da.sample_params(seeds, 40, 52)
    assert "jitter" not in da.sample_params(seeds, 40, 52, color_jitter_strength=0.0)


# -- one transform at a time, the host's parameters -----------------------------------------


def test_crop_resize_equals_host_slice_and_resize():
    imgs = _images()
    p = da.sample_params(_seeds(B), 20, 28)
    win = [p[k] for k in ("y0", "x0", "crop_h", "crop_w")]
    for size in (16, 9, 40):  # down- and up-sampling windows
        dev = da.crop_resize(imgs, *win, size)
        host = _host(lambda x, *w: augment.crop_and_resize(augment.to_float(x), w, size),
                     imgs, *win)
        assert dev.shape == (B, size, size, 3)
        assert _maxdiff(dev, host) <= 1e-6  # measured: 0 (TF's kernel arithmetic)
    # A float batch too, and the identity window.
    f = augment.to_float(imgs)
    full = da.crop_resize(f, tf.zeros([B], tf.int32), tf.zeros([B], tf.int32),
                          tf.fill([B], 20), tf.fill([B], 28), 9)
    np.testing.assert_allclose(full, tf.image.resize(f, [9, 9]), atol=1e-6)


def test_flip_and_grayscale_equal_host():
    x = _floats()
    bits = tf.constant([i % 3 == 0 for i in range(B)])
    np.testing.assert_array_equal(da.flip(x, bits), _host(
        lambda im, b: tf.reverse(im, [1]) if b else im, x, bits))
    dev = da.grayscale(x, bits)
    host = _host(lambda im, b: augment.to_grayscale(im) if b else im, x, bits)
    assert _maxdiff(dev, host) <= 1e-6  # measured: 0


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_jitter_op_equals_host_op(op):
    x = _floats()
    p = da.sample_params(_seeds(B, 3), 16, 16, color_jitter_strength=1.0)
    dev = getattr(da, op)(x, p[op])
    host = _host(lambda im, f: augment.apply_jitter_op(op, im, f), x, p[op])
    diff = _maxdiff(dev, host)
    # measured: brightness 0, contrast 3.0e-7, saturation 4.3e-7, hue 8.3e-7
    assert diff <= TOL, (op, diff)
    # Extreme factors: the clip and the saturation/hue ranges' ends.
    ends = tf.constant([0.0, 2.0, 0.0, 2.0] * (B // 4) if op != "hue"
                       else [-0.5, 0.5, 0.25, -0.25] * (B // 4))
    diff = _maxdiff(getattr(da, op)(x, ends),
                    _host(lambda im, f: augment.apply_jitter_op(op, im, f), x, ends))
    assert diff <= TOL, (op, "ends", diff)


def test_color_jitter_in_per_image_order_equals_host():
    x = _floats()
    p = da.sample_params(_seeds(B, 5), 16, 16, color_jitter_strength=1.0)
    assert len({tuple(o) for o in p["order"].numpy()}) > 3  # the orders do differ
    dev = da.color_jitter(x, p)
    host = _host(lambda im, *v: augment.apply_color_jitter(
        im, dict(zip(["brightness", "contrast", "saturation", "hue", "order"], v))),
        x, p["brightness"], p["contrast"], p["saturation"], p["hue"], p["order"])
    assert _maxdiff(dev, host) <= TOL  # measured: 1.4e-6


def test_gaussian_blur_per_image_sigma_equals_host():
    x = _floats(size=20)
    sigma = tf.linspace(0.1, 2.0, B)
    for size in (3, 5):
        dev = da.gaussian_blur(x, sigma, size)
        host = _host(lambda im, s: augment.gaussian_blur(im, s, size), x, sigma)
        assert _maxdiff(dev, host) <= TOL  # measured: 2.4e-7
    np.testing.assert_allclose(da.gaussian_kernels(sigma, 5),
                               _host(lambda s: augment.gaussian_kernel_1d(s, 5), sigma),
                               atol=1e-7)


def test_views_equal_host_two_views_for_the_same_pair_seeds():
    imgs = _images()
    seeds = da.pair_seeds(3, tf.constant(11, tf.int64), 0, B)
    for kw in (dict(color_jitter_strength=1.0, blur=True),
               dict(color_jitter_strength=0.5, blur=False)):
        v1, v2 = da.views_from_pair_seeds(imgs, seeds, 24, **kw)
        host = [augment.two_views(augment.to_float(imgs[i]), seeds[i], 24, **kw)
                for i in range(B)]
        assert v1.shape == (B, 24, 24, 3) and v1.dtype == tf.float32
        assert _maxdiff(v1, [h[0] for h in host]) <= TOL  # measured: 1.7e-6 (1.3e-6 s=0.5)
        assert _maxdiff(v2, [h[1] for h in host]) <= TOL
        assert 0.0 <= float(tf.reduce_min(v1)) and float(tf.reduce_max(v1)) <= 1.0


# -- distributions: the device sampler vs the host sampler, independent seeds ------------------

N = 1000


def _ks(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def test_device_sampler_distributions_match_host_sampler():
    kw = dict(color_jitter_strength=1.0, blur=True)
    # Host: its own seeds, the per-image sampler in a graph (map_fn: the host path).
    host_fn = tf.function(lambda s: tf.map_fn(
        lambda x: augment.sample_view_params(x, 96, 96, **kw), s,
        fn_output_signature={k: tf.TensorSpec(v.shape[1:], v.dtype) for k, v in
                             da.sample_params(_seeds(1), 96, 96, **kw).items()}))
    host = {k: v.numpy() for k, v in host_fn(_seeds(N, first=1)).items()}
    # Device: the training path's seeds (another seed, two steps, two replicas).
    parts = [da.sample_params(da.pair_seeds(2, tf.constant(st, tf.int64), r, N // 4), 96, 96,
                              **kw) for st in (0, 1) for r in (0, 1)]
    dev = {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}

    def stats(d):
        return {"area": d["crop_h"] * d["crop_w"] / 96 ** 2,
                "log_aspect": np.log(d["crop_w"] / d["crop_h"]),
                "y0": d["y0"] / 96.0,
                **{k: d[k] for k in ("brightness", "contrast", "saturation", "hue")},
                "sigma": d["sigma"], "first_op": d["order"][:, 0]}

    bound = 1.95 * math.sqrt(2 / N)  # KS critical value at alpha = 0.001
    hs, ds = stats(host), stats(dev)
    for k in hs:
        assert _ks(hs[k], ds[k]) < bound, (k, _ks(hs[k], ds[k]), bound)
    for k, p in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5)):
        band = 4 * math.sqrt(p * (1 - p) * 2 / N)
        assert abs(host[k].mean() - dev[k].mean()) < band, k
        assert abs(dev[k].mean() - p) < 4 * math.sqrt(p * (1 - p) / N), k
    # The ranges of the paper's augmentation.
    assert 0.07 <= ds["area"].min() and ds["area"].max() <= 1.0
    assert np.all(np.abs(ds["log_aspect"]) <= math.log(4 / 3) + 0.05)
    assert np.all((dev["brightness"] >= 0.2) & (dev["brightness"] <= 1.8))
    assert np.all(np.abs(dev["hue"]) <= 0.2) and np.all((dev["sigma"] >= 0.1)
                                                        & (dev["sigma"] <= 2.0))


# -- seeding, XLA --------------------------------------------------------------------------


def test_steps_and_replicas_give_different_views_same_ones_identical():
    imgs = _images(4, 16, 16)

    def views(step, replica):
        return da.device_view_pairs(imgs, 5, tf.constant(step, tf.int64), replica, 12)

    a, a2, b, c = views(3, 0), views(3, 0), views(4, 0), views(3, 1)
    for x, y in zip(a, a2):
        np.testing.assert_array_equal(x, y)
    assert _maxdiff(a[0], b[0]) > 0.05 and _maxdiff(a[0], c[0]) > 0.05
    assert _maxdiff(a[0], a[1]) > 0.05  # the two views of a pair differ
    seeds = da.pair_seeds(5, tf.constant(3, tf.int64), 0, 4).numpy()
    assert len(set(seeds[:, 0])) == 1 and list(seeds[:, 1]) == [0, 1, 2, 3]
    other = {int(da.pair_seeds(5, tf.constant(s, tf.int64), r, 1)[0, 0])
             for s in range(3) for r in range(3)}
    assert len(other) == 9


def test_jit_compile_of_the_transforms_gives_the_eager_views():
    imgs = _images(6, 20, 20)
    p = da.sample_params(_seeds(6), 20, 20, color_jitter_strength=1.0, blur=True)
    eager = da.apply_params(imgs, p, 16)
    jit = tf.function(lambda x, p: da.apply_params(x, p, 16), jit_compile=True)(imgs, p)
    # XLA fuses multiply-adds (1-ulp differences); measured max 4e-6.
    assert _maxdiff(eager, jit) <= 1e-4


# The sampler's graph (Philox on the seed tree) takes ~10 s to compile on 2 shared cores.
@pytest.mark.slow
def test_jit_compile_gives_the_eager_views():
    imgs = _images(6, 20, 20)
    step = tf.constant(9, tf.int64)
    fn = lambda x, s: da.device_view_pairs(x, 1, s, 0, 16, color_jitter_strength=1.0,  # noqa
                                           blur=True)
    eager = fn(imgs, step)
    jit = tf.function(fn, jit_compile=True)(imgs, step)
    # The integer draws are exact under XLA; fused multiply-adds give 1-ulp float
    # differences; measured max 1e-5.
    for e, j in zip(eager, jit):
        assert _maxdiff(e, j) <= 1e-4
    p_eager = da.sample_params(_seeds(6), 20, 20, blur=True)
    p_jit = tf.function(lambda s: da.sample_params(s, 20, 20, blur=True),
                        jit_compile=True)(_seeds(6))
    for k in ("y0", "x0", "crop_h", "crop_w", "flip", "jitter", "order", "gray", "blur"):
        np.testing.assert_array_equal(p_eager[k], p_jit[k], err_msg=k)


# -- the input pipeline of device views ------------------------------------------------------


def test_uint8_float_uint8_round_trip_is_exact():
    k = tf.range(256, dtype=tf.int32)
    u8 = tf.cast(k, tf.uint8)
    back = tf.image.convert_image_dtype(augment.to_float(u8), tf.uint8, saturate=True)
    np.testing.assert_array_equal(back, u8)


def _write_folder(root, sizes):
    rng = np.random.default_rng(0)
    for c, name in enumerate(("a", "b")):
        os.makedirs(root / name)
        for i, (h, w) in enumerate(sizes):
            tf.io.write_file(str(root / name / f"{i}.png"), tf.io.encode_png(
                rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return root


def test_device_pipeline_batches_uint8_images_in_the_host_order(tmp_path):
    src = folder_source(str(_write_folder(tmp_path / "f", [(12, 20), (30, 18)])))
    dev = list(pipeline.pretrain_dataset(src, 4, 8, seed=3, views_on="device").take(3))
    host = list(pipeline.pretrain_dataset(src, 4, 8, seed=3).take(3))
    assert pipeline.device_input_shape(src, 8) == (8, 8, 3)  # mixed sizes: resized
    for d, h in zip(dev, host):
        assert sorted(d) == ["image", "label"] and d["image"].dtype == tf.uint8
        assert d["image"].shape == (4, 8, 8, 3)
        np.testing.assert_array_equal(d["label"], h["label"])
    # Fixed-size images go to the device untouched (the host path's crop input).
    fixed = ImageSource("fixed", tf.data.Dataset.range(8).map(
        lambda i: (i, tf.cast(i % 2, tf.int32))), lambda i: tf.fill([10, 14, 3], tf.cast(
            i, tf.float32) / 255.0), 8, 2, image_shape=(10, 14, 3))
    (b,) = pipeline.pretrain_dataset(fixed, 8, 6, views_on="device").take(1)
    assert b["image"].shape == (8, 10, 14, 3)
    np.testing.assert_array_equal(np.sort(b["image"].numpy()[:, 0, 0, 0]), np.arange(8))


# -- --augment_on: the option, its resolution, the train step -------------------------------


def test_augment_on_option_and_resolution(tmp_path):
    from dualssl_tf import config
    from dualssl_tf.tasks.images import task as image_task

    cfg = config.TrainConfig(dataset="cifar10", model_dir=str(tmp_path / "r"))
    assert cfg.images.augment_on == "auto"
    config.validate(cfg.replace(augment_on="device"))
    with pytest.raises(config.ConfigError, match="--augment_on: got 'gpu'"):
        config.validate(cfg.replace(augment_on="gpu"))
    with pytest.raises(config.ConfigError, match="--augment_on: device needs images"):
        config.validate(cfg.replace(dataset="generated_images", augment_on="device"))

    plain = ImageSource("s", None, None, 8, 2)
    rendered = ImageSource("g", None, None, 8, 2, views=lambda *a: a)
    resolve = image_task.resolve_augment_on
    assert resolve(cfg, plain, accelerator=False) == "host"
    assert resolve(cfg, plain, accelerator=True) == "device"
    assert resolve(cfg, rendered, accelerator=True) == "host"
    assert resolve(cfg.replace(augment_on="host"), plain, accelerator=True) == "host"
    assert resolve(cfg.replace(augment_on="device"), plain, accelerator=False) == "device"
    with pytest.raises(config.ConfigError, match="--augment_on:"):
        resolve(cfg.replace(augment_on="device"), rendered)
    # A run already in --model_dir keeps what it resolved (resume on another machine).
    os.makedirs(tmp_path / "r")
    (tmp_path / "r" / "run.json").write_text('{"images": {"augment_on": "device"}}')
    assert resolve(cfg, plain, accelerator=False) == "device"
    (tmp_path / "r" / "run.json").write_text('{"images": {"stem": "cifar"}}')  # older run
    assert resolve(cfg, plain, accelerator=True) == "host"


# SimSiam (the same base-class hook through another forward) is slow-marked: ~9 s a fit.
@pytest.mark.parametrize("method", ["contrastive",
                                    pytest.param("simsiam", marks=pytest.mark.slow)])
def test_fit_makes_device_views_in_the_step(method):
    import keras

    from dualssl_tf.methods.byol import SimSiamMethod
    from dualssl_tf.methods.contrastive import ContrastiveMethod

    encoder = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3),
                                keras.layers.GlobalAveragePooling2D()])
    head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    model = (ContrastiveMethod(encoder, head, loss="ntxent") if method == "contrastive"
             else SimSiamMethod(encoder, head, predictor="none"))
    seen = []

    def views(x, step, replica):
        seen.append(x.dtype)
        return da.device_view_pairs(x, 4, step, replica, 12, color_jitter_strength=0.5)

    model.device_views = views
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    data = tf.data.Dataset.from_tensors({"image": _images(8, 16, 16)}).repeat()
    hist = model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][-1]) and tf.uint8 in seen
    assert int(model.optimizer.iterations) == 3
    model.device_views = None
    with pytest.raises(ValueError, match="device_views"):
        model.make_views({"image": _images(2, 16, 16)})


# Two ResNet runs and a resume through the trainer (~60 s): slow. The fast tests above pin
# the pieces: the views are a function of (seed, step, replica), the step is the
# checkpointed optimizer's.
@pytest.mark.slow
def test_trainer_device_views_finite_and_resume_bit_identical(tmp_path):
    import json

    from tests.tiny_runs import TINY_IMAGES, ckpt_tensors, metrics_bytes, train

    root = _write_folder(tmp_path / "imgs", [(16, 16)] * 16)
    base = TINY_IMAGES.replace(dataset="folder", data_dir=str(root), augment_on="device",
                               color_jitter_strength=0.5, blur=True)
    ref, run = tmp_path / "ref", tmp_path / "run"
    out = train(ref, base=base, epochs=2)
    assert np.isfinite(out["final"]["loss"])
    meta = json.loads((ref / "run.json").read_text())["images"]
    assert meta["augment_on"] == "device" and meta["device_input_shape"] == [16, 16, 3]
    train(run, base=base, epochs=1)
    train(run, base=base, epochs=2)  # resumes at step 5 (epoch 1's checkpoint)
    assert metrics_bytes(ref) == metrics_bytes(run)
    a, b = ckpt_tensors(ref, 2), ckpt_tensors(run, 2)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
