"""Resume after a crash: checkpoints, metrics.jsonl repair, corrupt checkpoints, SIGKILL.

The fast tests run the trainer in-process on a tiny HLTM (depth 3, hid 4) and on tiny
generated images whose epoch is not a multiple of --steps_per_execution, and compare a
resumed run with an uninterrupted one *exactly* (CPU, fixed seed, deterministic ops): the
metrics.jsonl bytes and every tensor of the last checkpoint. The SIGKILL / SIGINT tests
(slow) do the same through real processes interrupted at random points (see
benchmarks/kill_resume.py); tests/test_interrupt.py has the fast signal tests.
"""

import json
import os
import random
import shutil
import signal
import sys

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config
from dualssl_tf.run import checkpoints, rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import kill_resume  # noqa: E402

from tests.tiny_runs import (TINY_HLTM as BASE, TINY_IMAGES, ckpt_tensors,  # noqa: E402
                             metrics_bytes, train, train_interrupted)


def assert_same_run(a, b, epoch, tensors=16):  # HLTM: 6 weights, 8 optimizer, epoch, step
    assert metrics_bytes(a) == metrics_bytes(b)
    ta, tb = ckpt_tensors(a, epoch), ckpt_tensors(b, epoch)
    assert sorted(ta) == sorted(tb) and len(ta) == tensors
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished 4-epoch reference run and a finished 3-epoch run (same flags)."""
    root = tmp_path_factory.mktemp("resume")
    train(root / "ref4", epochs=4)
    train(root / "three", epochs=3)
    return root


def copy_three(runs, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(runs / "three", dst)
    return dst


def test_reference_run_layout(runs):
    ref = runs / "ref4"
    records = [json.loads(l) for l in metrics_bytes(ref).decode().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    ckpts = sorted(os.listdir(ref / "checkpoints"))
    # keep_checkpoints=3: epochs 2..4 kept, 1 rotated out.
    assert [n for n in ckpts if n.endswith(".index")] == ["ckpt-2.index", "ckpt-3.index",
                                                          "ckpt-4.index"]
    t = ckpt_tensors(ref, 4)
    assert t["epoch/.ATTRIBUTES/VARIABLE_VALUE"] == 4
    assert t["step/.ATTRIBUTES/VARIABLE_VALUE"] == 4 * BASE.optim.steps_per_epoch
    assert json.load(open(ref / "finished.json")) == {"epochs": 4}


def test_crash_between_metrics_line_and_checkpoint_is_repaired(runs, tmp_path, capsys):
    # State of a kill right after epoch 3's metrics line (and half of an epoch-4 line) but
    # before ckpt-3 was written: the line must go, training restarts at epoch 2.
    run = copy_three(runs, tmp_path)
    for name in os.listdir(run / "checkpoints"):
        if name.startswith("ckpt-3."):
            os.remove(run / "checkpoints" / name)
    os.remove(run / "finished.json")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "learning_rate": 0.1, "lo')
    train(run, epochs=4)
    assert "Resuming" in capsys.readouterr().out
    assert_same_run(runs / "ref4", run, 4)


def test_finished_run_rerun_does_nothing(runs, tmp_path):
    run = copy_three(runs, tmp_path)
    before = {p: os.path.getmtime(os.path.join(d, p)) for d, _, fs in os.walk(run)
              for p in fs}
    out = train(run, epochs=3)
    assert out["finished"] and "already finished (3 epochs)" in out["summary"]
    after = {p: os.path.getmtime(os.path.join(d, p)) for d, _, fs in os.walk(run) for p in fs}
    assert before == after


def test_truncated_newest_checkpoint_falls_back_to_previous(runs, tmp_path, capfd):
    run = copy_three(runs, tmp_path)
    os.remove(run / "finished.json")
    data = run / "checkpoints" / "ckpt-3.data-00000-of-00001"
    size = os.path.getsize(data)
    with open(data, "r+b") as f:
        f.truncate(size // 2)
    train(run, epochs=4)
    err = [l for l in capfd.readouterr().err.splitlines() if "ckpt-3" in l]
    assert len(err) == 1, err
    assert err[0].startswith("train.py: warning: checkpoint") and "falling back to ckpt-2" in err[0]
    # Resumed from epoch 2 and trained epochs 3 and 4 again: identical to the reference.
    assert_same_run(runs / "ref4", run, 4)
    # The rejected files were set aside, the new ckpt-3 and ckpt-4 replaced them.
    names = os.listdir(run / "checkpoints")
    assert "ckpt-3.data-00000-of-00001.corrupt" in names and "ckpt-4.index" in names


def test_kill_between_last_checkpoint_and_export_only_exports(runs, tmp_path):
    run = copy_three(runs, tmp_path)
    shutil.rmtree(run / "saved_model")
    os.remove(run / "finished.json")
    metrics = metrics_bytes(run)
    out = train(run, epochs=3)
    assert not out["finished"] and metrics_bytes(run) == metrics
    assert json.load(open(run / "finished.json")) == {"epochs": 3}
    x = tf.constant(np.eye(8, dtype=np.float32))
    got = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"](x)
    want = tf.saved_model.load(str(runs / "three" / "saved_model")).signatures[
        "serving_default"](x)
    np.testing.assert_array_equal(got["representation"], want["representation"])


@pytest.mark.parametrize("damage,reason", [
    ("missing_index", "index file missing"),
    ("missing_data", "data file missing"),
    ("garbage_index", "Error"),
    ("flipped_byte", "Error"),
])
def test_unusable_checkpoint_is_reported_in_one_line(runs, tmp_path, capfd, damage, reason):
    run = copy_three(runs, tmp_path)
    prefix = str(run / "checkpoints" / "ckpt-3")
    data = prefix + ".data-00000-of-00001"
    if damage == "missing_index":
        os.remove(prefix + ".index")
    elif damage == "missing_data":
        os.remove(data)
    elif damage == "garbage_index":
        with open(prefix + ".index", "wb") as f:
            f.write(b"\x00garbage" * 7)
    else:  # one flipped byte in the tensor data: caught by the CRC check on read
        raw = bytearray(open(data, "rb").read())
        raw[len(raw) // 2] ^= 0xFF
        open(data, "wb").write(bytes(raw))
    found = checkpoints.RunCheckpoints(str(run)).find_latest()
    assert (found["epoch"], found["step"]) == (2, 2 * BASE.optim.steps_per_epoch)
    assert found["path"].endswith("ckpt-2") and found["rejected"] == [prefix]
    err = [l for l in capfd.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith(f"train.py: warning: checkpoint {prefix} "
                                               "is unusable (")
    assert reason in err[0] and err[0].endswith("falling back to ckpt-2")


def test_all_checkpoints_unusable_means_start_from_scratch(runs, tmp_path, capfd):
    run = copy_three(runs, tmp_path)
    for name in os.listdir(run / "checkpoints"):
        if name.endswith(".index"):
            os.remove(run / "checkpoints" / name)
    assert checkpoints.RunCheckpoints(str(run)).find_latest() is None
    err = [l for l in capfd.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 3  # ckpt-1, -2, -3 (keep_checkpoints=3)
    assert err[-1].endswith("ckpt-1 is unusable (ValueError: index file missing); "
                            "no older checkpoint, starting from scratch")


def test_partial_save_leftovers_are_removed(runs, tmp_path):
    # A kill inside tf.train.Checkpoint.write leaves a <prefix>_temp directory.
    run = copy_three(runs, tmp_path)
    temp = run / "checkpoints" / "ckpt-4_temp"
    temp.mkdir()
    (temp / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    found = checkpoints.RunCheckpoints(str(run)).find_latest()
    assert found["epoch"] == 3 and not temp.exists()


def test_metrics_truncation_keeps_epoch_zero_and_drops_partial_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"epoch": e, "loss": 1.0 / (e + 1)}) + "\n" for e in range(5)]
    path.write_text("".join(lines) + '{"epoch": 5, "lo')
    initial = rundir.truncate_metrics(str(path), 2)
    assert path.read_text() == "".join(lines[:3])
    assert initial == {"epoch": 0, "loss": 1.0}


def test_resume_refuses_other_model_shape(runs, tmp_path):
    run = copy_three(runs, tmp_path)
    with pytest.raises(config.ConfigError, match="--hltm_hid=4"):
        train(run, epochs=4, hltm_hid=5)


@pytest.mark.slow  # three TensorFlow subprocesses: ~30 s alone
def test_tool_resumes_past_missing_index_with_one_line_no_traceback(runs, tmp_path):
    # Reference and damaged run both made by the tool in their own processes: a run made
    # in this (pytest) process may differ from a subprocess's in the last bits (oneDNN).
    flags = [f"--flagfile={runs / 'three' / 'flags.txt'}"]
    ref = kill_resume.run_to_end(flags + ["--epochs=4"], tmp_path / "ref4")
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "run"
    three = kill_resume.run_to_end(flags + ["--epochs=3"], run)
    assert three.returncode == 0, three.stderr[-2000:]
    os.remove(run / "finished.json")
    os.remove(run / "checkpoints" / "ckpt-3.index")
    proc = kill_resume.run_to_end(
        [f"--flagfile={run / 'flags.txt'}", "--epochs=4"], run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    warn = [l for l in proc.stderr.splitlines() if l.startswith("train.py:")]
    assert len(warn) == 1 and "ckpt-3" in warn[0] and "falling back to ckpt-2" in warn[0]
    assert "Resuming" in proc.stdout and "at epoch 2 (step 6)" in proc.stdout
    assert_same_run(tmp_path / "ref4", run, 4)


@pytest.mark.slow
@pytest.mark.parametrize("sig,steps_per_execution", [
    (signal.SIGKILL, 2), (signal.SIGKILL, 3), (signal.SIGINT, 3)],
    ids=["SIGKILL", "SIGKILL-odd", "SIGINT-odd"])  # odd: 8 steps = 3 + 3 + 2
def test_interrupts_at_random_points_then_resume_equals_uninterrupted(tmp_path, sig,
                                                                      steps_per_execution):
    epochs = 8
    flags = kill_resume.tiny_flags(epochs=epochs, steps_per_epoch=8, checkpoint_every=2,
                                   steps_per_execution=steps_per_execution)
    ref = kill_resume.run_to_end(flags, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    points, final = kill_resume.run_with_kills(flags, str(tmp_path / "killed"), kills=3,
                                               epochs=epochs, rng=random.Random(7),
                                               max_delay=0.5, sig=sig)
    assert final.returncode == 0, final.stderr[-2000:]
    assert sum(p["killed"] for p in points) >= 2, points
    for p in points:
        ok, why = kill_resume.check_interrupted(p)
        assert ok, (why, p)
    for what, equal, detail in kill_resume.compare_runs(tmp_path / "ref",
                                                        tmp_path / "killed", epochs):
        assert equal, (what, detail, points)
    again = kill_resume.run_to_end(flags, tmp_path / "killed")
    assert again.returncode == 0 and "already finished" in again.stdout


# Three ResNet runs (~45 s alone): slow. In the default suite tests/data/test_images.py
# guards the image stream (the same for every iterator, resumable across passes).
@pytest.mark.slow
def test_images_odd_epoch_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    # 5 steps per epoch, 2 per execution (2 + 2 + 1): Ctrl-C inside epoch 2, then resume.
    # The image stream must continue exactly (its shuffle once depended on ViewSummary's
    # peek at the first batch, which only a fresh run takes) and the epoch must stay 5 steps.
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(ref, base=TINY_IMAGES, epochs=2)
    e = train_interrupted(run, epoch=2, batch=2, base=TINY_IMAGES, epochs=2)
    assert (e.epoch, e.step, e.between_epochs) == (2, 9, False)
    assert len(metrics_bytes(run).splitlines()) == 2  # epochs 0 and 1
    train(run, base=TINY_IMAGES, epochs=2)
    assert ckpt_tensors(run, 2)["step/.ATTRIBUTES/VARIABLE_VALUE"] == 10
    n = len(ckpt_tensors(ref, 2))
    assert n > 100  # ResNet-18 + head + probe weights, BatchNorm statistics, Adam state
    assert_same_run(ref, run, 2, tensors=n)


def test_empty_dataset_is_a_config_error_before_any_write(tmp_path, monkeypatch):
    import keras
    from dualssl_tf import tasks

    def empty_task(cfg, start_step=0):
        batch = {"view1": tf.zeros([16, 8]), "view2": tf.zeros([16, 8])}
        encoder = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        return tasks.Task(
            make_data=lambda b, ctx=None: tf.data.Dataset.from_tensors(batch).take(0).repeat(),
            steps_per_epoch=4, encoder=encoder, input_shape=(8,))

    monkeypatch.setattr(tasks, "build", empty_task)
    with pytest.raises(config.ConfigError, match=r"^--dataset: 'hltm' yields no batch of "
                                                 r"--batch_size=16"):
        train(tmp_path / "run", epochs=2)
    assert not (tmp_path / "run").exists()
