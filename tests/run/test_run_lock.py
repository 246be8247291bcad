"""One writer per run directory (dualssl_tf/run/lock.py): a second process is refused in
one line, exit 2, writing nothing; a lock left by a killed process is taken over.

The in-process tests drive RunLock itself (a lock held by this live process, a dead PID,
a zombie, another host, a URL lease); the subprocess tests run real tools/train.py
processes with the tiny HLTM of benchmarks/kill_resume.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dualssl_tf.run import lock as run_lock
from dualssl_tf.run.lock import LOCK_FILE, RunLock, RunLocked

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import kill_resume  # noqa: E402

from tests.tiny_runs import metrics_bytes, train  # noqa: E402


def _dead_pid():
    """The PID of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(model_dir, **holder):
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, LOCK_FILE), "w") as f:
        f.write(json.dumps(holder) + "\n")


def test_lock_file_names_its_holder_and_goes_on_release(tmp_path):
    run = tmp_path / "run"
    with RunLock(run) as held:
        holder = json.loads((run / LOCK_FILE).read_text())
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
        assert abs(holder["started"] - time.time()) < 60 and held.held
    # It created the directory and nothing else was written: nothing is left.
    assert not run.exists()
    run.mkdir()
    with RunLock(run):
        (run / "flags.txt").write_text("x")
    assert sorted(os.listdir(run)) == ["flags.txt"]


def test_second_holder_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        before = sorted(os.listdir(run))
        with pytest.raises(RunLocked) as e:
            RunLock(run).acquire()
        assert sorted(os.listdir(run)) == before  # the refused one wrote nothing
    assert str(e.value).startswith(f"{run} is in use by another training run (pid "
                                   f"{os.getpid()} on host {socket.gethostname()} since ")
    assert str(e.value).endswith("; wait for it to end or pass another --model_dir")
    RunLock(run).acquire().release()  # free again


def test_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_note(tmp_path, capfd):
    run = tmp_path / "run"
    pid = _dead_pid()
    _write_lock(run, host=socket.gethostname(), pid=pid, started=time.time() - 50)
    with RunLock(run):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    err = capfd.readouterr().err
    assert err == (f"train.py: note: took over the lock of {run} from a run that ended "
                   f"without releasing it (pid {pid} on this host is gone)\n")
    assert sorted(os.listdir(run)) == []  # no ".stale-*" file left


def test_lock_of_a_reused_pid_or_a_zombie_is_stale(tmp_path):
    run = tmp_path / "run"
    # This process's PID with another start time: the PID was reused after the holder died.
    _write_lock(run, host=socket.gethostname(), pid=os.getpid(), pid_start="1", started=0)
    RunLock(run).acquire().release()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while run_lock._pid_state(zombie.pid) != "Z":  # exited, not yet reaped
        time.sleep(0.01)
    _write_lock(run, host=socket.gethostname(), pid=zombie.pid, started=0)
    RunLock(run).acquire().release()
    zombie.wait()


def test_lock_of_another_host_is_refused_naming_the_file_to_delete(tmp_path):
    run = tmp_path / "run"
    _write_lock(run, host="other-host", pid=_dead_pid(), started=0)
    with pytest.raises(RunLocked, match=r"on host other-host since 1970-01-01 00:00:00 UTC\); "
                       r"wait for it to end or pass another --model_dir; if that run is "
                       rf"gone, delete {run / LOCK_FILE}$"):
        RunLock(run).acquire()


