"""One writer per run directory: ``model_dir/run.lock``.

Two training processes on one ``--model_dir`` (a job resubmitted beside a live one, the
same command typed twice) would interleave ``metrics.jsonl``, cut each other's lines on
resume and leave checkpoints of two runs. :class:`RunLock` is taken before the trainer
writes anything and released when it ends (normally, by an exception or an interrupt);
a second process is refused with one line naming the holder.

The lock file holds JSON ``{"host", "pid", "pid_start", "started", "heartbeat"}``.

Local disk: the file is created with ``O_CREAT | O_EXCL`` (atomic: exactly one process
creates it; also on NFS v3+). A lock left by a process that died without releasing it
(SIGKILL, a power cut) is *stale* when it names this host and a PID that is gone, a zombie,
or a newer process reusing the PID (``pid_start``, Linux ``/proc/PID/stat``); it is taken
over with one note on stderr. A lock of another host cannot be checked from here: the
refusal names the file to delete once that run is known to be gone.

URLs (``gs://``): ``tf.io.gfile`` has no exclusive create and no generation precondition,
so the lock there is a best-effort *lease*: the holder rewrites the file every
``HEARTBEAT_S`` seconds, and a lock not rewritten for ``LEASE_S`` seconds is stale. A new
holder writes its lock, waits ``SETTLE_S`` and reads it back; two processes that start
within about that time of each other on the same URL can both go on (the remaining
window; submit one job per ``--model_dir``).

Pure Python plus ``tf.io.gfile`` for URLs (imported only then).
"""

import json
import os
import socket
import sys
import threading
import time
import uuid

LOCK_FILE = "run.lock"
LEASE_S = 300       # a URL lock not rewritten for this long is stale
HEARTBEAT_S = 60    # how often the holder of a URL lock rewrites it
SETTLE_S = 2.0      # URL: wait before reading back a freshly written lock
_PARTIAL_S = 30     # a local lock file still empty after this long was left by a crash


class RunLocked(Exception):
    """Another process holds the run directory; ``str`` is the one-line reason."""


def _note(tool, message):
    sys.stderr.write(f"{tool}: note: {message}\n")
    sys.stderr.flush()


def _is_remote(path):
    return "://" in os.fspath(path)


def _pid_start(pid):
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def _pid_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid, pid_start):
    """False when process ``pid`` of this host is certainly gone (or is another process
    that reuses the PID); True otherwise."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    if _pid_state(pid) == "Z":  # killed, not yet reaped by its parent
        return False
    now = _pid_start(pid)
    return not (pid_start and now and now != pid_start)


def _parse_remote(text):
    # The first JSON object: ram:// (the tests' gs:// stand-in) overwrites a file in place
    # without truncating it; gs:// replaces the object.
    return json.JSONDecoder().raw_decode(text.strip())[0]


def describe(holder, path):
    """``pid 123 on host vm since 2026-12-04 20:51:33 UTC`` from a lock's contents."""
    if not holder:
        return f"a process that is just taking it ({path})"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {since}"


