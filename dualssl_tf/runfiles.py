"""Run-directory file operations through ``tf.io.gfile``: local disk and ``gs://`` alike.

TPU workers cannot write to local disk, so a TPU run's ``--model_dir`` is a ``gs://`` URL.
Every file a run writes or reads in its directory (flags.txt, run.json, metrics.jsonl,
finished.json, model_card.json, linear_eval.json, feature caches, the export's temporary
directory) goes through the helpers here, which call ``tf.io.gfile`` and so work for any
file system TensorFlow knows (local paths, ``gs://``, ``ram://``, ``hdfs://``, ...).

What is atomic where
--------------------
* Local disk (a plain path): :func:`write_text_atomic` writes a temporary file in the same
  directory, fsyncs it and renames it over the target (POSIX ``rename(2)``): a reader
  or a resumed run sees the old file or the new one, never half of one, even after a kill or
  a power cut. :func:`append_line` appends one line and fsyncs; a kill mid-append can
  leave a partial last line, which the readers drop (``run.rundir.truncate_metrics``).
  :func:`rename_dir` is one ``rename(2)``, atomic.
* ``gs://``: an object becomes visible only when its upload completes (at ``GFile.close``),
  so every single-file write is all-or-nothing; a rename is a server-side copy then a
  delete, so the target still appears whole (a kill in between can leave the temporary
  object behind; it is harmless). Objects cannot be appended to: TensorFlow's GCS file
  re-uploads the whole object on each append, so :func:`append_line` costs O(file size)
  (metrics.jsonl is a few KB) and is all-or-nothing per line. There are no directories,
  so :func:`rename_dir` copies object by object and then deletes the source: it is NOT
  atomic, a reader can see a partly copied export. Runs therefore write ``finished.json``
  only after the export is complete: on GCS, trust an export once finished.json is there.
  (A kill during that copy leaves a ``.saved_model.old-*`` copy of the previous export
  beside it; delete it by hand.)
  There is no fsync; durability is GCS's.
* Other URL schemes (``ram://`` in the tests) behave like gs:// here: directories are
  copied, not renamed (``ram://`` renames only the directory entry and loses the files).

This module imports TensorFlow. :mod:`dualssl_tf.config` stays TensorFlow-free (bad flags
fail in a fraction of a second): it probes only local directories and leaves URLs to
:func:`check_writable` and the flags.txt comparison, which the trainer runs before writing.
"""

import os
import uuid

import tensorflow as tf

gfile = tf.io.gfile


def is_remote(path):
    """True for a URL (``gs://bucket/x``, ``ram://x``): no local ``os`` calls apply."""
    return "://" in os.fspath(path)


def _tmp_name(path):
    # Same directory (so the rename stays on one file system / bucket); a unique suffix so
    # two writers never share a temporary file; no "tfevents" in it for TensorBoard to see.
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.tmp-{uuid.uuid4().hex[:8]}")


def fsync(path):
    """Flushes a local file's data to disk (no-op for remote paths)."""
    if is_remote(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(error):
    """One line of a TensorFlow / OS error, for messages naming a flag."""
    text = str(getattr(error, "message", "") or error).strip().splitlines()
    return f"{type(error).__name__}: {(text[0] if text else '')[:200]}"


def exists(path):
    """True if ``path`` exists.

    Raises:
      ValueError: one line when the file system cannot answer (unknown URL scheme, no
        permission on the bucket), rather than TensorFlow's traceback.
    """
    try:
        return gfile.exists(path)
    except tf.errors.OpError as e:   # gfile.exists itself maps only NotFound to False
        raise ValueError(f"{path}: cannot access ({_reason(e)})") from None


def isdir(path):
    return gfile.isdir(path)


def makedirs(path):
    """Creates ``path`` and its parents (no error if it exists)."""
    gfile.makedirs(path)


def listdir(path):
    """Entry names of a directory (no trailing ``/``)."""
    return [name.rstrip("/") for name in gfile.listdir(path)]


def glob(pattern):
    return gfile.glob(pattern)


def mtime(path):
    """Modification time in seconds (0 on file systems that keep none, e.g. ``ram://``)."""
    return gfile.stat(path).mtime_nsec / 1e9


def remove(path):
    """Deletes a file if it exists."""
    if gfile.exists(path):
        gfile.remove(path)


def rmtree(path):
    """Deletes a directory tree if it exists."""
    if gfile.exists(path):
        gfile.rmtree(path)


def read_text(path):
    with gfile.GFile(path, "r") as f:
        return f.read()


def read_bytes(path):
    with gfile.GFile(path, "rb") as f:
        return f.read()


def read_lines(path):
    """The file's lines, each with its ``\\n`` (a partial last line has none); [] if absent."""
    if not gfile.exists(path):
        return []
    return read_text(path).splitlines(keepends=True)


def _write_atomic(path, data, mode):
    tmp = _tmp_name(path)
    try:
        with gfile.GFile(tmp, mode) as f:
            f.write(data)
        fsync(tmp)
        gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        try:
            remove(tmp)
        except tf.errors.OpError:
            pass  # the original error matters, not the clean-up's
        raise


def write_text_atomic(path, text):
    """Replaces ``path`` with ``text``: temporary file + rename (see the module docstring)."""
    _write_atomic(path, text, "w")


def write_bytes_atomic(path, data):
    """:func:`write_text_atomic` for bytes (e.g. an ``.npz`` feature cache)."""
    _write_atomic(path, data, "wb")


def append_line(path, line):
    """Appends ``line`` (a ``\\n`` is added) and, on local disk, fsyncs."""
    with gfile.GFile(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
    fsync(path)


def copy_tree(src, dst):
    """Copies every file under directory ``src`` to the same place under ``dst``."""
    src = src.rstrip("/")
    for directory, _, files in gfile.walk(src):
        target = dst.rstrip("/") + directory[len(src):]
        gfile.makedirs(target)
        for name in files:
            gfile.copy(os.path.join(directory, name), os.path.join(target, name),
                       overwrite=True)


def rename_dir(src, dst):
    """Moves directory ``src`` to ``dst`` (which must not exist).

    Local disk: one atomic ``rename(2)``. URLs: copy everything, then delete ``src``
    (not atomic; see the module docstring).
    """
    if not (is_remote(src) or is_remote(dst)):
        gfile.rename(src, dst)
        return
    copy_tree(src, dst)
    gfile.rmtree(src)


def check_writable(directory):
    """Creates ``directory`` and writes + deletes a probe file in it.

    Raises:
      ValueError: one line naming the directory and TensorFlow's reason (e.g. no bucket,
        no permission), for the caller to attribute to its flag.
    """
    probe = os.path.join(directory, f".write-probe-{uuid.uuid4().hex[:8]}")
    try:
        gfile.makedirs(directory)
        with gfile.GFile(probe, "w") as f:
            f.write("")
        gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        raise ValueError(f"{directory} is not writable ({_reason(e)}); "
                         "check the URL and your credentials/permissions") from None
