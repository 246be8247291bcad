"""The run directory: every file a training run writes, and resume.

:class:`RunDir` owns ``model_dir``::

    flags.txt        the run's flags (a re-usable --flagfile)
    run.json         task metadata (e.g. the HLTM polarities)
    metrics.jsonl    one JSON object per epoch; epoch 0 = at initialisation
    initial/         the networks' weights at initialisation (what the analysis reads)
    checkpoints/     ckpt-<epoch>.{index,data-*}: weights, both optimizers' state
                     (``iterations`` included), the epoch and the global step
    logs/            TensorBoard events
    saved_model/     the exported encoder (written by dualssl_tf.evaluation.export)
    finished.json    written last: training and export are complete

Re-running the same command:

* finds the newest *readable* checkpoint (every tensor of a candidate is read back, so a
  truncated data file or a missing index is caught before anything is restored; a bad one
  costs one line on stderr and the previous one is tried),
* rebuilds the task with ``start_step`` = the restored step (the data streams are
  step-indexed, so the batches continue exactly where they stopped),
* cuts ``metrics.jsonl`` back to the restored epoch (epoch 0 kept), so no line is duplicated
  or missing after any number of crashes,
* cuts the TensorBoard event files under ``logs/`` back the same way
  (:func:`truncate_events`), so TensorBoard shows each epoch once, not a zig-zag,
* and continues ``fit`` at ``initial_epoch`` = the restored epoch.

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

import errno
import json
import os
import re
import sys
import uuid

import keras
import numpy as np
import tensorflow as tf

from dualssl_tf import runfiles
from dualssl_tf.run.callbacks import MetricsLogger, NonFiniteLossError

CHECKPOINT_DIR = "checkpoints"
FINISHED_FILE = "finished.json"
INITIAL_DIR = "initial"
_CKPT_FILE = re.compile(r"^ckpt-(\d+)\.(index|data-\d+-of-\d+)$")
# Keys of the bookkeeping variables in a checkpoint (tf.train.Checkpoint naming).
_EPOCH_KEY = "epoch/.ATTRIBUTES/VARIABLE_VALUE"
_STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"


def warn(message):
    """One line on stderr (the run goes on)."""
    sys.stderr.write(f"train.py: warning: {message}\n")
    sys.stderr.flush()


class RunWriteError(Exception):
    """The run directory could not be written (no space, quota, permission); ``str`` is
    one line naming the path, the last good checkpoint and what to do. tools/train.py
    exits with status 74 (EX_IOERR) on it."""


# Errors of a full disk / quota / read-only or forbidden path, as TensorFlow and the OS word
# them (TensorFlow maps ENOSPC and EDQUOT to ResourceExhaustedError, EACCES / EPERM / EROFS
# to PermissionDeniedError; GCS reports quota as ResourceExhausted / "Quota exceeded").
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                   errno.EPERM: "operation not permitted"}
_SPACE_TEXT = ("no space left on device", "disk quota exceeded", "quota exceeded")
_PERMISSION_TEXT = ("permission denied", "read-only file system", "operation not permitted")


def _storage_reason(error):
    """``(reason, is_space)`` when ``error`` is an out-of-space / quota / permission
    failure, else None."""
    text = str(getattr(error, "message", "") or error).lower()
    if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
        return _STORAGE_ERRNOS[error.errno], error.errno in (errno.ENOSPC, errno.EDQUOT)
    for words in _SPACE_TEXT:
        if words in text:
            return words, True
    if isinstance(error, tf.errors.PermissionDeniedError) or any(
            w in text for w in _PERMISSION_TEXT):
        return next((w for w in _PERMISSION_TEXT if w in text), "permission denied"), False
    return None


def _failed_path(error, model_dir):
    """The file of ``model_dir`` an error message names (TensorFlow's messages name the
    path before ``;``), else None."""
    text = str(getattr(error, "message", "") or error)
    if isinstance(error, OSError) and error.filename:
        text = f"{error.filename} {text}"
    root = model_dir.rstrip("/")
    for token in re.split(r"[\s;,'\"]+", text):
        if token.startswith(root):
            # What is being written, not its temporary name: ckpt-3_temp/part-... ->
            # ckpt-3, .saved_model.tmp-1a2b/... -> saved_model.
            path = re.sub(r"_temp(/.*)?$", "", token.rstrip(":."))
            return re.sub(r"/\.([^/]+)\.tmp-[0-9a-f]+(/.*)?$", r"/\1", path)
    return None


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

    # -- finished runs --------------------------------------------------------------------

    def finished_epochs(self):
        """Epochs of the finished (trained and exported) run here, or None."""
        path = os.path.join(self.model_dir, FINISHED_FILE)
        if not runfiles.exists(path):
            return None
        try:
            return int(json.loads(runfiles.read_text(path))["epochs"])
        except (ValueError, KeyError, TypeError):
            return None

    def mark_finished(self, epochs):
        """Records that training to ``epochs`` and the export completed."""
        runfiles.write_text_atomic(os.path.join(self.model_dir, FINISHED_FILE),
                                   json.dumps({"epochs": int(epochs)}) + "\n")

    def clear_finished(self):
        runfiles.remove(os.path.join(self.model_dir, FINISHED_FILE))


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


def _complete_records(path):
    """``(line, record)`` for each complete, parsable dict line of ``metrics.jsonl``: the
    partial last line of a crash mid-write and unparsable lines are skipped."""
    for line in runfiles.read_lines(path):
        if not line.endswith("\n"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield line, record


def metrics_record(path, epoch=None):
    """The ``metrics.jsonl`` record of ``epoch`` (the last one written for it), or with
    ``epoch=None`` the last complete record; {} when there is none (or no file)."""
    found = {}
    if runfiles.exists(path):
        for _, record in _complete_records(path):
            if epoch is None or record.get("epoch") == epoch:
                found = record
    return found


def checkpoint_epoch(path):
    """The epoch of a trainer checkpoint prefix (``.../ckpt-<epoch>``, as
    :meth:`RunCheckpoints.save` names them), else None (e.g. a ``.weights.h5`` file)."""
    match = re.search(r"(?:^|/)ckpt-(\d+)$", str(path).replace("\\", "/"))
    return int(match.group(1)) if match else None


def truncate_metrics(path, epoch):
    """Cuts ``metrics.jsonl`` back to the lines of epochs ``0 .. epoch``.

    Lines of later epochs (written after the restored checkpoint, before the crash) and a
    partial last line are dropped; the file is replaced atomically.

    Returns:
      the epoch-0 record (dict, metrics at initialisation) or None if there is none.
    """
    kept, initial = [], None
    for line, record in _complete_records(path):
        if record.get("epoch", -1) > epoch:
            continue
        if record["epoch"] == 0:
            initial = record
        kept.append(line)  # byte for byte, as an uninterrupted run wrote it
    runfiles.write_text_atomic(path, "".join(kept))
    return initial


def reset_metrics(path):
    """Empties ``metrics.jsonl`` for a run that starts from scratch."""
    runfiles.remove(path)


def _event_records(path):
    """Serialized ``tf.compat.v1.Event`` records of one events file, in order.

    Stops at a truncated or corrupt record (the last record of a run killed mid-write).
    """
    records = []
    try:
        for record in tf.data.TFRecordDataset(path):
            records.append(record.numpy())
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError):
        pass
    return records


def truncate_events(log_dir, last_step):
    """Drops TensorBoard events with ``step > last_step`` from every events file under log_dir.

    Keras' TensorBoard callback writes epoch summaries at ``step = epoch index`` (0-based;
    the trainer uses its default ``update_freq="epoch"`` and no validation data, whose
    ``evaluation_*_vs_iterations`` would be indexed by optimizer step instead), so after
    restoring a checkpoint of ``E`` finished epochs, ``last_step = E - 1`` keeps exactly the
    epochs the resumed run will not write again (``-1``: a run starting from scratch; every
    summary and graph goes). Step-0 one-offs (the graph, ViewSummary's images) are kept and
    not written again by a resumed run. Each file that loses records is rewritten
    (record by record, the file-version header kept) to a temporary file and renamed over
    the original (atomic on local disk, see :mod:`dualssl_tf.runfiles`); a file left with
    no event at all is deleted. A truncated last record (a kill mid-write) is dropped too.

    Args:
      log_dir: the TensorBoard log directory (``model_dir/logs``; its ``train/`` and
        ``validation/`` subdirectories are searched).
      last_step: int, the last step to keep.
    Returns:
      number of event records dropped.
    """
    if not runfiles.isdir(log_dir):
        return 0
    dropped = 0
    for directory, _, files in tf.io.gfile.walk(log_dir):
        for name in files:
            if "tfevents" not in name or name.startswith("."):
                continue
            path = os.path.join(directory, name)
            records = _event_records(path)
            kept, events = [], 0
            for raw in records:
                event = tf.compat.v1.Event.FromString(raw)
                if event.HasField("file_version"):
                    kept.append(raw)          # the header TensorBoard checks
                elif event.step <= last_step:
                    kept.append(raw)
                    events += 1
            size = tf.io.gfile.stat(path).length
            intact = sum(len(r) + 16 for r in records) == size  # 16 = TFRecord framing
            if len(kept) == len(records) and intact:
                continue
            dropped += len(records) - len(kept)
            if not events:
                runfiles.remove(path)
                continue
            tmp = os.path.join(directory, f".truncate-{uuid.uuid4().hex[:8]}.tmp")
            with tf.io.TFRecordWriter(tmp) as writer:
                for raw in kept:
                    writer.write(raw)
            runfiles.fsync(tmp)
            tf.io.gfile.rename(tmp, path, overwrite=True)
    return dropped



class RunDir:
    """Every file of one run directory (see the module docstring), in one place.

    Usage (this is :func:`dualssl_tf.run.trainer.run`)::

        rundir = RunDir(model_dir, keep_checkpoints)
        found = rundir.find_checkpoint()          # None, or {"path", "epoch", "step"}
        ... build the task with start_step = found["step"] ...
        rundir.write_config(cfg, task.metadata)   # flags.txt, run.json
        rundir.attach(model)
        initial = rundir.begin(found, initial_logs)   # restore, or the epoch-0 line
        model.fit(..., callbacks=[..., *rundir.callbacks(every, epochs, found)])
        rundir.mark_finished(epochs)              # after the export

    Its callbacks come in a fixed order: the metrics line of an epoch is written before its
    checkpoint, so a crash between the two is repaired on resume by cutting the line.
    """

    def __init__(self, model_dir, keep_checkpoints=3):
        self.model_dir = model_dir
        self.checkpoints = RunCheckpoints(model_dir, max_to_keep=keep_checkpoints)
        self.metrics_path = os.path.join(model_dir, "metrics.jsonl")
        self.log_dir = os.path.join(model_dir, "logs")
        self.saved_model = os.path.join(model_dir, "saved_model")
        self.initial_weights = os.path.join(model_dir, INITIAL_DIR, "weights")

    def finished_epochs(self):
        """Epochs of the finished (trained and exported) run here, or None."""
        return self.checkpoints.finished_epochs()

    def find_checkpoint(self, report=None, clean=True):
        """The newest readable checkpoint (dict ``path``, ``epoch``, ``step``) or None;
        ``report``, ``clean``: see :meth:`RunCheckpoints.find_latest`."""
        return self.checkpoints.find_latest(report=report, clean=clean)

    def write_config(self, flagfile_text, metadata):
        """Creates the directory and writes ``flags.txt`` and ``run.json`` (atomically)."""
        runfiles.makedirs(self.model_dir)
        runfiles.write_text_atomic(os.path.join(self.model_dir, "flags.txt"), flagfile_text)
        runfiles.write_text_atomic(os.path.join(self.model_dir, "run.json"),
                                   json.dumps(metadata))

    def attach(self, model):
        """Tracks the method's variables and optimizer state for checkpoints."""
        self._model = model
        self.checkpoints.attach(model)

    def begin(self, found, initial_logs, initial_variables=()):
        """Restores ``found``, or starts the run's metrics at epoch 0.

        Args:
          found: :meth:`find_checkpoint`'s result (None: a fresh run).
          initial_logs: ``() -> dict`` of metrics at initialisation (a fresh run only).
          initial_variables: the networks' variables (encoder, then head) whose values at
            initialisation a fresh run writes to ``initial/`` for the analysis.
        Returns:
          the epoch-0 metrics, flattened (``name/key``).
        """
        logger = MetricsLogger(self.metrics_path)
        if found:
            self.checkpoints.restore(found)
            self.checkpoints.clear_finished()
            print(f"Resuming {self.model_dir} at epoch {found['epoch']} (step "
                  f"{found['step']}) from {found['path']}")
            return flatten(truncate_metrics(self.metrics_path, found["epoch"]) or {})
        reset_metrics(self.metrics_path)
        self.checkpoints.write_initial(initial_variables)
        initial = initial_logs()
        logger.log_initial(initial)
        return initial

    def callbacks(self, checkpoint_every, epochs, found):
        """[metrics logger, checkpointer, TensorBoard], in that order.

        Events of epochs past the restored checkpoint (a kill before the next one) would be
        written again: they are cut first, as metrics.jsonl is. A resumed run's graph is
        already there.
        """
        truncate_events(self.log_dir, (found["epoch"] if found else 0) - 1)
        return [MetricsLogger(self.metrics_path),
                self.checkpoints.callback(checkpoint_every, epochs),
                ScalarTensorBoard(log_dir=self.log_dir, write_graph=not found)]

    def write_failure(self, error):
        """A :class:`RunWriteError` for ``error`` when it is a failure to write the run
        directory (no space, quota, permission), else None.

        Nothing half-written trips a resume: checkpoints, ``initial/``, the export and every
        file of :mod:`dualssl_tf.runfiles` are written under a temporary name and renamed,
        and a partial metrics line is dropped; so the message names the newest readable
        checkpoint as what was kept.
        """
        found = _storage_reason(error)
        if found is None:
            return None
        reason, is_space = found
        path = _failed_path(error, self.model_dir)
        if path is None and not is_space:
            return None  # e.g. an unreadable --data_dir: not the run directory's failure
        path = path or self.model_dir
        try:
            kept = self.checkpoints.find_latest(report=lambda *_: None, clean=False)
        except Exception:  # noqa: BLE001  the directory may be unreadable too
            kept = None
        if kept:
            what = (f"kept: the checkpoint of epoch {kept['epoch']} ({kept['path']}) -- ")
            again = "run the same command to resume"
        else:
            what = "there is no checkpoint yet -- "
            again = "run the same command to start again"
        fix = ("free space (or move the run directory to a bigger disk and pass that "
               "--model_dir)" if is_space else "make --model_dir writable (or copy the run "
               "directory somewhere writable and pass that --model_dir)")
        return RunWriteError(f"cannot write {path} ({reason}); {what}{fix}, then {again}")

    def last_metrics(self):
        """The last metrics.jsonl record, flattened back to ``name/key`` form."""
        return flatten(metrics_record(self.metrics_path))

    def mark_finished(self, epochs):
        """Records that training to ``epochs`` and the export completed."""
        self.checkpoints.mark_finished(epochs)


def flatten(record):
    """A metrics.jsonl record back in ``name/key`` form."""
    flat = {}
    for k, v in record.items():
        if isinstance(v, dict):
            flat.update({f"{k}/{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    return flat


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


class ScalarTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback writing the scalar epoch logs only: array logs (e.g. the
    per-seed ``best_corr_seeds/<d>`` of a multi-seed HLTM run) go to metrics.jsonl."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {k: v for k, v in (logs or {}).items()
                                     if np.ndim(v) == 0})