def test_empty_lock_file_is_being_taken_until_it_is_old(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("")
    with pytest.raises(RunLocked, match="a process that is just taking it"):
        RunLock(run).acquire()
    old = time.time() - 2 * run_lock._PARTIAL_S
    os.utime(run / LOCK_FILE, (old, old))
    RunLock(run).acquire().release()


def test_url_lock_is_a_lease(monkeypatch):
    """ram:// stands in for gs://: no exclusive create, so a lease renewed by heartbeats."""
    import tensorflow as tf
    monkeypatch.setattr(run_lock, "SETTLE_S", 0.0)
    run = "ram://lock_test/run"
    path = f"{run}/{LOCK_FILE}"
    with RunLock(run):
        holder = json.loads(tf.io.gfile.GFile(path).read())
        assert holder["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=rf"if that run is gone, delete {path}$"):
            RunLock(run).acquire()
    assert not tf.io.gfile.exists(path)
    # Not renewed for longer than the lease: taken over.
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(dict(host="other-host", pid=1, started=0,
                                heartbeat=time.time() - run_lock.LEASE_S - 1)))
    RunLock(run).acquire().release()


# -- real processes -----------------------------------------------------------------------

FLAGS = kill_resume.tiny_flags(epochs=2, steps_per_epoch=5, checkpoint_every=1)
REFUSED = ("train.py: error: --model_dir: {run} is in use by another training run (pid {pid} "
           "on host {host} since ")


def _start(run, flags):
    return subprocess.Popen([sys.executable, kill_resume.TOOL, *flags, f"--model_dir={run}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=kill_resume._env())


def _reference(tmp_path, name, seed, epochs=2):
    ref = tmp_path / name  # in-process: the run FLAGS (with this seed) describe
    train(ref, epochs=epochs, steps_per_epoch=5, steps_per_execution=2, seed=seed,
          hltm_eval_samples=256, checkpoint_every=1)
    return ref


def assert_same_metrics(run, ref):
    """Every record of one run alone, once and in order. Compared to 1e-6 relative: the
    tool's process and this one may pick other CPU kernels (oneDNN), which differ in the
    last float32 digits (~1e-7 relative)."""
    got = [json.loads(l) for l in metrics_bytes(run).splitlines()]
    want = [json.loads(l) for l in metrics_bytes(ref).splitlines()]
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    flat = lambda r: {f"{k}/{kk}" if isinstance(v, dict) else k: vv  # noqa: E731
                      for k, v in r.items() for kk, vv in (v.items() if isinstance(v, dict)
                                                           else [(None, v)])}
    for g, w in zip(got, want):
        g, w = flat(g), flat(w)
        assert sorted(g) == sorted(w)
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=1e-6, abs=1e-9), (g["epoch"], k)


def _together(run, flag_lists):
    """Starts one tool per flag list at once; returns [(proc, stderr)], the winner's index."""
    procs = [_start(run, flags) for flags in flag_lists]
    results = [(p, p.communicate(timeout=300)[1]) for p in procs]
    winners = [i for i, (p, _) in enumerate(results) if p.returncode == 0]
    assert len(winners) == 1, [(p.returncode, e[-1500:]) for p, e in results]
    assert kill_resume.own_lines(results[winners[0]][1]) == [], results[winners[0]][1][-2000:]
    return results, winners[0]


def test_two_processes_with_the_same_flags_started_together_one_trains(tmp_path):
    # ~15 s: one trains to the result it would have alone; the other exits 2 with one line
    # naming the winner, and wrote nothing (one events file, one flags.txt).
    run = tmp_path / "run"
    results, w = _together(run, [FLAGS, FLAGS])
    proc, err = results[1 - w]
    lines = kill_resume.own_lines(err)
    assert proc.returncode == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith(REFUSED.format(run=run, pid=results[w][0].pid,
                                              host=socket.gethostname())), lines[0]
    assert lines[0].endswith("; wait for it to end or pass another --model_dir")
    assert_same_metrics(run, _reference(tmp_path, "ref", 3))
    assert not (run / LOCK_FILE).exists()
    assert len(os.listdir(run / "logs" / "train")) == 1


@pytest.mark.slow
def test_two_processes_with_other_flags_started_together_one_trains(tmp_path):
    run = tmp_path / "run"
    other = [f for f in FLAGS if not f.startswith("--seed=")] + ["--seed=4"]
    results, w = _together(run, [FLAGS, other])
    proc, err = results[1 - w]
    lines = kill_resume.own_lines(err)
    assert proc.returncode == 2 and len(lines) == 1, err[-2000:]
    # Refused by the lock; or by flags.txt when the winner had already written it.
    assert lines[0].startswith(REFUSED.format(run=run, pid=results[w][0].pid,
                                              host=socket.gethostname())) or \
        lines[0].startswith("train.py: error: --seed: "), lines[0]
    seed = (3, 4)[w]
    assert f"--seed={seed}\n" in (run / "flags.txt").read_text()
    assert_same_metrics(run, _reference(tmp_path, "ref", seed))
    assert len(os.listdir(run / "logs" / "train")) == 1


@pytest.mark.slow
def test_killed_holder_then_same_command_takes_over_and_resumes(tmp_path):
    # ~25 s: a real train.py holding the run is SIGKILLed mid-run; the same command
    # started again takes the stale lock over (one note) and resumes to the
    # uninterrupted result; a third start while it trains is refused.
    run = tmp_path / "run"
    flags = [f for f in FLAGS if not f.startswith("--epochs=")] + ["--epochs=4"]
    holder = _start(run, flags)
    while not (run / "metrics.jsonl").exists() or len(metrics_bytes(run).splitlines()) < 2:
        assert holder.poll() is None, holder.communicate()[1][-2000:]
        time.sleep(0.01)
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    assert (run / LOCK_FILE).exists()
    again = _start(run, flags)
    while True:  # until the new start holds the lock
        try:
            if json.loads((run / LOCK_FILE).read_text() or "{}").get("pid") == again.pid:
                break
        except (FileNotFoundError, ValueError):
            pass
        assert again.poll() is None, again.communicate()[1][-2000:]
        time.sleep(0.01)
    third = _start(run, flags)
    _, third_err = third.communicate(timeout=300)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    assert kill_resume.own_lines(err) == [
        f"train.py: note: took over the lock of {run} from a run that ended without "
        f"releasing it (pid {holder.pid} on this host is gone)"]
    if third.returncode != 0:  # it may also have come after the end ("already finished")
        assert third.returncode == 2 and kill_resume.own_lines(third_err)[0].startswith(
            REFUSED.format(run=run, pid=again.pid, host=socket.gethostname()))
    assert_same_metrics(run, _reference(tmp_path, "ref", 3, epochs=4))
