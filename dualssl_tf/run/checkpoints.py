"""The checkpoints of a run directory: ``checkpoints/ckpt-<epoch>`` and ``initial/``.

``checkpoints/ckpt-<epoch>.{index,data-*}`` hold the method's variables, both optimizers'
state (``iterations`` included), the epoch and the global step; ``initial/weights`` the
networks' weights at initialisation (what the analysis reads). :class:`RunCheckpoints`
finds the newest *readable* one (every tensor of a candidate is read back, so a truncated
data file or a missing index is caught before anything is restored; a bad one costs one
line on stderr and the previous one is tried), restores it, and saves one per
``--checkpoint_every`` epochs. Checkpoints of the previous layout (one optimizer for
everything, before the online probe had its own) restore through a name-matched legacy
path (:func:`_restore_legacy`; tests/run/test_old_run_dirs.py resumes such a run).

Why ``tf.train.CheckpointManager`` and not ``keras.callbacks.BackupAndRestore``: Keras 3's
BackupAndRestore keeps a single ``.weights.h5`` written in place (a kill mid-write leaves
nothing to fall back to) and deletes it when training ends, so a finished run re-run would
train again. TensorFlow's V2 checkpoints are written to a temporary name and renamed, the
``checkpoint`` state file is replaced atomically, and the manager keeps ``max_to_keep``
numbered checkpoints, which is what the fallback needs.

Variables are checkpointed as plain lists (``model.variables``, ``optimizer.variables``)
rather than through the Keras objects: Keras 3 layers kept in Python lists (e.g. TreeNet's
levels) are invisible to ``tf.train.Checkpoint``'s object graph, so ``Checkpoint(model=m)``
would silently save nothing of them.
"""

import os
import re
import sys

import keras
import tensorflow as tf

from dualssl_tf import runfiles
from dualssl_tf.run.callbacks import NonFiniteLossError

CHECKPOINT_DIR = "checkpoints"
INITIAL_DIR = "initial"
_CKPT_FILE = re.compile(r"^ckpt-(\d+)\.(index|data-\d+-of-\d+)$")
# Keys of the bookkeeping variables in a checkpoint (tf.train.Checkpoint naming).
_EPOCH_KEY = "epoch/.ATTRIBUTES/VARIABLE_VALUE"
_STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"


def warn(message):
    """One line on stderr (the run goes on)."""
    sys.stderr.write(f"train.py: warning: {message}\n")
    sys.stderr.flush()


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class Checkpointer(keras.callbacks.Callback):
    """Saves a checkpoint every ``every`` epochs and after the last epoch.

    Put it after :class:`dualssl_tf.run.callbacks.MetricsLogger` in the callback list: the
    metrics line of an epoch is then always written before its checkpoint, and a crash in
    between is repaired on resume by cutting the line (see :func:`truncate_metrics`).
    """

    def __init__(self, run_checkpoints, every, epochs):
        super().__init__()
        self.run_checkpoints = run_checkpoints
        self.every = every
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every == 0 or done == self.epochs:
            self.run_checkpoints.save(done)


