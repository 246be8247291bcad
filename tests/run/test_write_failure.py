"""A full disk (or quota, or permission) during a run: one line naming the path, the kept
checkpoint and the fix, exit status 74 (EX_IOERR); and re-running the same command once
there is space again ends exactly as an uninterrupted run.

The failure is injected at the file layer: the function that writes checkpoints
(CheckpointManager.save), initial/ (Checkpoint.write), a metrics line
(runfiles.append_line) or the export (tf.saved_model.save) raises what TensorFlow raises
on a full disk (ResourceExhaustedError "...; No space left on device", the path first).
A real tiny tmpfs (``mount -t tmpfs -o size=60k``) fails the same way at the same places,
but mounting one needs privileges a test cannot count on.
"""

import errno

import pytest
import tensorflow as tf

from dualssl_tf import runfiles
from dualssl_tf.run import rundir as run_rundir
from dualssl_tf.run.rundir import RunWriteError
from tests import train_tool
from tests.tiny_runs import ckpt_tensors, metrics_bytes, train

EPOCHS = 3
NO_SPACE = "No space left on device"
FIX = ("free space (or move the run directory to a bigger disk and pass that --model_dir), "
       "then run the same command to ")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = tmp_path_factory.mktemp("write_failure") / "ref"
    train(ref, epochs=EPOCHS)
    return ref


def _full(path):
    return tf.errors.ResourceExhaustedError(None, None, f"{path}; {NO_SPACE}")


def _fail_checkpoint(monkeypatch, epoch):
    real = tf.train.CheckpointManager.save

    def save(self, checkpoint_number=None, **kw):
        if checkpoint_number == epoch:
            raise _full(f"{self.directory}/ckpt-{epoch}_temp/part-00000-of-00001.data-"
                        "00000-of-00001.tempstate8765")
        return real(self, checkpoint_number=checkpoint_number, **kw)
    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)


def _fail_initial(monkeypatch):
    def write(self, prefix, **kw):
        raise _full(f"{prefix}_temp/part-00000-of-00001.index.tempstate1")
    monkeypatch.setattr(tf.train.Checkpoint, "write", write)


def _fail_export(monkeypatch):
    def save(obj, export_dir, **kw):
        raise _full(f"{export_dir}/variables/variables_temp/part-00000-of-00001.data-"
                    "00000-of-00001.tempstate2")
    monkeypatch.setattr(tf.saved_model, "save", save)


def _fail_metrics_line(monkeypatch, epoch):
    real = runfiles.append_line

    def append(path, line):
        if f'"epoch": {epoch},' in line:
            raise _full(path)
        return real(path, line)
    monkeypatch.setattr(runfiles, "append_line", append)


# (case, inject(monkeypatch), the path named, the kept checkpoint's epoch or None)
CASES = [
    ("initial", _fail_initial, "initial/weights", None),
    pytest.param("first_checkpoint", lambda m: _fail_checkpoint(m, 1), "checkpoints/ckpt-1",
                 None, marks=pytest.mark.slow),  # the tool test below fails there too
    ("later_checkpoint", lambda m: _fail_checkpoint(m, 3), "checkpoints/ckpt-3", 2),
    pytest.param("metrics_line", lambda m: _fail_metrics_line(m, 2), "metrics.jsonl", 1,
                 marks=pytest.mark.slow),
    ("export", _fail_export, "saved_model", 3),
]


@pytest.mark.parametrize("case,inject,named,kept", CASES,
                         ids=[(c.values if hasattr(c, "values") else c)[0] for c in CASES])
def test_full_disk_is_one_line_then_resume_equals_uninterrupted(reference, tmp_path,
                                                               monkeypatch, case, inject,
                                                               named, kept):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        inject(m)
        with pytest.raises(RunWriteError) as e:
            train(run, epochs=EPOCHS)
    if kept is None:
        what = "there is no checkpoint yet -- " + FIX + "start again"
    else:
        what = (f"kept: the checkpoint of epoch {kept} ({run}/checkpoints/ckpt-{kept}) -- "
                + FIX + "resume")
    assert str(e.value) == f"cannot write {run}/{named} (no space left on device); {what}"
    assert not (run / "finished.json").exists() and not (run / "run.lock").exists()
    train(run, epochs=EPOCHS)  # space again: the same command
    assert metrics_bytes(run) == metrics_bytes(reference)
    want, got = ckpt_tensors(reference, EPOCHS), ckpt_tensors(run, EPOCHS)
    assert sorted(want) == sorted(got)
    for k in want:
        assert (want[k] == got[k]).all(), k


def test_what_counts_as_a_write_failure(tmp_path):
    rd = run_rundir.RunDir(str(tmp_path / "run"))
    quota = OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "run" / "flags.txt"))
    assert str(rd.write_failure(quota)).startswith(
        f"cannot write {tmp_path}/run/flags.txt (disk quota exceeded); there is no "
        "checkpoint yet -- free space")
    denied = tf.errors.PermissionDeniedError(None, None, f"{tmp_path}/run/logs/x; Permission "
                                             "denied")
    assert str(rd.write_failure(denied)).startswith(
        f"cannot write {tmp_path}/run/logs/x (permission denied); there is no checkpoint yet "
        "-- make --model_dir writable")
    # Not the run directory's: an unreadable data file, a GPU out of memory, a bug.
    assert rd.write_failure(tf.errors.PermissionDeniedError(
        None, None, "/data/train.tfrecord; Permission denied")) is None
    assert rd.write_failure(tf.errors.ResourceExhaustedError(
        None, None, "OOM when allocating tensor with shape[4096,4096]")) is None
    assert rd.write_failure(ValueError("x")) is None


def test_tool_exits_74_with_one_line(tmp_path, monkeypatch, capsys):
    tool = train_tool.load("train_tool_write_failure")
    run = tmp_path / "run"
    argv = ["train.py", "--dataset=hltm", "--hltm_depth=3", "--hltm_hid=4",
            "--batch_size=16", "--steps_per_epoch=3", "--hltm_samples_per_epoch=64",
            "--hltm_eval_samples=128", "--epochs=1", "--verbose=0", f"--model_dir={run}"]
    tool.parse_flags(argv)
    _fail_checkpoint(monkeypatch, 1)
    with pytest.raises(SystemExit) as e:
        tool.main(["train.py"])
    assert e.value.code == 74 == tool.EXIT_WRITE_FAILED
    assert capsys.readouterr().err == (
        f"train.py: error: cannot write {run}/checkpoints/ckpt-1 (no space left on device); "
        f"there is no checkpoint yet -- {FIX}start again\n")
