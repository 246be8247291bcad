"""Ctrl-C (SIGINT) and SIGTERM end a training run at a safe point: one line, exit 130 / 143.

tools/train.py runs the trainer inside :class:`SignalCatcher`. Outside ``fit`` (start-up,
export) a signal raises :class:`Interrupted` at once. During ``fit`` the first signal is
only noted and :class:`~dualssl_tf.run.safe_stop.StopAtSafePoint` raises it at the
next safe point:

* inside an epoch, when the running execution has finished (TensorFlow cannot be stopped
  in the middle of one); nothing of the unfinished epoch is written, the run resumes from
  the last checkpoint;
* between epochs (the signal came during the epoch's last execution or its end-of-epoch
  callbacks), once the epoch's metrics line is written and, if that epoch was not due for a
  checkpoint, a checkpoint of it when that takes only a few seconds.

A second signal raises at once wherever the run is (a safe state too: every file of a run
is written atomically or repaired on resume, as after a SIGKILL). The tool then prints
:func:`message` on stderr, e.g. ``train.py: interrupted at epoch 3, step 340; the last
checkpoint is epoch 2 -- run the same command to resume``, and exits with
``128 + signal`` (130 for SIGINT, 143 for SIGTERM), without a traceback.

This module imports neither TensorFlow nor Keras, so the catcher is in place before
TensorFlow's slow import.
"""

import os
import re
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}

_active = None  # the SignalCatcher in force, if any


class Interrupted(BaseException):
    """The run was stopped by a signal. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it.

    Attributes:
      signum: the signal (SIGINT or SIGTERM).
      epoch: 1-based epoch being trained, or the last finished one when ``between_epochs``;
        None before training started.
      step: optimizer steps done (global step), None before training started.
      between_epochs: True when the run stopped at an epoch boundary.
    """

    def __init__(self, signum, epoch=None, step=None, between_epochs=False):
        super().__init__(f"interrupted by {SIGNAL_NAMES.get(signum, signum)}")
        self.signum = signum
        self.epoch = epoch
        self.step = step
        self.between_epochs = between_epochs

    @property
    def exit_status(self):
        """128 + the signal number, as a shell reports a process ended by it."""
        return 128 + int(self.signum)


class SignalCatcher:
    """Context manager: SIGINT / SIGTERM become :class:`Interrupted`.

    While ``deferring`` (set by the safe-point callback during ``fit``) the first signal is
    only recorded in ``signum``; the callback raises it. Any other signal raises at once,
    carrying the last progress the callback reported (``progress``). Handlers are only
    installed from the main thread (Python delivers signals there); elsewhere the catcher
    does nothing. The previous handlers are put back on exit.
    """

    def __init__(self):
        self.signum = None
        self.deferring = False
        self.raised = False         # Interrupted is on its way: later signals are ignored
        self.progress = {}          # epoch, step, between_epochs: for an immediate raise
        self._previous = {}

    def __enter__(self):
        global _active
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._on_signal)
            _active = self
        return self

    def __exit__(self, *exc):
        global _active
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if _active is self:
            _active = None
        return False

    def _on_signal(self, signum, frame):
        if self.raised:
            return
        first = self.signum is None
        if first:
            self.signum = signum
        if first and self.deferring:
            return  # the safe-point callback raises it
        raise self.interrupt(signum)

    def interrupt(self, signum=None):
        """The :class:`Interrupted` to raise now (``signum``: default the first signal)."""
        self.deferring = False
        self.raised = True
        return Interrupted(signum or self.signum, **self.progress)

    @property
    def requested(self):
        return self.signum is not None


def active():
    """The :class:`SignalCatcher` in force, or None (library use: signals untouched)."""
    return _active


_CHECKPOINT_PATH = re.compile(r'^model_checkpoint_path:\s*"(?:.*/)?ckpt-(\d+)"', re.M)


def newest_checkpoint_epoch(model_dir):
    """Epoch of the newest checkpoint in ``model_dir/checkpoints`` (its ``checkpoint``
    state file, written atomically after each save), or None. URLs are read only when
    TensorFlow is already imported."""
    path = os.path.join(model_dir, "checkpoints", "checkpoint")
    try:
        if "://" in model_dir:
            if "tensorflow" not in sys.modules:
                return None
            import tensorflow as tf
            with tf.io.gfile.GFile(path) as f:
                text = f.read()
        else:
            with open(path) as f:
                text = f.read()
    except Exception:  # noqa: BLE001  absent or unreadable: say nothing about it
        return None
    m = _CHECKPOINT_PATH.search(text)
    return int(m.group(1)) if m else None


def message(error, model_dir):
    """The one line (without the ``train.py: `` prefix) that reports ``error``."""
    if error.epoch is None:
        where = "interrupted before training started"
    elif error.between_epochs:
        where = f"interrupted after epoch {error.epoch}, step {error.step}"
    else:
        where = f"interrupted at epoch {error.epoch}, step {error.step}"
    epoch = newest_checkpoint_epoch(model_dir)
    if epoch is None:
        return f"{where}; there is no checkpoint yet -- run the same command to start again"
    return f"{where}; the last checkpoint is epoch {epoch} -- run the same command to resume"
