"""The augmentation controls (issue 21): crop area, flip probability, per-view blur and
solarisation, the presets; host path (data/augment.py) and device path
(data/device_augment.py) alike.

Default views are those before the controls existed (numbers recorded on main); the new
settings' distributions are checked by two-sample KS and binomial bands with fixed seeds
on both paths; the device's views with the new transforms equal the host's.
"""

import dataclasses
import math
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config
from dualssl_tf.data import augment, device_augment as da
from dualssl_tf.tasks import images as image_options

N = 1000
# validate() checks that a model dir could be written; nothing is written there.
MODEL_DIR = os.path.join(tempfile.gettempdir(), "augment_options_unused")


def _seeds(n, first=7):
    i = tf.range(n, dtype=tf.int64)
    return tf.stack([tf.fill([n], tf.constant(first, tf.int64)), i * 2_654_435_761 - 3], 1)


def _settings(**flags):
    """view_settings of a cifar10 config with these flags (validated as train.py does)."""
    cfg = config.TrainConfig(dataset="cifar10", model_dir=MODEL_DIR, **flags)
    config.validate(cfg)
    return image_options.view_settings(cfg.images)


def _band(p, n):
    """4 binomial standard errors of a rate p over n draws (two-sided p ~ 6e-5)."""
    return 4 * math.sqrt(p * (1 - p) / n)


