"""dualssl_tf.runfiles on local disk and on TensorFlow's in-memory ``ram://`` file system
(the stand-in for gs://), and rundir.truncate_events on hand-written event files."""

import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import runfiles
from dualssl_tf.run import rundir
from tests import tiny_runs


def ram_dir():
    """A fresh ram:// directory (the in-memory file system is shared by the process)."""
    return f"ram://runfiles-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path):
    return str(tmp_path) if request.param == "local" else ram_dir()


def test_is_remote():
    assert runfiles.is_remote("gs://bucket/run") and runfiles.is_remote("ram://x")
    assert not runfiles.is_remote("/tmp/run") and not runfiles.is_remote("runs/x")


def test_write_text_atomic_replaces_and_leaves_no_temporary(root):
    path = os.path.join(root, "sub", "finished.json")
    runfiles.makedirs(os.path.dirname(path))
    runfiles.write_text_atomic(path, '{"epochs": 3}\n')
    runfiles.write_text_atomic(path, '{"epochs": 4}\n')
    assert runfiles.read_text(path) == '{"epochs": 4}\n'
    assert runfiles.listdir(os.path.dirname(path)) == ["finished.json"]


def test_write_failure_keeps_the_old_file(root, monkeypatch):
    path = os.path.join(root, "run.json")
    runfiles.makedirs(root)
    runfiles.write_text_atomic(path, "old\n")

    def broken_rename(*args, **kwargs):
        raise tf.errors.UnavailableError(None, None, "connection reset")

    monkeypatch.setattr(runfiles.gfile, "rename", broken_rename)
    with pytest.raises(tf.errors.UnavailableError):
        runfiles.write_text_atomic(path, "new\n")
    assert runfiles.read_text(path) == "old\n"
    assert runfiles.listdir(root) == ["run.json"]   # the temporary file was removed


def test_append_line_and_read_lines_keep_a_partial_last_line_apart(root):
    path = os.path.join(root, "metrics.jsonl")
    runfiles.makedirs(root)
    assert runfiles.read_lines(path) == []
    runfiles.append_line(path, '{"epoch": 0}')
    runfiles.append_line(path, '{"epoch": 1}\n')          # a given newline is not doubled
    with tf.io.gfile.GFile(path, "a") as f:
        f.write('{"epoch": 2, "lo')                        # a crash mid-line
    assert runfiles.read_lines(path) == ['{"epoch": 0}\n', '{"epoch": 1}\n', '{"epoch": 2, "lo']


def test_truncate_metrics_on_ram(tmp_path):
    path = os.path.join(ram_dir(), "metrics.jsonl")
    runfiles.makedirs(os.path.dirname(path))
    for e in range(4):
        runfiles.append_line(path, f'{{"epoch": {e}, "loss": {e / 10}}}')
    initial = rundir.truncate_metrics(path, 2)
    assert initial == {"epoch": 0, "loss": 0.0}
    assert runfiles.read_text(path) == "".join(f'{{"epoch": {e}, "loss": {e / 10}}}\n'
                                               for e in range(3))


def test_bytes_roundtrip_of_an_npz(root):
    import io
    path = os.path.join(root, "cache", "f.npz")
    runfiles.makedirs(os.path.dirname(path))
    buffer = io.BytesIO()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(buffer, features=x)
    runfiles.write_bytes_atomic(path, buffer.getvalue())
    with np.load(io.BytesIO(runfiles.read_bytes(path))) as data:
        np.testing.assert_array_equal(data["features"], x)


def test_rename_dir_moves_every_file(root):
    src, dst = os.path.join(root, ".export.tmp"), os.path.join(root, "export")
    runfiles.makedirs(os.path.join(src, "variables"))
    runfiles.write_text_atomic(os.path.join(src, "saved_model.pb"), "pb")
    runfiles.write_text_atomic(os.path.join(src, "variables", "variables.index"), "ix")
    runfiles.rename_dir(src, dst)
    assert not runfiles.exists(os.path.join(src, "saved_model.pb"))
    assert runfiles.read_text(os.path.join(dst, "saved_model.pb")) == "pb"
    assert runfiles.read_text(os.path.join(dst, "variables", "variables.index")) == "ix"


