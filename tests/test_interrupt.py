"""Ctrl-C (SIGINT) and SIGTERM: the run stops at a safe point with one line on stderr and
exit 130 / 143, and re-running the command resumes to the uninterrupted result.

In-process tests send the signal to this process from a callback at a chosen execution
(tests/tiny_runs.py: train_interrupted); the subprocess tests send it to a real
tools/train.py. The tiny HLTM here has 5 steps per epoch and 2 per execution (2 + 2 + 1).
"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dualssl_tf.run import interrupt as run_interrupt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import kill_resume  # noqa: E402

from tests.tiny_runs import ckpt_tensors, metrics_bytes, train, train_interrupted  # noqa: E402

ODD = dict(steps_per_epoch=5, steps_per_execution=2)


def assert_same_run(a, b, epoch):
    assert metrics_bytes(a) == metrics_bytes(b)
    ta, tb = ckpt_tensors(a, epoch), ckpt_tensors(b, epoch)
    assert sorted(ta) == sorted(tb) and ta
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)


def checkpoints(model_dir):
    return sorted(int(n[5:-6]) for n in os.listdir(os.path.join(model_dir, "checkpoints"))
                  if n.startswith("ckpt-") and n.endswith(".index"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 4-epoch run of the odd tiny HLTM."""
    ref = tmp_path_factory.mktemp("interrupt") / "ref"
    train(ref, epochs=4, **ODD)
    return ref


def test_sigint_inside_an_epoch_stops_after_the_execution_and_resumes(reference, tmp_path):
    run = tmp_path / "run"
    e = train_interrupted(run, epoch=3, batch=2, epochs=4, **ODD)
    # The execution of steps 13-14 ran; nothing of epoch 3 was written.
    assert (e.signum, e.exit_status, e.epoch, e.step, e.between_epochs) == (
        signal.SIGINT, 130, 3, 14, False)
    assert run_interrupt.message(e, str(run)) == (
        "interrupted at epoch 3, step 14; the last checkpoint is epoch 2 -- run the same "
        "command to resume")
    assert len(metrics_bytes(run).splitlines()) == 3 and checkpoints(run)[-1] == 2
    assert not (run / "saved_model").exists()
    train(run, epochs=4, **ODD)
    assert_same_run(reference, run, 4)


def test_sigterm_in_an_epochs_last_execution_checkpoints_that_epoch(reference, tmp_path):
    # checkpoint_every=3: epoch 2 is not due, so the stop writes ckpt-2 itself (quick).
    run = tmp_path / "run"
    e = train_interrupted(run, epoch=2, batch=4, sig=signal.SIGTERM, epochs=4,
                          checkpoint_every=3, **ODD)
    assert (e.exit_status, e.epoch, e.step, e.between_epochs) == (143, 2, 10, True)
    assert run_interrupt.message(e, str(run)).startswith(
        "interrupted after epoch 2, step 10; the last checkpoint is epoch 2 --")
    assert checkpoints(run) == [2] and len(metrics_bytes(run).splitlines()) == 3
    train(run, epochs=4, **ODD)
    assert_same_run(reference, run, 4)


def test_message_without_a_checkpoint(tmp_path):
    e = run_interrupt.Interrupted(signal.SIGINT)
    assert e.exit_status == 130 and isinstance(e, BaseException)
    assert not isinstance(e, Exception)  # no `except Exception` swallows it
    assert run_interrupt.message(e, str(tmp_path)) == (
        "interrupted before training started; there is no checkpoint yet -- run the same "
        "command to start again")


