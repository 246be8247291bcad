"""The streamed best correlation (multi-seed HLTM runs) against the two-pass one."""

import numpy as np
import tensorflow as tf

from dualssl_tf import correlation


def _sample(rng, n, g, h, offset):
    z = rng.integers(0, 2, (n, g)).astype(np.int32)
    # Units: correlated with z, large offsets (cancellation would show in a naive single
    # pass), one exactly constant unit and one at float32 rounding noise (both count 0).
    a = (offset + z[:, :, None] * rng.normal(1, 0.3, (1, g, h))
         + rng.normal(0, 1, (n, g, h))).astype(np.float32)
    a[:, 0, :] = 7.25
    a[:, 1, :] = np.float32(1e4) + np.float32(1e4) * np.finfo(np.float32).eps * rng.integers(
        0, 2, (n, h))
    return z, a


def test_streamed_equals_two_pass_in_chunks_and_constant_units_count_zero():
    rng = np.random.default_rng(0)
    zs, acts = zip(*[_sample(rng, 1000, g, 3, 50.0) for g in (6, 4)])
    lat = {1: tf.constant(zs[0]), 2: tf.constant(zs[1])}
    x = tf.range(1000)[:, None]
    pre = lambda xs: [tf.gather(tf.constant(a), xs[:, 0]) for a in acts]
    for chunk in (1000, 250):
        got = correlation.best_correlation_streamed(pre, x, lat, chunk=chunk)
        for d in (1, 2):
            want = correlation.best_correlation(lat[d], tf.constant(acts[d - 1])).numpy()
            np.testing.assert_allclose(got[d].numpy(), want, rtol=0, atol=1e-10)
            assert got[d].numpy()[0] == 0.0 and got[d].numpy()[1] == 0.0
            assert np.all(want[2:] > 0.05)
    # By hand for one unit: numpy's float64 Pearson.
    z, a = zs[0][:, 2].astype(np.float64), acts[0][:, 2, :].astype(np.float64)
    hand = max(abs(np.corrcoef(z, a[:, k])[0, 1]) for k in range(3))
    got = correlation.best_correlation_streamed(pre, x, lat, chunk=250)[1].numpy()[2]
    assert abs(got - hand) < 1e-10
