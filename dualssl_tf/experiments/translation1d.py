"""The 1-D translation toy (Figure 3): circular signals holding "11" or "101", a one-layer
circular-convolution ReLU encoder with pooling, SimCLR training, per-filter selectivity."""

import functools

import keras
import numpy as np

from dualssl_tf.data.translation1d import Translation1D
from dualssl_tf.experiments import Experiment
from dualssl_tf.models.conv1d import conv1d_encoder

# Steps in the toy's "natural" epoch when --steps_per_epoch=0.
DEFAULT_STEPS = 50


def filter_responses(encoder, toy):
    """Mean pooled response of each filter to each object over every location.

    Returns numpy [2, filters]: row k = object with label k ("11", "101").
    """
    x, labels = toy.eval_arrays()
    h = np.asarray(encoder(x, training=False), np.float64)             # [2d, filters]
    return np.stack([h[labels == k].mean(axis=0) for k in range(toy.num_objects)])


def filter_selectivity(encoder, toy, eps=1e-8):
    """Per-filter selectivity between the two objects, in [-1, 1].

    ``s_j = (a_0 - a_1) / (a_0 + a_1 + eps)`` with ``a_k`` filter j's mean pooled (ReLU,
    so >= 0) response to object k: +1 fires for "11" only, -1 for "101" only, 0 equally.
    Returns numpy [filters].
    """
    a = filter_responses(encoder, toy)
    return (a[0] - a[1]) / (a[0] + a[1] + eps)


class SelectivityLogger(keras.callbacks.Callback):
    """Adds ``selectivity/mean_abs`` and ``selectivity/f<j>`` to the epoch logs."""

    def __init__(self, encoder, toy):
        super().__init__()
        self.encoder = encoder
        self.toy = toy

    def compute(self):
        s = filter_selectivity(self.encoder, self.toy)
        logs = {f"selectivity/f{j}": float(v) for j, v in enumerate(s)}
        logs["selectivity/mean_abs"] = float(np.mean(np.abs(s)))
        return logs

    def initial_logs(self):
        return self.compute()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.compute())


def build(cfg, start_step=0):
    toy = Translation1D(cfg.translation1d_length)
    encoder = conv1d_encoder(cfg.translation1d_length, cfg.translation1d_filters,
                             cfg.translation1d_kernel, pooling=cfg.translation1d_pooling,
                             use_bias=cfg.translation1d_bias, seed=cfg.seed)
    probe = keras.layers.Dense(toy.num_objects, name="probe")
    return Experiment(
        train_data=toy.dataset(cfg.batch_size, cfg.seed, start_step=start_step),
        steps_per_epoch=cfg.steps_per_epoch or DEFAULT_STEPS,
        encoder=encoder,
        probe=probe,
        callbacks=[SelectivityLogger(encoder, toy)],
        input_shape=(toy.length, 1),
        metadata={"translation1d": toy.to_dict()},
        summarize=functools.partial(selectivity_table, filters=cfg.translation1d_filters),
        eval_data=(toy.eval_dataset(), toy.eval_dataset()))


def selectivity_table(initial, final, filters):
    """Printable per-filter selectivity, at initialisation and after training."""
    rows = ["filter    init   final", "------  ------  ------"]
    for j in range(filters):
        rows.append(f"{j:<6}  {initial[f'selectivity/f{j}']:+6.3f}  "
                    f"{final[f'selectivity/f{j}']:+6.3f}")
    rows.append(f"mean|s|  {initial['selectivity/mean_abs']:6.3f}  "
                f"{final['selectivity/mean_abs']:6.3f}")
    return "\n".join(rows)
