"""An epoch is exactly ``steps_per_epoch`` optimizer steps, whatever ``--steps_per_execution``.

What Keras 3.15 does by itself: ``EpochIterator._enumerate_iterator``
(keras/src/trainers/epoch_iterator.py) yields one execution per
``range(0, steps_per_epoch, steps_per_execution)``, and the TensorFlow backend's
``multi_step_on_iterator`` (keras/src/backend/tensorflow/trainer.py) runs a ``tf.while_loop``
of ``steps_per_execution`` steps while the (endless) iterator has data. So with 156 steps
and 10 per execution every epoch trained 160 steps: the progress bar read ``160/156``, the
checkpoint after 2 epochs held 320 optimizer iterations, the learning-rate schedule (built
for 156 per epoch) ran ahead of the epochs, and a resumed run with another
``--steps_per_execution`` would have moved every later boundary.

Here the last execution of an epoch runs only the remainder: :class:`ExactEpochs` gives the
model a second Keras train function made with ``steps_per_execution = remainder`` (6 in the
example) and calls it for the epoch's last execution, so every epoch is exactly
``steps_per_epoch`` steps and epoch ``e`` ends at step ``e * steps_per_epoch``: the step
counter, the schedule, the step-indexed data streams and the checkpoints agree. A step is
the same computation however many run in one execution (a CPU run's metrics.jsonl is
byte-identical for 1, 2, 3 or 6 steps per execution), so ``--steps_per_execution`` is a
pure speed setting and may change when a run is resumed. When it divides the epoch nothing
here changes what Keras does.
"""

import keras

from dualssl_tf.options import ConfigError


def execution_sizes(steps_per_epoch, steps_per_execution):
    """Steps of each execution of one epoch: full ones, then the remainder if any.

    >>> execution_sizes(156, 10)
    [10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 6]
    """
    full, rest = divmod(int(steps_per_epoch), int(steps_per_execution))
    return [int(steps_per_execution)] * full + ([rest] if rest else [])


def epoch_end_step(epoch, steps_per_epoch):
    """Global step (optimizer iterations) after ``epoch`` finished epochs."""
    return int(epoch) * int(steps_per_epoch)


def check_resume_step(found, steps_per_epoch):
    """A checkpoint of ``E`` epochs must hold step ``E * steps_per_epoch``.

    A run directory from before epochs were exact (Keras' rounding up to whole executions)
    holds more steps when ``--steps_per_execution`` did not divide the epoch; resuming it
    would put the data stream, the schedule and the epoch count out of step.

    Args:
      found: a checkpoint from ``RunDir.find_checkpoint`` (``path``, ``epoch``, ``step``).
      steps_per_epoch: the run's steps per epoch.
    Raises:
      ConfigError naming --model_dir when the steps disagree.
    """
    want = epoch_end_step(found["epoch"], steps_per_epoch)
    if found["step"] != want:
        raise ConfigError(
            "model_dir", f"checkpoint {found['path']} holds step {found['step']} after "
            f"{found['epoch']} epochs, not {want} ({steps_per_epoch} steps per epoch): it "
            "was written when an epoch was rounded up to whole --steps_per_execution; "
            "use a new --model_dir")


class ExactEpochs(keras.callbacks.Callback):
    """Makes the last execution of each epoch run only the epoch's remaining steps.

    Construct it after ``model.compile`` and pass it to ``fit`` (with
    ``steps_per_epoch``): it installs itself as ``model.train_function``, which ``fit``
    then keeps (``make_train_function`` only builds one when there is none). Before each
    execution ``on_train_batch_begin(begin_step)`` tells it how many steps are left, and it
    calls Keras' own train function for ``steps_per_execution`` steps, or a second one
    built with ``steps_per_execution = remainder``. That one reads the attribute when it
    is traced, on its first call, so the attribute holds the remainder during every call of
    it (and is put back at once). Only needed when the remainder is not 0 (see
    :func:`exact_epochs`).
    """

    def __init__(self, model, steps_per_epoch):
        super().__init__()
        self.steps_per_epoch = int(steps_per_epoch)
        self.steps_per_execution = int(model.steps_per_execution)
        self.remainder = self.steps_per_epoch % self.steps_per_execution
        self._model_ref = model
        model.make_train_function(force=True)
        self._full = model.train_function
        model.steps_per_execution = self.remainder or self.steps_per_execution
        try:
            model.make_train_function(force=True)
            self._short = model.train_function
        finally:
            model.steps_per_execution = self.steps_per_execution
        self._next = self.steps_per_execution
        self.last_execution_steps = 0
        model.train_function = self

    def on_train_batch_begin(self, batch, logs=None):
        self._next = min(self.steps_per_execution, self.steps_per_epoch - int(batch))

    def __call__(self, iterator):
        n = self._next
        self._next = self.steps_per_execution
        self.last_execution_steps = n
        if n >= self.steps_per_execution:
            return self._full(iterator)
        model = self._model_ref
        model.steps_per_execution = n
        try:
            return self._short(iterator)
        finally:
            model.steps_per_execution = self.steps_per_execution


class EpochProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, counting at most ``steps_per_epoch`` (``156/156``, not
    ``160/156``): Keras reports ``begin + steps_per_execution - 1`` as the last step of the
    short last execution too."""

    def on_train_batch_end(self, batch, logs=None):
        if self.target:
            batch = min(int(batch), int(self.target) - 1)
        super().on_train_batch_end(batch, logs)


def exact_epochs(model, steps_per_epoch):
    """Callbacks for ``fit`` that make every epoch ``steps_per_epoch`` steps.

    Returns ``[ExactEpochs, EpochProgbar]`` when ``model.steps_per_execution`` does not
    divide ``steps_per_epoch``, else ``[]`` (Keras' own behaviour is exact then). Call after
    ``model.compile`` and put the callbacks late in the list: Keras adds no progress bar of
    its own when one is there.
    """
    if int(steps_per_epoch) % int(model.steps_per_execution) == 0:
        return []
    return [ExactEpochs(model, steps_per_epoch), EpochProgbar()]
