"""Correlation of hidden units with latent variables (the HLTM "best correlation" metric)."""

import tensorflow as tf


@tf.function(jit_compile=True, reduce_retracing=True)
def pearson_per_unit(z, acts):
    """Pearson correlation of each unit with its group's latent.

    Args:
      z: [n, g] latent values (any numeric dtype).
      acts: [n, g, h] unit activations (pre-activations in the paper).
    Returns:
      [g, h] float64 correlations (XLA-compiled: one fused pass over the sample); a constant unit
      or latent gives 0, not NaN (a unit
      whose std is below 1e-6 of its largest |value| counts as constant).
    """
    z = tf.cast(z, tf.float64)
    a = tf.cast(acts, tf.float64)
    zc = z - tf.reduce_mean(z, axis=0)
    ac = a - tf.reduce_mean(a, axis=0)
    cov = tf.einsum("ng,ngh->gh", zc, ac)
    var_z = tf.reduce_sum(zc * zc, axis=0)[:, None]
    var_a = tf.reduce_sum(ac * ac, axis=0)
    # A unit whose spread is at float32 rounding level (e.g. fed only by dead ReLUs) is
    # constant: its "correlation" would be rounding noise, so it counts as 0.
    n = tf.cast(tf.shape(a)[0], tf.float64)
    scale = tf.reduce_max(tf.abs(a), axis=0)
    var_a = tf.where(var_a <= n * tf.square(1e-6 * scale), tf.zeros_like(var_a), var_a)
    return tf.math.divide_no_nan(cov, tf.sqrt(var_z * var_a))


def best_correlation(z, acts):
    """max over a group's units of |corr(unit, latent)|. z: [n, g], acts: [n, g, h] -> [g]."""
    return tf.reduce_max(tf.abs(pearson_per_unit(z, acts)), axis=1)


def best_correlation_groups_by_depth(pre_activations, x, latents, batch_size=65536):
    """Like :func:`best_correlation_by_depth`, per latent: {depth: [groups] tensor}."""
    n = int(x.shape[0])
    chunks = [pre_activations(x[i:i + batch_size]) for i in range(0, n, batch_size)]
    return {d: best_correlation(latents[d], tf.concat([c[d - 1] for c in chunks], axis=0))
            for d in range(1, len(chunks[0]) + 1)}


@tf.function(jit_compile=True, reduce_retracing=True)
def _shifted_sums(z, acts, z_shift, a_shift):
    """Float64 sums of one chunk, shifted: z [n, g], acts [n, g, h] -> (sum z', sum a',
    sum z'^2, sum a'^2, sum z'a', max |a|) with z' = z - z_shift [g], a' = a - a_shift [g, h]."""
    a_raw = tf.cast(acts, tf.float64)
    z = tf.cast(z, tf.float64) - z_shift
    a = a_raw - a_shift
    return (tf.reduce_sum(z, 0), tf.reduce_sum(a, 0), tf.reduce_sum(z * z, 0),
            tf.reduce_sum(a * a, 0), tf.einsum("ng,ngh->gh", z, a),
            tf.reduce_max(tf.abs(a_raw), 0))


def best_correlation_streamed(pre_activations, x, latents, chunk=8192):
    """:func:`best_correlation_groups_by_depth` in one pass over chunks of the sample.

    For samples too large to hold every depth's [n, groups, hid] pre-activations and their
    float64 copies at once (a 20-seed forest on 64000 samples: ~5 GB, and the evaluation
    then costs more than the training). Each unit's moments are float64 sums of the values
    shifted by the first chunk's means, so the single pass does not cancel the way an
    unshifted one (or a float32 one) does: the correlations equal the two-pass ones to
    about 1e-12, and the near-constant rule is the same.

    Args:
      pre_activations: x [m, ...] -> list over depth d = 1..L of [m, groups_d, hid].
      x: [n, ...] sample; latents: dict depth -> [n, groups_d].
    Returns:
      {depth: [groups_d] float64 tensor}.
    """
    n = int(x.shape[0])
    totals, shifts = {}, {}
    for start in range(0, n, chunk):
        pres = pre_activations(x[start:start + chunk])
        for d, pre in enumerate(pres, start=1):
            z = latents[d][start:start + chunk]
            if d not in shifts:
                shifts[d] = (tf.reduce_mean(tf.cast(z, tf.float64), 0),
                             tf.reduce_mean(tf.cast(pre, tf.float64), 0))
            sums = _shifted_sums(z, pre, *shifts[d])
            totals[d] = sums if d not in totals else (
                *(t + u for t, u in zip(totals[d][:5], sums[:5])),
                tf.maximum(totals[d][5], sums[5]))
    out = {}
    for d, (sz, sa, szz, saa, sza) in ((d, t[:5]) for d, t in totals.items()):
        cov = sza - sz[:, None] * sa / n
        var_z = (szz - sz * sz / n)[:, None]
        var_a = saa - sa * sa / n
        # As pearson_per_unit: a spread at float32 rounding level counts as constant.
        var_a = tf.where(var_a <= n * tf.square(1e-6 * totals[d][5]), tf.zeros_like(var_a),
                         var_a)
        corr = tf.math.divide_no_nan(cov, tf.sqrt(tf.maximum(var_z, 0.0) * var_a))
        out[d] = tf.reduce_max(tf.abs(corr), axis=1)
    return out


def best_correlation_by_depth(pre_activations, x, latents, batch_size=65536):
    """Mean best correlation per latent depth of a tree network.

    Args:
      pre_activations: callable x -> list over depth d = 1..L of [n, c**(L-d), hid], e.g.
        ``TreeNet.pre_activations`` or a compiled version of it.
      x: [n, c**L] leaves.
      latents: dict depth -> [n, c**(L-d)] (as returned by ``HLTM.sample``).
    Returns:
      dict {depth (int, 1 = lowest latents): float}.
    """
    groups = best_correlation_groups_by_depth(pre_activations, x, latents, batch_size)
    return {d: float(tf.reduce_mean(v)) for d, v in groups.items()}
