"""Per-epoch covariance-operator monitor (optional; ``--analysis_every``).

For chosen layers (every latent group of the HLTM network) it logs, into Keras' epoch logs
(hence metrics.jsonl and TensorBoard):

    op_norm/<name>   ||OP_l||_F
    w_norm/<name>    ||W_l||
    op_align/<name>  |cos(vec W_l, top eigenvector of OP_l)|

with ``<name>`` = ``<layer>`` or ``<layer>.g<k>`` for group k of a grouped kernel, plus
``op_align_mean/<layer>`` averaged over groups. OP_l is re-estimated at each analysed epoch
from a fresh, small sample of M base points x A augmentations (subsampled so it costs a
fraction of an epoch), with ``f_L`` the encoder output before normalisation (the network of
the theory). :mod:`dualssl_tf.training` imports this module only when the user asks for it.
"""

import numpy as np
import tensorflow as tf

from dualssl_tf.analysis import connections
from dualssl_tf.analysis.covariance import batched_summary_tf
from dualssl_tf.monitors.base import EpochMetric
from dualssl_tf.options import ConfigError

# Augmentations per base point for the per-epoch estimate.
NUM_AUG = 8


class CovarianceMonitor(EpochMetric):
    """Logs ||OP_l||_F, ||W_l|| and the alignment of W_l with OP_l's top eigenvector.

    Args:
      encoder: the Keras model whose output is ``f_L``.
      layers: list of ``(layer_name, grouped)``; ``grouped=True`` treats the kernel's first
        axis as independent groups (GroupedDense) and analyses each group separately.
      sampler: ``seed (int) -> x_aug [M, A, ...]``.
      every: analyse every ``every`` epochs (>= 1).
      seed: base seed; epoch e uses ``seed + e``.

    Example:
      >>> monitor = CovarianceMonitor(net, [("depth_1", True)], lambda s: x_aug, every=1)
      >>> model.fit(data, epochs=5, callbacks=[monitor, metrics_logger])
    """

    def __init__(self, encoder, layers, sampler, every=1, seed=0):
        super().__init__()
        if every < 1:
            raise ValueError(f"every: must be >= 1, got {every}")
        self.encoder = encoder
        self.sampler = sampler
        self.every = int(every)
        self.seed = int(seed)
        self.layers = [(name, bool(grouped)) for name, grouped in layers]
        # One forward pass per example for all monitored layers, and the whole analysis in
        # one graph: the monitor must cost a small fraction of an epoch.
        self.connections = connections.MultiConnection(
            encoder, [name for name, _ in layers], lambda x: encoder(x, training=False))
        self._analyse = tf.function(self._analyse_graph, reduce_retracing=True)

    def _analyse_graph(self, x_aug):
        """x_aug [M, A, ...] -> list per layer of batched_summary_tf dicts ([G] tensors)."""
        m, a = x_aug.shape[0], x_aug.shape[1]
        k_all = self.connections.graph_fn(tf.reshape(x_aug, [m * a] + x_aug.shape[2:]))
        out = []
        for (name, grouped), k_t, var in zip(self.layers, k_all, self.connections.variables):
            n_out, p = k_t.shape[1], k_t.shape[2]
            kbar = tf.reduce_mean(tf.reshape(k_t, [m, a, n_out, p]), axis=1)   # [M, n_L, P]
            w = tf.convert_to_tensor(var)
            g = w.shape[0] if grouped else 1
            kbar = tf.transpose(tf.reshape(kbar, [m, n_out, g, p // g]), [2, 0, 1, 3])
            vecs = tf.reshape(w, [g, p // g])
            stats = batched_summary_tf(kbar, vecs)
            stats["w_norm"] = tf.norm(tf.cast(vecs, tf.float64), axis=1)
            out.append(stats)
        return out

    def compute(self, epoch=0):
        """Returns the log dict for one analysis (fresh sample seeded by ``epoch``)."""
        logger = tf.get_logger()
        level = logger.level
        # TensorFlow's vectorised Jacobian notes its while_loop fallback for conv filters
        # ("pfor ... uses a while_loop") on every trace: expected here, not the user's news.
        logger.setLevel("ERROR")
        try:
            return self._compute(epoch)
        finally:
            logger.setLevel(level)

    def _compute(self, epoch):
        x_aug = self.sampler(self.seed + epoch)
        if x_aug.shape[0] < 2:
            raise ValueError(f"M: need at least 2 base points, got {x_aug.shape[0]}")
        logs = {}
        for (name, grouped), stats in zip(self.layers, self._analyse(tf.constant(x_aug))):
            stats = {k: v.numpy() for k, v in stats.items()}
            labels = ([f"{name}.g{k}" for k in range(len(stats["frobenius"]))] if grouped
                      else [name])
            for k, label in enumerate(labels):
                logs[f"op_norm/{label}"] = float(stats["frobenius"][k])
                logs[f"w_norm/{label}"] = float(stats["w_norm"][k])
                logs[f"op_align/{label}"] = float(stats["alignment"][k])
            if grouped:
                logs[f"op_align_mean/{name}"] = float(np.mean(stats["alignment"]))
        return logs


def build_analysis_callback(cfg, task):
    """The monitor of a run, on the layers and sampler its task's analysis hooks name
    (every latent group of the HLTM net, the toy's conv layer; on images the matrix-free
    :class:`~dualssl_tf.analysis.operator_monitor.OperatorMonitor`).

    Args:
      cfg: TrainConfig (uses ``--dataset``, ``--analysis_*``, ``--seed``).
      task: the run's :class:`~dualssl_tf.tasks.Task` (its encoder and metadata).
    Raises:
      ConfigError naming the flag: a task without analysis hooks (``analysis_every``),
      an unknown layer or an encoder without Dense/Conv layers (``analysis_layers``),
      the images-only flags on a toy task.
    """
    hooks = cfg.task.load_analysis()
    if hooks is None:
        from dualssl_tf import tasks
        raise ConfigError("analysis_every", f"not available for dataset "
                          f"{cfg.data.dataset!r}; supported: "
                          f"{', '.join(tasks.analysis_datasets())} (set "
                          "--analysis_every=0)")
    if getattr(hooks, "MATRIX_FREE", False):
        return hooks.monitor(cfg, task)
    for flag, value, default in (("analysis_layers", cfg.analysis.layers, ""),
                                 ("analysis_budget", cfg.analysis.budget, 1)):
        if value != default:
            raise ConfigError(flag, f"applies to image data sets; the {cfg.data.dataset} "
                              "monitor analyses every layer exactly (drop the flag)")
    layers, sampler = hooks.monitor(cfg, task, NUM_AUG)
    return CovarianceMonitor(task.encoder, layers, sampler, every=cfg.analysis.every,
                             seed=cfg.run.seed * 100_003)
