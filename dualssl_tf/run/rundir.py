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

Checkpoints (``checkpoints/``, ``initial/``) are :mod:`dualssl_tf.run.checkpoints`; the
TensorBoard writer is :class:`dualssl_tf.run.callbacks.ScalarTensorBoard`.
"""

import errno
import json
import os
import re
import uuid

import tensorflow as tf

from dualssl_tf import runfiles
from dualssl_tf.run.callbacks import MetricsLogger, ScalarTensorBoard
from dualssl_tf.run.checkpoints import INITIAL_DIR, RunCheckpoints

FINISHED_FILE = "finished.json"


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
        path = os.path.join(self.model_dir, FINISHED_FILE)
        if not runfiles.exists(path):
            return None
        try:
            return int(json.loads(runfiles.read_text(path))["epochs"])
        except (ValueError, KeyError, TypeError):
            return None

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
            runfiles.remove(os.path.join(self.model_dir, FINISHED_FILE))
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
        runfiles.write_text_atomic(os.path.join(self.model_dir, FINISHED_FILE),
                                   json.dumps({"epochs": int(epochs)}) + "\n")


def flatten(record):
    """A metrics.jsonl record back in ``name/key`` form."""
    flat = {}
    for k, v in record.items():
        if isinstance(v, dict):
            flat.update({f"{k}/{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    return flat
