"""The Keras side of :mod:`dualssl_tf.run.interrupt`: stop ``fit`` at a safe point.

:func:`callbacks` is what the trainer adds to ``fit``: nothing when no
:class:`~dualssl_tf.run.interrupt.SignalCatcher` is in force (library use, the in-process
tests), else one :class:`StopAtSafePoint` (put it last: it raises after the other
callbacks' epoch-end work, the metrics line and the checkpoint, is done).
"""

import keras
import numpy as np

from dualssl_tf import runfiles
from dualssl_tf.run import interrupt as run_interrupt

# A checkpoint of a finished epoch that was not due for one is written before stopping if it
# should take at most this long, estimated from the bytes to write.
QUICK_SAVE_S = 5.0
LOCAL_BYTES_PER_S = 100e6
REMOTE_BYTES_PER_S = 20e6


def estimated_save_seconds(variables, remote=False):
    """Rough seconds to write ``variables`` (their bytes over a modest throughput)."""
    nbytes = 0
    for v in variables:
        try:
            size = np.dtype(str(v.dtype)).itemsize
        except TypeError:  # bfloat16 and other dtypes NumPy does not name
            size = 4
        nbytes += int(np.prod(v.shape)) * size
    return nbytes / (REMOTE_BYTES_PER_S if remote else LOCAL_BYTES_PER_S)


class StopAtSafePoint(keras.callbacks.Callback):
    """Raises the signal a :class:`~dualssl_tf.run.interrupt.SignalCatcher` recorded, as
    :class:`~dualssl_tf.run.interrupt.Interrupted`, at the first safe point of ``fit``.

    Args:
      catcher: the SignalCatcher in force.
      checkpointer: the run's :class:`~dualssl_tf.run.checkpoints.Checkpointer` (its
        ``run_checkpoints`` writes the extra checkpoint of a finished epoch).
      steps_per_epoch: steps of one epoch (epoch ``e`` ends at step ``e * steps_per_epoch``,
        :mod:`dualssl_tf.run.epoch_steps`).
      quick_save_s: the longest estimated save worth waiting for.
    """

    def __init__(self, catcher, checkpointer, steps_per_epoch, quick_save_s=QUICK_SAVE_S):
        super().__init__()
        self.catcher = catcher
        self.checkpointer = checkpointer
        self.steps_per_epoch = int(steps_per_epoch)
        self.quick_save_s = quick_save_s
        self._epoch = 0

    # -- progress (also what an immediate second signal reports) -------------------------

    def _report(self, epoch, step, between_epochs):
        self.catcher.progress = {"epoch": epoch, "step": step, "between_epochs": between_epochs}

    def _stop(self):
        raise self.catcher.interrupt()

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _save_finished_epoch(self, done):
        """Checkpoint of ``done`` finished epochs unless there is one or it would be slow."""
        ckpts = self.checkpointer.run_checkpoints
        if run_interrupt.newest_checkpoint_epoch(ckpts.model_dir) == done:
            return
        variables = list(self.model.variables) + list(self.model.optimizer.variables)
        if estimated_save_seconds(variables, runfiles.is_remote(ckpts.model_dir)) > \
                self.quick_save_s:
            return
        try:
            ckpts.save(done)
        except Exception:  # noqa: BLE001  e.g. non-finite weights: stop without one
            pass

    # -- Keras hooks ----------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self.catcher.deferring = True
        if self.catcher.requested:  # came in while fit was starting
            self._stop()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._report(epoch, epoch * self.steps_per_epoch, between_epochs=True)
        if self.catcher.requested:  # came in after the last epoch's end-of-epoch work
            if epoch > 0:
                self._save_finished_epoch(epoch)
            self._stop()

    def on_train_batch_end(self, batch, logs=None):
        done = min(int(batch) + 1, self.steps_per_epoch)
        self._report(self._epoch + 1, self._epoch * self.steps_per_epoch + done, False)
        if self.catcher.requested and done < self.steps_per_epoch:
            self._report(self._epoch + 1, self._step(), False)
            self._stop()
        # At the epoch's last execution the epoch is trained: let its end run first.

    def on_epoch_end(self, epoch, logs=None):
        self._report(epoch + 1, (epoch + 1) * self.steps_per_epoch, between_epochs=True)
        if self.catcher.requested:
            self._save_finished_epoch(epoch + 1)
            self._stop()

    def on_train_end(self, logs=None):
        self.catcher.deferring = False
        if self.catcher.requested:
            self._stop()


def callbacks(checkpointer, steps_per_epoch):
    """``[StopAtSafePoint]`` when a SignalCatcher is in force (tools/train.py), else []."""
    catcher = run_interrupt.active()
    if catcher is None:
        return []
    return [StopAtSafePoint(catcher, checkpointer, steps_per_epoch)]
