"""The 1-D translation toy (Figure 3): circular signals holding "11" or "101", a one-layer
circular-convolution ReLU encoder with pooling, SimCLR training, per-filter selectivity."""

import functools

import keras
import numpy as np

from dualssl_tf.data.translation1d import Translation1D
from dualssl_tf.models.conv1d import conv1d_encoder
from dualssl_tf.monitors.base import EpochMetric
from dualssl_tf.tasks.base import Task

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


class SelectivityLogger(EpochMetric):
    """Adds ``selectivity/mean_abs`` and ``selectivity/f<j>`` to the epoch logs."""

    def __init__(self, encoder, toy):
        super().__init__()
        self.encoder = encoder
        self.toy = toy

    def compute(self, epoch=0):
        s = filter_selectivity(self.encoder, self.toy)
        logs = {f"selectivity/f{j}": float(v) for j, v in enumerate(s)}
        logs["selectivity/mean_abs"] = float(np.mean(np.abs(s)))
        return logs


def build(cfg, start_step=0):
    o = cfg.translation1d
    toy = Translation1D(o.length)
    encoder = conv1d_encoder(o.length, o.filters, o.kernel, pooling=o.pooling,
                             use_bias=o.bias, seed=cfg.run.seed)
    probe = keras.layers.Dense(toy.num_objects, name="probe")
    probe.build((None, o.filters))   # built before the optimizers see it
    return Task(
        make_data=functools.partial(_data, toy, cfg.run.seed, start_step),
        steps_per_epoch=cfg.optim.steps_per_epoch or DEFAULT_STEPS,
        encoder=encoder,
        input_shape=(toy.length, 1),
        probe=probe,
        callbacks=[SelectivityLogger(encoder, toy)],
        metadata={"translation1d": toy.to_dict()},
        summarize=functools.partial(selectivity_table, filters=o.filters),
        per_replica_data=False)


def _data(toy, seed, start_step, batch_size, input_context=None):
    """Global batches only (several replicas split them: ``per_replica_data=False``)."""
    return toy.dataset(batch_size, seed, start_step=start_step)


def eval_data(cfg, batch_size=256, metadata=None):
    """``(train, test, None)``: every object at every location (train = test: the toy's
    whole input space; ``metadata`` is not needed)."""
    toy = Translation1D(cfg.translation1d.length)
    return toy.eval_dataset(), toy.eval_dataset(), None


def selectivity_table(initial, final, filters):
    """Printable per-filter selectivity, at initialisation and after training."""
    rows = ["filter    init   final", "------  ------  ------"]
    for j in range(filters):
        rows.append(f"{j:<6}  {initial[f'selectivity/f{j}']:+6.3f}  "
                    f"{final[f'selectivity/f{j}']:+6.3f}")
    rows.append(f"mean|s|  {initial['selectivity/mean_abs']:6.3f}  "
                f"{final['selectivity/mean_abs']:6.3f}")
    return "\n".join(rows)