class RunLock:
    """Context manager holding ``model_dir/run.lock`` (see the module docstring).

    ``acquire()`` creates ``model_dir`` if needed; ``release()`` deletes the lock, and the
    directory too when this lock created it and nothing else was written (a refusal after
    the lock, e.g. an empty data set, then leaves nothing behind).

    Raises:
      RunLocked: from ``acquire`` when a live process holds the directory.
    """

    def __init__(self, model_dir, tool="train.py"):
        self.model_dir = os.fspath(model_dir)
        self.tool = tool   # names the tool in the take-over note
        self.path = os.path.join(self.model_dir, LOCK_FILE)
        self.remote = _is_remote(self.model_dir)
        self.held = False
        self._created_dir = False
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._heartbeat = None

    def _contents(self):
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "pid_start": _pid_start(os.getpid()), "started": self._started,
                "heartbeat": time.time(), "token": self._token}

    # -- local disk -------------------------------------------------------------------------

    def _read_local(self):
        """(holder dict or None, age in seconds); (None, None) when there is no file."""
        try:
            with open(self.path) as f:
                text = f.read()
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None, None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        return (holder if isinstance(holder, dict) else None), age

    def _stale(self, holder, age):
        """A reason string when the lock is stale, else None."""
        if holder is None:
            return (f"an empty lock file {age:.0f} s old (a process killed while taking it)"
                    if age > _PARTIAL_S else None)
        if holder.get("host") != socket.gethostname():
            return None
        if _alive(int(holder.get("pid", -1)), holder.get("pid_start")):
            return None
        return f"pid {holder.get('pid')} on this host is gone"

    def _acquire_local(self):
        if not os.path.isdir(self.model_dir):
            try:
                os.makedirs(self.model_dir)
                self._created_dir = True
            except FileExistsError:
                pass
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, age = self._read_local()
                if age is None:
                    continue  # released between the two calls: try again
                reason = self._stale(holder, age)
                if reason is None:
                    raise RunLocked(self._refusal(holder))
                self._take_over_local(holder, reason)
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(self._contents()) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:  # a full disk, Ctrl-C: leave no empty lock behind
                os.remove(self.path)
                raise
            return
        raise RunLocked(f"{self.path} keeps changing hands; is another run starting here?")

    def _take_over_local(self, holder, reason):
        """Moves a stale lock aside (``rename(2)``: one process wins); a lock that turns
        out not to be the stale one read before (taken meanwhile) is put back."""
        aside = f"{self.path}.stale-{self._token[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            with open(aside) as f:
                moved = json.loads(f.read() or "null")
        except ValueError:
            moved = None
        if moved != holder:  # someone took it since: give it back, and be refused
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.remove(aside)
            raise RunLocked(self._refusal(moved))
        os.remove(aside)
        _note(self.tool, f"took over the lock of {self.model_dir} from a run that ended "
              f"without releasing it ({reason})")

    # -- URLs (best-effort lease) -----------------------------------------------------------

    def _acquire_remote(self):
        from tensorflow.io import gfile
        if gfile.exists(self.path):
            try:
                with gfile.GFile(self.path) as f:
                    holder = _parse_remote(f.read())
                age = time.time() - float(holder.get("heartbeat", 0))
            except Exception:  # noqa: BLE001  unreadable / half-copied: treat as stale
                holder, age = None, float("inf")
            if age < LEASE_S and not (holder and self._stale(holder, age)):
                raise RunLocked(self._refusal(holder))
            _note(self.tool, f"took over the lock of {self.model_dir} (its holder "
                  f"{describe(holder, self.path)} stopped renewing it)")
        gfile.makedirs(self.model_dir)
        self._write_remote()
        # ram:// (the tests' stand-in) lives in this process: no other writer to wait for.
        time.sleep(0 if self.model_dir.startswith("ram://") else SETTLE_S)
        with gfile.GFile(self.path) as f:
            holder = _parse_remote(f.read())
        if holder.get("token") != self._token:
            raise RunLocked(self._refusal(holder))
        self._heartbeat = threading.Thread(target=self._renew, daemon=True)
        self._heartbeat.start()

    def _write_remote(self):
        from tensorflow.io import gfile
        if gfile.exists(self.path):  # replaced, not overwritten in place (ram://)
            gfile.remove(self.path)
        with gfile.GFile(self.path, "w") as f:
            f.write(json.dumps(self._contents()) + "\n")

    def _renew(self):
        from tensorflow.io import gfile
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with gfile.GFile(self.path) as f:
                    if _parse_remote(f.read()).get("token") != self._token:
                        return  # taken over (this process stalled past the lease)
                self._write_remote()
            except Exception:  # noqa: BLE001  a missed heartbeat; the next one may work
                pass

    # -- both -------------------------------------------------------------------------------

    def _refusal(self, holder):
        other_host = holder and holder.get("host") != socket.gethostname()
        gone = (f"; if that run is gone, delete {self.path}" if other_host or self.remote
                else "")
        return (f"{self.model_dir} is in use by another training run "
                f"({describe(holder, self.path)})"
                f"; wait for it to end or pass another --model_dir{gone}")

    def acquire(self):
        self._started = time.time()
        if self.remote:
            self._acquire_remote()
        else:
            self._acquire_local()
        self.held = True
        return self

    def release(self):
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        try:
            if self.remote:
                from tensorflow.io import gfile
                with gfile.GFile(self.path) as f:
                    mine = _parse_remote(f.read()).get("token") == self._token
                if mine:
                    gfile.remove(self.path)
            else:
                os.remove(self.path)
                if self._created_dir and not os.listdir(self.model_dir):
                    os.rmdir(self.model_dir)
        except Exception:  # noqa: BLE001  gone already, or the disk went away: nothing to do
            pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