def _ks(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


KS_BOUND = 1.95 * math.sqrt(2 / N)  # two-sample KS critical value at alpha = 0.001


# -- the defaults are the views of before -------------------------------------------------

# Per view (image i's view 1, view 2, for i = 0..3): its mean and its dot product with
# sin(0..1727) over [24, 24, 3], computed on main before the controls existed (the host
# path of commit 2ece691) for 4 uint8 images of 20 x 28 and pair seeds (3, i * 2654435761
# - 3). A changed random draw (another crop, flip, order, a new draw in the stream) moves
# these by 1e-2 .. 1; float rounding of another CPU's kernels by at most ~2e-6 a pixel
# (the device path's largest difference from the host, test_device_augment.py), so
# 1728 * 2e-6 ~ 3.5e-3 for the dot product and 2e-6 for the mean.
RECORDED = {
    "no_blur": [[0.120044, -0.04435], [0.857031, 1.00417], [0.49426, 0.13788],
                [0.550445, -3.49061], [0.245767, -1.06388], [0.65327, -0.51579],
                [0.495194, -0.13214], [0.819101, -1.34826]],
    "blur_s05": [[0.318137, -0.83695], [0.733792, 1.98177], [0.509829, -0.07089],
                 [0.52742, 0.27554], [0.349023, -1.09306], [0.570521, -0.32198],
                 [0.496608, -0.13198], [0.670341, 0.30359]],
}


def _recorded_inputs():
    x = np.random.default_rng(0).integers(0, 256, (4, 20, 28, 3)).astype(np.uint8)
    seeds = tf.constant([[3, i * 2_654_435_761 - 3] for i in range(4)], tf.int64)
    return x, seeds


def _summary(views):
    w = np.sin(np.arange(24 * 24 * 3)).reshape(24, 24, 3)
    return np.array([[np.mean(v), np.sum(np.asarray(v, np.float64) * w)] for v in views])


@pytest.mark.parametrize("case,flags", [("no_blur", {}),
                                        ("blur_s05", {"color_jitter_strength": 0.5,
                                                      "blur": True})])
def test_default_settings_give_the_views_recorded_before_the_controls(case, flags):
    x, seeds = _recorded_inputs()
    settings = _settings(**flags)  # what a config without the new flags resolves to
    host = []
    for i in range(4):
        host += augment.two_views(augment.to_float(tf.constant(x[i])), seeds[i], 24,
                                  **settings)
    d1, d2 = da.views_from_pair_seeds(tf.constant(x), seeds, 24, **settings)
    dev = [v for pair in zip(d1, d2) for v in pair]
    want = np.array(RECORDED[case])
    for got in (_summary(host), _summary(dev)):
        np.testing.assert_allclose(got[:, 0], want[:, 0], atol=1e-5)  # 6 decimals recorded
        np.testing.assert_allclose(got[:, 1], want[:, 1], atol=5e-3)


def test_default_settings_are_simclr_view_defaults():
    s = _settings()
    assert s == {"color_jitter_strength": 1.0, "blur": False, "blur_prob": (0.5, 0.5),
                 "area_range": (0.08, 1.0), "flip_prob": 0.5, "solarize_prob": (0.0, 0.0)}
    kw1, kw2 = augment.per_view(s)
    assert kw1 == kw2 == {"color_jitter_strength": 1.0, "blur": False, "blur_prob": 0.5,
                          "area_range": (0.08, 1.0), "flip_prob": 0.5, "solarize_prob": 0.0}
    # Solarisation at p 0 is not drawn at all: the sampler's keys are the old ones.
    p = augment.sample_view_params(tf.constant([1, 2]), 20, 20, **kw1)
    assert "solarize" not in p and "blur" not in p


def test_eighth_seed_leaves_the_first_seven_unchanged():
    # stateless_split's child k is Philox block k of the seed whatever the count, so the
    # sampler's 8-way split (solarisation's seed added) keeps the 7 seeds it had before.
    for seed in _seeds(20).numpy().tolist() + [[0, 0], [-1, 2 ** 62]]:
        seven = augment.split_seed(tf.constant(seed), 7)
        eight = augment.split_seed(tf.constant(seed), 8)
        np.testing.assert_array_equal(eight[:7], seven)


# -- presets and flags --------------------------------------------------------------------


def test_presets_and_explicit_flags():
    byol = _settings(augment_preset="byol")
    assert byol["blur_prob"] == (1.0, 0.1) and byol["solarize_prob"] == (0.0, 0.2)
    assert byol["blur"] is False  # the CIFAR recipe: blur only with --blur
    assert _settings(augment_preset="byol", blur=True)["blur"] is True
    assert _settings(augment_preset="simsiam")["area_range"] == (0.2, 1.0)
    s = _settings(augment_preset="byol", crop_area="0.3,1", flip_prob=0.0,
                  blur_prob="0.25", solarize_prob="0.1,0")
    assert s["area_range"] == (0.3, 1.0) and s["flip_prob"] == 0.0
    assert s["blur"] is True and s["blur_prob"] == (0.25, 0.25)  # --blur_prob turns it on
    assert s["solarize_prob"] == (0.1, 0.0)


@pytest.mark.parametrize("flags,message", [
    ({"crop_area": "0,1"}, "--crop_area: expected MIN,MAX area fractions with 0 < MIN"),
    ({"crop_area": "0.9,0.5"}, "--crop_area: expected MIN,MAX"),
    ({"crop_area": "0.5,1.5"}, "--crop_area: expected MIN,MAX"),
    ({"crop_area": "0.5"}, "--crop_area: expected MIN,MAX"),
    ({"crop_area": "a,b"}, "--crop_area: expected MIN,MAX"),
    ({"flip_prob": 1.5}, "--flip_prob: must be in [0, 1], got 1.5"),
    ({"flip_prob": -0.1}, "--flip_prob: must be in [0, 1]"),
    ({"blur_prob": "1,-0.1"}, "--blur_prob: expected a probability in [0, 1], or one per "
                              "view as P1,P2"),
    ({"blur_prob": "nan"}, "--blur_prob: expected a probability"),
    ({"solarize_prob": "0,0.2,0.3"}, "--solarize_prob: expected a probability"),
    ({"augment_preset": "moco"}, "--augment_preset: got 'moco'; allowed: simclr, byol, "
                                 "simsiam"),
])
def test_bad_settings_name_the_flag(flags, message):
    with pytest.raises(config.ConfigError) as e:
        _settings(**flags)
    assert str(e.value).startswith(message), str(e.value)


def test_generated_images_refuse_augmentation_settings():
    cfg = config.TrainConfig(dataset="generated_images", model_dir=MODEL_DIR)
    config.validate(cfg)
    for flag, value in (("augment_preset", "byol"), ("crop_area", "0.3,1"),
                        ("flip_prob", 0.0), ("blur_prob", "1"), ("solarize_prob", "0,0.2")):
        with pytest.raises(config.ConfigError, match=f"--{flag}: --dataset=generated_images "
                                                     "renders its own views"):
            config.validate(cfg.replace(**{flag: value}))


# -- the transforms -----------------------------------------------------------------------


def test_solarize_by_hand_and_device_equals_host():
    x = tf.constant([0.0, 0.2, 0.4999, 0.5, 0.7, 1.0])
    np.testing.assert_allclose(augment.solarize(x), [0.0, 0.2, 0.4999, 0.5, 0.3, 0.0],
                               atol=1e-7)
    # uint8 127 stays, 128 becomes 127/255: PIL's solarize at 128.
    u = augment.to_float(tf.constant([127, 128], tf.uint8))
    np.testing.assert_allclose(augment.solarize(u) * 255, [127, 127], atol=1e-4)
    imgs = augment.to_float(tf.constant(np.random.default_rng(2).integers(
        0, 256, (4, 6, 6, 3)).astype(np.uint8)))
    bits = tf.constant([True, False, True, False])
    dev = da.solarize(imgs, bits)
    for i in range(4):
        want = augment.solarize(imgs[i]) if bits[i] else imgs[i]
        np.testing.assert_array_equal(dev[i], want)


BYOL_LIKE = dict(color_jitter_strength=0.5, blur=True, blur_prob=(1.0, 0.1),
                 solarize_prob=(0.0, 0.2), area_range=(0.3, 1.0), flip_prob=0.3)


def test_device_views_with_the_new_transforms_equal_host():
    imgs = tf.constant(np.random.default_rng(4).integers(0, 256, (12, 20, 28, 3))
                       .astype(np.uint8))
    seeds = da.pair_seeds(3, tf.constant(11, tf.int64), 0, 12)
    v1, v2 = da.views_from_pair_seeds(imgs, seeds, 24, **BYOL_LIKE)
    host = [augment.two_views(augment.to_float(imgs[i]), seeds[i], 24, **BYOL_LIKE)
            for i in range(12)]
    p = da.pair_params(seeds, 20, 28, **BYOL_LIKE)
    assert p["solarize"].numpy()[12:].any()  # some second views are solarised
    for dev, v in ((v1, 0), (v2, 1)):
        # The per-transform tolerance of test_device_augment.py (measured 1.7e-6 there).
        diff = np.max(np.abs(np.asarray(dev) - np.stack([h[v] for h in host])))
        assert diff <= 1e-5, (v, diff)


def _host_pair_params(seeds, h, w, **kwargs):
    """The host sampler per pair seed (in a graph, as the tf.data pipeline runs it):
    view v from split(seed, 2)[v] with per_view's kwargs; dict of [2n] (view 1s then 2s;
    a transform of p 0 in one view, not drawn there, is False there)."""
    kws = augment.per_view(kwargs)
    views = []
    for v in (0, 1):
        spec = {k: tf.TensorSpec(t.shape, t.dtype) for k, t in augment.sample_view_params(
            seeds[0], h, w, **kws[v]).items()}
        def view_v(x, v=v):
            return augment.sample_view_params(augment.split_seed(x, 2)[v], h, w, **kws[v])

        out = tf.function(lambda s: tf.map_fn(view_v, s, fn_output_signature=spec))(seeds)
        views.append({k: t.numpy() for k, t in out.items()})
    n = len(seeds)
    return {k: np.concatenate([views[0].get(k, np.zeros(n, bool)),
                               views[1].get(k, np.zeros(n, bool))])
            for k in set(views[0]) | set(views[1])}


def _np_crop_areas(rng, n, h, w, lo, hi, attempts=10):
    """torchvision's RandomResizedCrop rule in NumPy: the crop's area fraction."""
    out = np.empty(n)
    for i in range(n):
        out[i] = 1.0
        for _ in range(attempts):
            area = h * w * rng.uniform(lo, hi)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 1 <= cw <= w and 1 <= ch <= h:
                out[i] = cw * ch / (h * w)
                break
    return out


def test_new_settings_distributions_host_and_device():
    h, w = 48, 64
    host_seeds = _seeds(N // 2, first=1)
    host = _host_pair_params(host_seeds, h, w, **BYOL_LIKE)
    dev = da.pair_params(da.pair_seeds(2, tf.constant(5, tf.int64), 1, N // 2), h, w,
                         **BYOL_LIKE)
    dev = {k: v.numpy() for k, v in dev.items()}
    ref = _np_crop_areas(np.random.default_rng(0), N, h, w, 0.3, 1.0)
    half = N // 2
    for name, d in (("host", host), ("device", dev)):
        area = d["crop_h"] * d["crop_w"] / (h * w)
        # The crop area: torchvision's rule (NumPy) vs ours, two-sample KS.
        assert _ks(area, ref) < KS_BOUND, (name, _ks(area, ref))
        assert area.min() >= 0.28 and area.max() <= 1.0  # rounding: 0.3 * (1 - 2/48)
        # Flip p 0.3 over both views; blur 1.0 / 0.1, solarisation 0 / 0.2 per view.
        assert abs(d["flip"].mean() - 0.3) < _band(0.3, N), name
        assert d["blur"][:half].all(), name
        assert abs(d["blur"][half:].mean() - 0.1) < _band(0.1, half), name
        assert not d["solarize"][:half].any(), name
        assert abs(d["solarize"][half:].mean() - 0.2) < _band(0.2, half), name
    # Host vs device, independent seeds: the same distributions.
    for key in ("crop_h", "crop_w", "y0", "sigma"):
        assert _ks(host[key], dev[key]) < KS_BOUND, key
    # The same seeds give the same draws on both paths (exact: the same float32 ops on
    # the same numbers): the device's draws of the host's first 16 pairs.
    same = da.pair_params(host_seeds[:16], h, w, **BYOL_LIKE)
    for k, v in same.items():
        v = v.numpy()
        np.testing.assert_array_equal(v[:16], host[k][:16], err_msg=k)
        np.testing.assert_array_equal(v[16:], host[k][half:half + 16], err_msg=k)


def test_flip_probability_zero_and_one():
    seeds = _seeds(200)
    off = da.sample_params(seeds, 20, 20, flip_prob=0.0)
    assert "flip" not in off
    on = da.sample_params(seeds, 20, 20, flip_prob=1.0)
    assert on["flip"].numpy().all()
    default = da.sample_params(seeds, 20, 20)
    # Only the flip changes: the other draws are from their own seeds.
    for k in default:
        if k != "flip":
            np.testing.assert_array_equal(off[k], default[k], err_msg=k)


def test_the_flags_reach_the_host_pipeline_and_the_device_views():
    from dualssl_tf.data.sources.base import ImageSource
    from dualssl_tf.tasks.images import task

    ramp = tf.reshape(tf.range(420, dtype=tf.float32) / 420.0, [10, 14, 3])
    src = ImageSource("s", tf.data.Dataset.range(4).map(
        lambda i: (i, tf.cast(i % 2, tf.int32))),
        lambda i: tf.roll(ramp, tf.cast(i, tf.int32), axis=1), 4, 2, image_shape=(10, 14, 3))
    # Solarisation p 1 on view 2 only (the last op); no jitter keeps the graphs small.
    plain = config.TrainConfig(dataset="cifar10", model_dir=MODEL_DIR,
                               color_jitter_strength=0.0)
    sol = plain.replace(solarize_prob="0,1")
    (a,) = task._data(src, plain, 6, 0, "host", 4).take(1)
    (b,) = task._data(src, sol, 6, 0, "host", 4).take(1)
    np.testing.assert_array_equal(b["view1"], a["view1"])
    np.testing.assert_allclose(b["view2"], augment.solarize(a["view2"]), atol=1e-7)
    assert np.abs(b["view2"] - a["view2"]).max() > 0.1
    # The device hook of the same config: the settings reach device_view_pairs.
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (4, 10, 14, 3)).astype(np.uint8))
    step = tf.constant(3, tf.int64)
    v_plain = task.device_views(plain, 6)(x, step, 0)
    v_sol = task.device_views(sol, 6)(x, step, 0)
    np.testing.assert_array_equal(v_sol[0], v_plain[0])
    np.testing.assert_allclose(v_sol[1], augment.solarize(v_plain[1]), atol=1e-7)


def test_options_dataclass_fields_have_their_defaults():
    opts = image_options.ImageOptions()
    defaults = {f.name: f.default for f in dataclasses.fields(opts)}
    assert {k: defaults[k] for k in image_options._VIEW_FLAGS} == image_options._VIEW_FLAGS


# The sampler's graph takes ~10 s to compile on 2 shared cores (as in test_device_augment).
@pytest.mark.slow
def test_jit_compile_of_per_view_settings_gives_the_eager_views():
    imgs = tf.constant(np.random.default_rng(5).integers(0, 256, (6, 20, 20, 3))
                       .astype(np.uint8))
    step = tf.constant(9, tf.int64)
    fn = lambda x, s: da.device_view_pairs(x, 1, s, 0, 16, **BYOL_LIKE)  # noqa: E731
    eager = fn(imgs, step)
    jit = tf.function(fn, jit_compile=True)(imgs, step)
    # Integer draws exact under XLA, fused multiply-adds 1 ulp (test_device_augment.py).
    for e, j in zip(eager, jit):
        assert np.max(np.abs(np.asarray(e) - np.asarray(j))) <= 1e-4
