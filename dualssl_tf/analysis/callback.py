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
the theory). This module is imported by the trainer only when the user asks for it.
"""

import keras
import numpy as np

from dualssl_tf.analysis import connections, sampling
from dualssl_tf.analysis.covariance import CovarianceOperator, averaged_connections
from dualssl_tf.config import ConfigError

# Augmentations per base point for the per-epoch estimate.
NUM_AUG = 8


class CovarianceMonitor(keras.callbacks.Callback):
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
        self.layers = []
        output_fn = lambda x: encoder(x, training=False)  # noqa: E731
        for name, grouped in layers:
            conn = connections.Connection(encoder, name, output_fn)
            self.layers.append((name, bool(grouped), conn))

    def compute(self, epoch=0):
        """Returns the log dict for one analysis (fresh sample seeded by ``epoch``)."""
        x_aug = self.sampler(self.seed + epoch)
        logs = {}
        for name, grouped, conn in self.layers:
            kbar = averaged_connections(conn, x_aug)                  # [M, n_L, P]
            w = np.asarray(conn.variable.numpy(), np.float64)
            if grouped:
                g = w.shape[0]
                kbar = kbar.reshape(kbar.shape[0], kbar.shape[1], g, -1)
                parts = [(f"{name}.g{k}", kbar[:, :, k], w[k].ravel()) for k in range(g)]
            else:
                parts = [(name, kbar, w.ravel())]
            aligns = []
            for label, kb, vec in parts:
                op = CovarianceOperator(kb, weight_vector=vec)
                align = float(op.alignment(k=1)[0]) if op.spectrum().size else 0.0
                logs[f"op_norm/{label}"] = op.frobenius_norm()
                logs[f"w_norm/{label}"] = float(np.linalg.norm(vec))
                logs[f"op_align/{label}"] = align
                aligns.append(align)
            if grouped:
                logs[f"op_align_mean/{name}"] = float(np.mean(aligns))
        return logs

    def initial_logs(self):
        """Analysis at initialisation (the trainer writes it on the epoch-0 line)."""
        return self.compute(0)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and (epoch + 1) % self.every == 0:
            logs.update(self.compute(epoch + 1))


def build_analysis_callback(cfg, exp):
    """The monitor for a run: every latent group of the HLTM net / the toy's conv layer.

    Args:
      cfg: TrainConfig (uses ``dataset``, ``analysis_every``, ``analysis_points``, ``seed``).
      exp: the run's Experiment (its encoder and metadata).
    Raises:
      ConfigError("analysis_every") for datasets without a sampler of augmentations.
    """
    if cfg.dataset == "hltm":
        from dualssl_tf.data.hltm import HLTM
        tree = HLTM.from_dict(exp.metadata["hltm"])
        layers = [(level.name, True) for level in exp.encoder.levels]

        def sampler(seed):
            return sampling.hltm_augmented(tree, cfg.analysis_points, NUM_AUG, seed)[0]
    elif cfg.dataset == "translation1d":
        from dualssl_tf.data.translation1d import Translation1D
        toy = Translation1D(exp.metadata["translation1d"]["length"])
        layers = [("conv", False)]

        def sampler(seed):
            # M = 2 objects, every location: the exact Kbar (analysis_points is not used).
            return sampling.translation1d_augmented(toy)
    else:
        raise ConfigError("analysis_every", f"not available for dataset {cfg.dataset!r}; "
                          "supported: hltm, translation1d (set --analysis_every=0)")
    return CovarianceMonitor(exp.encoder, layers, sampler, every=cfg.analysis_every,
                             seed=cfg.seed * 100_003)