class RunCheckpoints:
    """The checkpoints of one run directory.

    Args:
      model_dir: the run directory; checkpoints go to ``model_dir/checkpoints``.
      max_to_keep: numbered checkpoints kept (>= 2 so a corrupt newest one has a fallback).

    Usage (see :func:`dualssl_tf.run.trainer.run`)::

        ckpts = RunCheckpoints(model_dir)
        found = ckpts.find_latest()          # None or {"path", "epoch", "step"}
        ... build the experiment with start_step=found["step"] and the model ...
        ckpts.attach(model)
        if found: ckpts.restore(found)
        model.fit(..., callbacks=[..., ckpts.callback(every, epochs)])
    """

    def __init__(self, model_dir, max_to_keep=3):
        if max_to_keep < 2:
            raise ValueError(f"max_to_keep must be >= 2 (a fallback), got {max_to_keep}")
        self.model_dir = model_dir
        self.directory = os.path.join(model_dir, CHECKPOINT_DIR)
        self.max_to_keep = max_to_keep
        self._checkpoint = None
        self._manager = None
        self._epoch = None
        self._step = None
        self._model = None

    # -- finding a checkpoint (no model needed) -------------------------------------------

    def _numbers(self):
        """{number: set of file kinds} of the checkpoint files on disk."""
        found = {}
        if not tf.io.gfile.isdir(self.directory):
            return found
        for name in tf.io.gfile.listdir(self.directory):
            m = _CKPT_FILE.match(name.rstrip("/"))
            if m:
                found.setdefault(int(m.group(1)), set()).add(
                    "index" if m.group(2) == "index" else "data")
        return found

    def verify(self, number, kinds=None):
        """Reads every tensor of ``ckpt-<number>``; returns (epoch, step) or raises.

        Raises ValueError with a one-line reason for a missing index or data file, and
        lets TensorFlow's errors through for unreadable contents (truncation, bad CRC).
        """
        kinds = self._numbers().get(number, set()) if kinds is None else kinds
        prefix = os.path.join(self.directory, f"ckpt-{number}")
        if "index" not in kinds:
            raise ValueError("index file missing")
        if "data" not in kinds:
            raise ValueError("data file missing")
        # The reader itself, not tf.train.load_checkpoint: that one takes a prefix for a
        # directory when the file system says it is one (ram:// does for any prefix).
        reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        names = reader.get_variable_to_shape_map()
        if _EPOCH_KEY not in names or _STEP_KEY not in names:
            raise ValueError("not a dualssl_tf checkpoint (no epoch/step)")
        for name in names:  # reading checks each tensor's CRC and that the data is all there
            reader.get_tensor(name)
        return int(reader.get_tensor(_EPOCH_KEY)), int(reader.get_tensor(_STEP_KEY))

    def find_latest(self, report=None, clean=True):
        """The newest readable checkpoint: dict(path, epoch, step), or None.

        Each unreadable newer checkpoint is reported in one line on stderr, or passed to
        ``report(prefix, reason)`` instead (a reader such as tools/export.py, which words
        its own message). ``clean=False`` leaves a killed save's ``*_temp*`` files alone
        (a reader writes nothing in the run directory).
        """
        if clean:
            self._remove_partial_writes()
        found = self._numbers()
        rejected = []
        for number in sorted(found, reverse=True):
            prefix = os.path.join(self.directory, f"ckpt-{number}")
            try:
                epoch, step = self.verify(number, found[number])
            except Exception as e:  # noqa: BLE001  any failure to read = unusable (IndexError, DataLossError, ...)
                rejected.append(prefix)
                if report is not None:
                    report(prefix, _first_line(e))
                    continue
                older = [n for n in found if n < number]
                fallback = (f"falling back to ckpt-{max(older)}" if older
                            else "no older checkpoint, starting from scratch")
                warn(f"checkpoint {prefix} is unusable ({_first_line(e)}); {fallback}")
                continue
            return {"path": prefix, "epoch": epoch, "step": step, "rejected": rejected}
        return None

    def _remove_partial_writes(self):
        """Deletes ``*_temp*`` leftovers of a save that was killed before its rename."""
        if not tf.io.gfile.isdir(self.directory):
            return
        for name in tf.io.gfile.listdir(self.directory):
            if "_temp" in name:
                path = os.path.join(self.directory, name.rstrip("/"))
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)

    # -- saving and restoring (model attached) --------------------------------------------

    def attach(self, model):
        """Tracks ``model.variables`` and its optimizers' variables (built here if needed).

        ``model`` is an :class:`~dualssl_tf.methods.base.SSLMethod`; the online probe's own
        optimizer, when there is one, is saved under ``probe_optimizer``.
        """
        model.build_optimizers()
        self._model = model
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False)
        parts = dict(model=list(model.variables), optimizer=list(model.optimizer.variables),
                     epoch=self._epoch, step=self._step)
        if getattr(model, "probe_optimizer", None) is not None:
            parts["probe_optimizer"] = list(model.probe_optimizer.variables)
        self._checkpoint = tf.train.Checkpoint(**parts)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, self.directory, max_to_keep=self.max_to_keep,
            checkpoint_name="ckpt")

    def restore(self, found):
        """Restores ``found`` (from :meth:`find_latest`) into the attached model."""
        reader = tf.compat.v1.train.NewCheckpointReader(found["path"])
        legacy = (getattr(self._model, "probe_optimizer", None) is not None and not any(
            k.startswith("probe_optimizer/") for k in reader.get_variable_to_shape_map()))
        if legacy:
            _restore_legacy(self._model, reader, self._epoch, self._step)
        else:
            self._checkpoint.restore(found["path"]).assert_consumed()
        iterations = int(keras.ops.convert_to_numpy(self._model.optimizer.iterations))
        if iterations != found["step"]:
            raise ValueError(f"checkpoint {found['path']}: optimizer step {iterations} != "
                             f"recorded step {found['step']}")
        for path in found.get("rejected", []):
            self._discard(path)

    def _discard(self, prefix):
        """Renames a rejected checkpoint's files out of the way (kept for inspection)."""
        directory, base = os.path.split(prefix)
        for name in tf.io.gfile.listdir(directory):
            if name.startswith(base + ".") and not name.endswith(".corrupt"):
                src = os.path.join(directory, name)
                tf.io.gfile.rename(src, src + ".corrupt", overwrite=True)

    def save(self, epoch):
        """Writes ``ckpt-<epoch>`` (atomically) and drops the ones beyond max_to_keep.

        Raises NonFiniteLossError instead if a weight is NaN/Inf: a checkpoint is only ever
        written of a state training can continue from.
        """
        if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self._model.variables
                   if keras.backend.is_float_dtype(v.dtype)):
            step = int(keras.ops.convert_to_numpy(self._model.optimizer.iterations))
            raise NonFiniteLossError(step, "nan/inf", what="weights")
        self._epoch.assign(epoch)
        self._step.assign(tf.cast(self._model.optimizer.iterations, tf.int64))
        return self._manager.save(checkpoint_number=epoch)

    def callback(self, every, epochs):
        return Checkpointer(self, every, epochs)

    def write_initial(self, variables):
        """Writes the weights at initialisation to ``model_dir/initial/weights``."""
        tf.train.Checkpoint(variables=list(variables)).write(
            os.path.join(self.model_dir, INITIAL_DIR, "weights"))


