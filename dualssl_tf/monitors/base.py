"""The base of every per-epoch measurement of the model."""

import keras


class EpochMetric(keras.callbacks.Callback):
    """A measurement added to the epoch logs (hence metrics.jsonl and TensorBoard).

    Subclasses implement :meth:`compute` -> ``{name: float}``. It runs after every
    ``every``-th epoch and, when ``at_init`` is true, once before training: the trainer
    writes :meth:`initial_logs` of every such callback on the epoch-0 line.
    """

    at_init = True
    every = 1

    def compute(self, epoch=0):
        """``{name: float}`` for the model as it is after ``epoch`` epochs (0 = init)."""
        raise NotImplementedError

    def initial_logs(self):
        return self.compute(0) if self.at_init else {}

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and (epoch + 1) % self.every == 0:
            logs.update(self.compute(epoch + 1))