def test_no_catcher_leaves_signals_alone(tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    with run_interrupt.SignalCatcher():
        assert run_interrupt.active() is not None
        assert signal.getsignal(signal.SIGINT) != handler
    assert run_interrupt.active() is None and signal.getsignal(signal.SIGINT) == handler


# -- real processes -----------------------------------------------------------------------

FLAGS = kill_resume.tiny_flags(epochs=40, steps_per_epoch=5, checkpoint_every=1,
                               steps_per_execution=2)


def _start(model_dir, flags=FLAGS, env=None):
    return subprocess.Popen([sys.executable, kill_resume.TOOL, *flags,
                             f"--model_dir={model_dir}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env or kill_resume._env())


def _wait_for_lines(path, n, proc, timeout=300):
    start = time.time()
    while time.time() - start < timeout and proc.poll() is None:
        if os.path.exists(path) and sum(1 for l in open(path) if l.endswith("\n")) >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} did not reach {n} lines (exit {proc.poll()})")


def _interrupt(run, sig, lines):
    """Starts the tool, sends ``sig`` once metrics.jsonl has ``lines`` lines, checks the
    exit status and the one stderr line; returns (epoch, step, last checkpoint, at)."""
    proc = _start(run)
    _wait_for_lines(run / "metrics.jsonl", lines, proc)  # it is training
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err[-2000:]
    assert "Traceback" not in err
    own = kill_resume.own_lines(err)  # all but TensorFlow's C++ start-up lines
    assert len(own) == 1 and kill_resume.INTERRUPTED_LINE.match(own[0]), err[-2000:]
    # Under TF_CPP_MIN_LOG_LEVEL=3 (kill_resume._env) those are captured too (issue 20).
    assert err.splitlines() == own, err[-2000:]
    m = kill_resume.INTERRUPTED_LINE.match(own[0])
    epoch, step, ckpt = int(m.group(2)), int(m.group(3)), int(m.group(4))
    # Inside an epoch the stop is after an execution (2 + 2 + 1 steps); after one it is at
    # the epoch's end, which is then checkpointed.
    if m.group(1) == "at":
        assert ckpt == epoch - 1 and step in ((epoch - 1) * 5 + 2, (epoch - 1) * 5 + 4)
    else:
        assert ckpt == epoch and step == epoch * 5
    assert ckpt == checkpoints(run)[-1]
    return epoch, step, ckpt, m.group(1)


def test_tool_sigint_then_sigterm_one_line_each_then_resume_equals_uninterrupted(tmp_path):
    run = tmp_path / "run"
    _, _, first, _ = _interrupt(run, signal.SIGINT, 3)        # epochs 0-2 written
    _, _, second, _ = _interrupt(run, signal.SIGTERM, first + 3)
    assert second > first
    # Re-running the same command (fewer epochs, for time) resumes to the uninterrupted run.
    epochs = second + 1
    short = [f for f in FLAGS if not f.startswith("--epochs=")] + [f"--epochs={epochs}"]
    again = kill_resume.run_to_end(short, run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"Resuming {run} at epoch {second} (step {second * 5})" in again.stdout
    # The reference is the same command run uninterrupted: resume is promised bit-identical
    # for the same command in the same environment on the same machine. An in-process run
    # is not that: this process's TensorFlow picked its CPU kernels by the machine (oneDNN
    # on AVX-512, Eigen on AVX2), the tool turns oneDNN on (tools/cli.py), and the two
    # differ in the last bits on some machines (issue 25).
    ref = tmp_path / "ref"
    done = kill_resume.run_to_end(short, ref)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(ref, run, epochs)


@pytest.mark.parametrize("level", ["3", None])
def test_tool_sigint_while_starting_is_one_line_too(tmp_path, level):
    # Whatever TF_CPP_MIN_LOG_LEVEL (3 or unset), TensorFlow's start-up lines stay captured,
    # also when the signal comes while TensorFlow loads (issue 20).
    env = {k: v for k, v in kill_resume._env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    run = tmp_path / "run"
    proc = _start(run, env=env)
    time.sleep(1.5)  # TensorFlow is loading or the data is being built
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = err.splitlines()
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and re.match(
        r"^train\.py: interrupted (before training started|at epoch 1, step [24]); there is "
        r"no checkpoint yet -- run the same command to start again$", lines[0]), lines