def _restore_legacy(model, reader, epoch, step):
    """Restores a checkpoint written before the online probe had its own optimizer.

    Those runs trained the probe with the method's optimizer, so the checkpoint's
    ``optimizer/<i>`` list is that optimizer built over *all* trainable variables (probe
    included). A clone of the optimizer built that way names each entry; the method's
    optimizer takes the entries of its own variables by name (Keras names a slot after
    its variable's path), and the probe's optimizer starts fresh.
    """
    key = "{}/{}/.ATTRIBUTES/VARIABLE_VALUE"
    for i, var in enumerate(model.variables):
        var.assign(reader.get_tensor(key.format("model", i)))
    clone = model.optimizer.__class__.from_config(model.optimizer.get_config())
    clone.build(model.trainable_variables)
    saved = {v.path: reader.get_tensor(key.format("optimizer", i))
             for i, v in enumerate(clone.variables)}
    for var in model.optimizer.variables:
        if var.path not in saved:
            raise ValueError(f"checkpoint has no value for optimizer variable {var.path}")
        var.assign(saved[var.path])
    epoch.assign(reader.get_tensor(_EPOCH_KEY))
    step.assign(reader.get_tensor(_STEP_KEY))


def checkpoint_epoch(path):
    """The epoch of a trainer checkpoint prefix (``.../ckpt-<epoch>``, as
    :meth:`RunCheckpoints.save` names them), else None (e.g. a ``.weights.h5`` file)."""
    match = re.search(r"(?:^|/)ckpt-(\d+)$", str(path).replace("\\", "/"))
    return int(match.group(1)) if match else None


def restore_initial(variables, model_dir):
    """Loads a run's weights at initialisation (``initial/``) into ``variables`` (the
    rebuilt encoder's, then the head's, as :meth:`RunDir.begin` wrote them).

    Returns False when the run has none (runs made before it was written); callers then
    rebuild the initialisation from the seed.
    """
    prefix = os.path.join(model_dir, INITIAL_DIR, "weights")
    if not runfiles.exists(prefix + ".index"):
        return False
    tf.train.Checkpoint(variables=list(variables)).read(prefix).assert_consumed()
    return True
