"""Keras callbacks of the training run itself: the metrics.jsonl log, the scalar TensorBoard
writer and the non-finite-loss guard. The measurements of the model that tasks attach (the
probe's test accuracy, the online kNN, the collapse monitor, the view images) and their base
:class:`~dualssl_tf.monitors.base.EpochMetric` are in :mod:`dualssl_tf.monitors`."""

import json

import keras
import numpy as np
import tensorflow as tf

from dualssl_tf import runfiles


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if tf.is_tensor(value):
        return value.numpy().tolist()
    return value


def current_learning_rate(optimizer):
    """The learning rate in force at the optimizer's current step, as a float."""
    lr = optimizer.learning_rate
    if callable(lr):
        lr = lr(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))


class MetricsLogger(keras.callbacks.Callback):
    """Appends one JSON object per epoch to ``path`` (``metrics.jsonl``).

    Line fields: ``epoch`` (0 = at initialisation, written by :meth:`log_initial`),
    ``learning_rate`` and every scalar in Keras' epoch logs. Keys ``<name>/<k>`` are grouped
    into a dict, so ``best_corr/1 .. best_corr/L`` become ``"best_corr": {"1": .., "L": ..}``.
    The line is written (and on local disk fsynced) every epoch through
    :func:`dualssl_tf.runfiles.append_line`, so ``path`` may be a ``gs://`` URL and a crash
    loses at most the running epoch.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    @staticmethod
    def group(logs):
        out = {}
        for key, value in logs.items():
            value = _jsonable(value)
            if "/" in key:
                head, tail = key.split("/", 1)
                out.setdefault(head, {})[tail] = value
            else:
                out[key] = value
        return out

    def write(self, record):
        runfiles.append_line(self.path, json.dumps(record))  # local disk: fsynced

    def log_initial(self, logs):
        """Writes the epoch-0 line (metrics at initialisation)."""
        self.write({"epoch": 0, **self.group(logs)})

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1,
                  "learning_rate": current_learning_rate(self.model.optimizer)}
        record.update(self.group(logs or {}))
        self.write(record)


class ScalarTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback writing the scalar epoch logs only: array logs (e.g. the
    per-seed ``best_corr_seeds/<d>`` of a multi-seed HLTM run) go to metrics.jsonl."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {k: v for k, v in (logs or {}).items()
                                     if np.ndim(v) == 0})


class NonFiniteLossError(RuntimeError):
    """Training hit a NaN/Inf loss (or weights); ``step`` is the global step (1-based)."""

    def __init__(self, step, value, first_step=None, what="loss"):
        where = (f"step {step}" if first_step is None or first_step == step
                 else f"steps {first_step}-{step} (one execution of --steps_per_execution)")
        super().__init__(f"non-finite {what} ({value}) at {where}; training stopped, the "
                         "last good checkpoint is kept; lower --learning_rate and re-run")
        self.step = step
        self.value = value


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Raises :class:`NonFiniteLossError` when the loss reported after a batch is NaN/Inf.

    Keras reports the running mean of the epoch's batch losses, which turns non-finite at
    the first bad batch. With ``steps_per_execution = k`` Keras calls back once per k steps,
    so the step is known to within that execution. Raising (rather than setting
    ``stop_training``) keeps Keras from running the epoch-end callbacks, so no metrics line
    and no checkpoint of the broken weights is written.
    """

    def __init__(self, steps_per_execution=1):
        super().__init__()
        self.steps_per_execution = steps_per_execution

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        value = float(keras.ops.convert_to_numpy(loss))
        if not np.isfinite(value):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            raise NonFiniteLossError(step, value,
                                     first_step=step - self.steps_per_execution + 1)