def test_rename_dir_from_local_to_url(tmp_path):
    src = tmp_path / "figures"
    src.mkdir()
    (src / "a.json").write_text("{}")
    dst = os.path.join(ram_dir(), "analysis")
    runfiles.rename_dir(str(src), dst)
    assert not src.exists() and runfiles.read_text(os.path.join(dst, "a.json")) == "{}"


def test_check_writable(tmp_path):
    target = os.path.join(ram_dir(), "deep", "run")
    runfiles.check_writable(target)
    assert runfiles.isdir(target) and runfiles.listdir(target) == []   # probe removed
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError) as err:
        runfiles.check_writable(str(blocker / "run"))
    message = str(err.value)
    assert "\n" not in message and str(blocker / "run") in message
    assert message.endswith("check the URL and your credentials/permissions")


# ------------------------------------------------------------------ TensorBoard events

def write_events(log_dir, steps, tags=("epoch_loss", "epoch_lr")):
    """One events file with scalar ``tag`` = 10 * step + i at each step."""
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for step in steps:
            for i, tag in enumerate(tags):
                tf.summary.scalar(tag, 10.0 * step + i, step=step)
    writer.close()


def read_events(log_dir):
    """[(tag, step, value)] of every summary in every events file under log_dir."""
    return [(tag, step, value) for _, tag, step, value in tiny_runs.events(log_dir)]


def test_truncate_events_keeps_steps_up_to_last_step(root):
    log_dir = os.path.join(root, "logs")
    write_events(os.path.join(log_dir, "train"), range(5))
    write_events(os.path.join(log_dir, "validation"), range(5), tags=("epoch_loss",))
    dropped = rundir.truncate_events(log_dir, 2)
    assert dropped == 2 * 2 + 2      # steps 3, 4: two train tags, one validation tag
    assert sorted(read_events(os.path.join(log_dir, "train"))) == sorted(
        (tag, s, 10.0 * s + i) for s in range(3) for i, tag in enumerate(("epoch_loss",
                                                                          "epoch_lr")))
    assert sorted(read_events(os.path.join(log_dir, "validation"))) == [
        ("epoch_loss", s, 10.0 * s) for s in range(3)]
    # Every file still starts with TensorBoard's file-version header; no temporaries left.
    for sub in ("train", "validation"):
        names = runfiles.listdir(os.path.join(log_dir, sub))
        assert len(names) == 1 and "tfevents" in names[0]
        first = next(iter(tf.data.TFRecordDataset(os.path.join(log_dir, sub, names[0]))))
        assert tf.compat.v1.Event.FromString(first.numpy()).file_version.startswith("brain.Event")
    assert rundir.truncate_events(log_dir, 2) == 0   # idempotent


def test_truncate_events_drops_a_torn_record_and_empty_files(tmp_path):
    log_dir = tmp_path / "logs" / "train"
    write_events(str(log_dir), range(3), tags=("epoch_loss",))
    (path,) = log_dir.iterdir()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 5)          # the last record (step 2) torn by a kill mid-write
    assert rundir.truncate_events(str(tmp_path / "logs"), 5) == 0
    assert read_events(str(log_dir)) == [("epoch_loss", 0, 0.0), ("epoch_loss", 1, 10.0)]
    # A run restarting from scratch (-1) keeps no event, so the file goes.
    assert rundir.truncate_events(str(tmp_path / "logs"), -1) == 2
    assert list(log_dir.iterdir()) == []


def test_truncate_events_without_logs_is_a_no_op(tmp_path):
    assert rundir.truncate_events(str(tmp_path / "none"), 3) == 0


def test_exists_on_an_unknown_url_scheme_is_one_line():
    with pytest.raises(ValueError) as err:
        runfiles.exists("nosuchfs://bucket/run/flags.txt")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("nosuchfs://bucket/run/flags.txt: cannot access "
                              "(UnimplementedError: File system scheme 'nosuchfs'")


def test_config_validates_a_url_model_dir_without_tensorflow():
    """config.py stays TensorFlow-free: a gs:// --model_dir is left to the trainer."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; from dualssl_tf import config; "
            "config.validate(config.TrainConfig(model_dir='gs://no-such-bucket/run')); "
            "print('tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=root, env=dict(os.environ, PYTHONPATH=root), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
