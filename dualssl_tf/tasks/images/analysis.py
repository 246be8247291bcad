"""What the analysis tools need of the image task (never imported by training).

The per-epoch monitor is the matrix-free one (:mod:`dualssl_tf.analysis.operator_monitor`):
its layers (one conv per ResNet stage, or ``--analysis_layers``), its fixed sample of
held-out base points x augmentations and those points un-augmented (Theorem 4's weights).
``tools/analyze.py`` reads the monitor's curves from metrics.jsonl
(:func:`dualssl_tf.analysis.report.monitor_report`).
"""

import tensorflow as tf

from dualssl_tf.analysis import connections, operator_monitor
from dualssl_tf.data import augment
from dualssl_tf.options import ConfigError
from dualssl_tf.tasks.images import view_settings

# Views per base point of the monitor's sample: one training pair. Two views average the
# augmentation less than 4 or 8 would, but halve the cost: 4 views cost ~20% of a
# generated-images epoch on a 2-core CPU, 2 views ~10% (benchmarks/operator_monitor.py).
NUM_AUG = 2
# The whole-run analysis of tools/analyze.py reads the monitor's curves, not the networks.
MATRIX_FREE = True


def monitor_layers(cfg, encoder):
    """``--analysis_layers`` (checked) or the default: one conv per ResNet stage.

    Raises ConfigError("analysis_layers") for a name the encoder does not have, a layer
    without a kernel, or an encoder with no Dense/Conv layer.
    """
    names = [n.strip() for n in cfg.analysis.layers.split(",") if n.strip()]
    kernels = connections.kernel_layer_names(encoder)
    if not kernels:
        raise ConfigError("analysis_layers", f"the encoder {encoder.name!r} has no Dense or "
                          "Conv layer to analyse; set --analysis_every=0")
    for name in names:
        if name not in kernels:
            shown = ", ".join(kernels[:12]) + (", ..." if len(kernels) > 12 else "")
            raise ConfigError("analysis_layers", f"the encoder has no Dense/Conv layer named "
                              f"{name!r}; layers with a kernel: {shown}")
    return names or operator_monitor.default_layers(encoder)


def monitor_sample(cfg, num_points, num_aug=NUM_AUG, seed=0):
    """x_aug [M, A, S, S, 3] float32: the first M held-out images (the probe's test split,
    else its training split) with A training-style views each (A/2 pairs, the run's
    augmentation), drawn with stateless seeds from ``seed``: no training stream or random
    generator is touched. A must be even."""
    source, raws, size = _held_out(cfg, num_points)
    settings = view_settings(cfg.images)
    pairs = num_aug // 2
    rows = []
    for i, raw in enumerate(raws):
        views = []
        for p in range(pairs):
            pair_seed = tf.constant([seed, i * pairs + p], tf.int64)
            if source.views is not None:
                views.extend(source.views(raw, pair_seed, size))
            else:
                views.extend(augment.two_views(source.decode(raw), pair_seed, size,
                                               **settings))
        rows.append(tf.stack(views))
    return tf.stack(rows)


def monitor_base_points(cfg, num_points):
    """x0 [M, S, S, 3] float32: the un-augmented images of :func:`monitor_sample`'s base
    points, as the probe sees them (resized, centre-cropped; a generated image's own
    factors), where Theorem 4's weights are taken."""
    source, raws, size = _held_out(cfg, num_points)
    return tf.stack([augment.center_resize(source.decode(raw), size) for raw in raws])


def _held_out(cfg, num_points):
    """``(source, raws, size)``: the first M elements of the probe's test split (else its
    training split) and the image side."""
    from dualssl_tf.tasks.images import task as image_task

    _, probe_train, probe_test, size = image_task.sources(cfg)
    source = probe_test if probe_test is not None else probe_train
    raws = [raw for raw, _ in source.elements.take(num_points)]
    if len(raws) < 2:
        raise ConfigError("analysis_points", f"{source.name} has {len(raws)} image(s); the "
                          "monitor needs >= 2 base points")
    return source, raws, size


def monitor(cfg, task):
    """The run's :class:`~dualssl_tf.analysis.operator_monitor.OperatorMonitor`."""
    layers = monitor_layers(cfg, task.encoder)
    x_aug = monitor_sample(cfg, cfg.analysis.points, NUM_AUG, seed=cfg.run.seed * 100_003)
    return operator_monitor.OperatorMonitor(
        task.encoder, layers, x_aug, budget=cfg.analysis.budget, every=cfg.analysis.every,
        seed=cfg.run.seed * 100_003, x0=monitor_base_points(cfg, cfg.analysis.points))
