"""Interrupt tools/train.py at random points, restart it, and compare with a clean run.

    PYTHONPATH=. python benchmarks/kill_resume.py --kills=5 --epochs=20 --steps_per_epoch=20
    PYTHONPATH=. python benchmarks/kill_resume.py --config=odd_images --signal=SIGINT \\
        --when=execution --kills=3
    PYTHONPATH=. python benchmarks/kill_resume.py --matrix      # every config x kind

Runs the same training twice: once uninterrupted (the reference) and once interrupted
``--kills`` times (each time the same command is started again, so it resumes from its
newest checkpoint), then run to the end. Interruptions:

* ``--signal``: SIGKILL (nothing runs after it), SIGINT (Ctrl-C) or SIGTERM (what a
  preemptible machine sends); for the last two the tool must exit 130 / 143 with exactly one
  ``train.py: interrupted ...`` line on stderr and no traceback;
* ``--when``: ``epoch`` (after the run has a checkpoint and has written a random number of
  further epochs, a random fraction of an epoch later: anywhere in an epoch, between a
  metrics line and its checkpoint, or in the final checkpoint and export), ``execution``
  (the same, then just after the progress bar reports an execution's end, a random 20-80%
  of an execution's duration later: inside a running execution) or ``startup`` (0-4 s after
  the start: while TensorFlow loads or the data is built).

Prints a table of the interruption points and of what was compared:

* ``metrics.jsonl``: byte for byte (no line duplicated or missing, every value equal);
* the last checkpoint: every tensor (weights, optimizer state, iterations, epoch, step)
  exactly, and the largest |difference|;
* the exported SavedModel: its outputs on a fixed input exactly;
* a last re-run of the finished command: exit 0 and "already finished".

``--config`` picks the run: ``tiny`` (a tiny HLTM, shaped by --epochs/--steps_per_epoch/
--checkpoint_every/--steps_per_execution), or a CPU config of configs/ shortened by flag
overrides (see CONFIGS): ``hltm``, ``translation1d``, ``generated_images`` and
``odd_images`` (nothing divides: 1000 examples, batch 48, 7 steps per execution).

Bit-identical results are expected on CPU with ``--deterministic`` (the default): every data
stream is step-indexed, epochs are exactly their steps whatever --steps_per_execution
(dualssl_tf/run/epoch_steps.py), all state is restored exactly, and TF's deterministic ops make
every float op reproducible (the tool keeps oneDNN off for --deterministic runs).

The machine's CPU is shared with other jobs, so the wall times printed are pessimistic.
The functions here are also used by tests/test_resume.py and tests/test_interrupt.py.
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "train.py")
CONFIGS_DIR = os.path.join(ROOT, "configs")

# The one line a SIGINT / SIGTERM leaves on stderr (dualssl_tf/run/interrupt.py).
INTERRUPTED_LINE = re.compile(
    r"^train\.py: interrupted (?:(at|after) epoch (\d+), step (\d+)|before training started); "
    r"(?:the last checkpoint is epoch (\d+) -- run the same command to resume|"
    r"there is no checkpoint yet -- run the same command to start again)$")
# TensorFlow's C++ start-up lines, printed before absl logging is set up (whatever
# TF_CPP_MIN_LOG_LEVEL says): "WARNING: All log messages before absl::InitializeLog() ..."
# and glog-style "I0000 00:00:... file.cc:31] ...".
TF_LOG_LINE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|"
                         r"[IWEF]\d{4} \d+:\d+:\d+\.\d+ +\d+ [\w./-]+:\d+\] )")
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def tiny_flags(epochs=12, steps_per_epoch=8, checkpoint_every=2, steps_per_execution=2,
               seed=3):
    """Flags of a tiny HLTM run (depth 3, hid 4) with momentum, so optimizer state matters."""
    return ["--dataset=hltm", "--hltm_depth=3", "--hltm_children=2", "--hltm_hid=4",
            "--batch_size=16", f"--steps_per_epoch={steps_per_epoch}",
            "--hltm_samples_per_epoch=64", "--hltm_eval_samples=256", "--loss=nce",
            "--temperature=0.1", "--optimizer=sgd", "--learning_rate=0.1", "--momentum=0.9",
            f"--epochs={epochs}", f"--seed={seed}", f"--checkpoint_every={checkpoint_every}",
            f"--steps_per_execution={steps_per_execution}", "--verbose=0",
            "--deterministic=true"]


def _cfg(name):
    return f"--flagfile={os.path.join(CONFIGS_DIR, name)}"


# name -> (flags, epochs, what it is). The configs of configs/ that run on a CPU, shortened
# by overrides placed after the flagfile (absl: the later value wins).
CONFIGS = {
    "hltm": ([_cfg("hltm.cfg"), "--epochs=6", "--checkpoint_every=2"], 6,
             "configs/hltm.cfg, 6 of 50 epochs, checkpoint every 2 (500 steps = 10 x 50, XLA)"),
    "translation1d": ([_cfg("translation1d.cfg")], 10,
                      "configs/translation1d.cfg as it is (50 steps = 2 x 25)"),
    "generated_images": ([_cfg("generated_images.cfg"), "--generated_examples=2000",
                          "--epochs=3"], 3,
                         "configs/generated_images.cfg, 2000 examples, 3 epochs "
                         "(31 steps = 3 x 10 + 1)"),
    "odd_images": ([_cfg("generated_images.cfg"), "--generated_examples=1000",
                    "--batch_size=48", "--steps_per_execution=7", "--epochs=4"], 4,
                   "generated_images.cfg, 1000 examples, batch 48, 7 per execution, 4 epochs "
                   "(20 steps = 7 + 7 + 6)"),
}


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_to_end(flags, model_dir, timeout=900):
    """Runs the tool to completion; returns the CompletedProcess."""
    return subprocess.run([sys.executable, TOOL, *flags, f"--model_dir={model_dir}"],
                          capture_output=True, text=True, env=_env(), timeout=timeout)


def own_lines(stderr):
    """stderr lines that are not TensorFlow's C++ start-up logging (see TF_LOG_LINE)."""
    return [l for l in stderr.splitlines() if l.strip() and not TF_LOG_LINE.match(l)]


def _count_lines(path):
    try:
        with open(path) as f:
            return sum(1 for line in f if line.endswith("\n"))
    except FileNotFoundError:
        return 0


def _stamp(path):
    """Identity of the file's current content (replaced or appended => different)."""
    try:
        st = os.stat(path)
        return st.st_ino, st.st_mtime_ns, st.st_size
    except FileNotFoundError:
        return None


def _has_checkpoint(model_dir):
    d = os.path.join(model_dir, "checkpoints")
    return os.path.isdir(d) and any(n.endswith(".index") for n in os.listdir(d))


def _latest_checkpoint_epoch(model_dir):
    d = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(d):
        return 0
    nums = [int(n[5:-6]) for n in os.listdir(d) if n.startswith("ckpt-") and
            n.endswith(".index")]
    return max(nums, default=0)


class _Reader(threading.Thread):
    """Drains a pipe; keeps the text and the times at which a progress-bar update came
    (Keras redraws the bar, starting with a carriage return, after each execution)."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.chunks = []
        self.updates = []
        self.start()

    def run(self):
        fd = self.pipe.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            if b"\r" in data:
                self.updates.append(time.time())
            self.chunks.append(data)

    def text(self):
        return b"".join(self.chunks).decode("utf-8", "replace")


def _execution_seconds(updates):
    """Median time between progress updates (an execution), or None with too few."""
    gaps = np.diff(updates[-20:])
    return float(np.median(gaps)) if len(gaps) >= 2 else None


def run_with_kills(flags, model_dir, kills, epochs, rng, max_delay=2.0, timeout=900,
                   sig=signal.SIGKILL, when="epoch"):
    """Starts the tool ``kills`` times and interrupts each start with ``sig`` at a random
    point chosen by ``when`` (``epoch`` | ``execution`` | ``startup``, see the module
    docstring), then runs the command to the end.

    A point of kind epoch/execution: wait until the run has a checkpoint and its
    metrics.jsonl has reached a random target line count at least one epoch past the newest
    checkpoint (so this start has trained, and interruptions spread over the epochs), then
    sleep a random fraction of the last observed epoch time (capped at max_delay s); for
    ``execution`` then wait for the next progress update and sleep 20-80% of an execution.
    ``execution`` needs ``--verbose=1`` in flags (it is added).

    Returns (list of interruption-point dicts, final CompletedProcess). For SIGINT/SIGTERM
    each point has ``exit`` and ``line`` (the tool's own stderr lines).
    """
    points = []
    if when == "execution":
        flags = [*flags, "--verbose=1"]
    cmd = [sys.executable, TOOL, *flags, f"--model_dir={model_dir}"]
    metrics = os.path.join(model_dir, "metrics.jsonl")
    for i in range(kills):
        # Lines = epochs done + 1 (epoch 0); the restart resumes at the newest checkpoint.
        low = _latest_checkpoint_epoch(model_dir) + 2
        high = epochs if when == "execution" else epochs + 1  # execution: one still to train
        target = rng.randint(min(low, high), high)
        fraction = rng.random()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=_env(), bufsize=0)
        out, err = _Reader(proc.stdout), _Reader(proc.stderr)
        start, stale = time.time(), _stamp(metrics)
        seen, changed_at, epoch_time = None, None, 0.0
        delay = 0.0
        if when == "startup":
            delay = 4.0 * fraction
            time.sleep(delay)
        else:
            while proc.poll() is None and time.time() - start < timeout:
                # Only lines this start wrote count: it first cuts the file back to its
                # checkpoint (or deletes it), which changes the file's stamp.
                lines, now = _count_lines(metrics), time.time()
                if lines != seen:
                    if changed_at is not None:
                        epoch_time = now - changed_at
                    seen, changed_at = lines, now
                if (_has_checkpoint(model_dir) and lines >= target
                        and _stamp(metrics) != stale):
                    break
                time.sleep(0.005)
            delay = min(fraction * epoch_time, max_delay)
            time.sleep(delay)
            if when == "execution":
                n, waited = len(out.updates), time.time()
                while proc.poll() is None and len(out.updates) == n and \
                        time.time() - waited < max(2 * epoch_time, 5.0):
                    time.sleep(0.002)
                step_s = _execution_seconds(out.updates) or 0.0
                extra = (0.2 + 0.6 * rng.random()) * step_s
                time.sleep(extra)
                delay += extra
        point = {"kill": i + 1, "signal": signal.Signals(sig).name, "when": when,
                 "target_lines": target, "delay_s": round(delay, 3)}
        if proc.poll() is None:
            sent = time.time()
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                point["hung"] = True
            out.join(5)
            err.join(5)
            point.update(killed=True, exit=proc.returncode,
                         exit_after_s=round(time.time() - sent, 2),
                         lines_at_kill=_count_lines(metrics),
                         checkpoint_epoch=_latest_checkpoint_epoch(model_dir))
            if sig != signal.SIGKILL:
                point["line"] = own_lines(err.text())
                point["traceback"] = "Traceback" in err.text()
        else:
            err.join(5)
            point.update(killed=False, exit=proc.returncode, stderr=err.text()[-2000:])
        points.append(point)
        if not point["killed"]:  # ended before the kill point (finished, or failed)
            break
    final = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    return points, final


def check_interrupted(point):
    """For a SIGINT/SIGTERM point: (ok, why) — exit 130/143, one line, no traceback."""
    if point.get("signal") == "SIGKILL" or not point.get("killed"):
        return True, ""
    want = EXIT_STATUS[signal.Signals[point["signal"]]]
    lines = point.get("line", [])
    if point["exit"] != want:
        return False, f"exit {point['exit']} != {want}"
    if point.get("traceback"):
        return False, "traceback on stderr"
    if len(lines) != 1 or not INTERRUPTED_LINE.match(lines[0]):
        return False, f"stderr lines {lines!r}"
    return True, lines[0]


def compare_runs(reference_dir, resumed_dir, epochs):
    """Compares two finished runs; returns a list of (what, equal, detail) rows."""
    import tensorflow as tf  # only here: the kill loop itself needs no TensorFlow

    rows = []
    a = open(os.path.join(reference_dir, "metrics.jsonl"), "rb").read()
    b = open(os.path.join(resumed_dir, "metrics.jsonl"), "rb").read()
    epochs_b = [json.loads(line)["epoch"] for line in b.decode().splitlines()]
    rows.append(("metrics.jsonl bytes", a == b,
                 f"{len(a.splitlines())} vs {len(b.splitlines())} lines, epochs {epochs_b}"))

    ra = tf.train.load_checkpoint(os.path.join(reference_dir, "checkpoints", f"ckpt-{epochs}"))
    rb = tf.train.load_checkpoint(os.path.join(resumed_dir, "checkpoints", f"ckpt-{epochs}"))
    keys = sorted(k for k in ra.get_variable_to_shape_map()
                  if k.startswith(("model/", "optimizer/", "epoch/", "step/")))
    same_keys = keys == sorted(k for k in rb.get_variable_to_shape_map()
                               if k.startswith(("model/", "optimizer/", "epoch/", "step/")))
    diffs = [k for k in keys if not np.array_equal(ra.get_tensor(k), rb.get_tensor(k))]
    max_abs = max((float(np.max(np.abs(ra.get_tensor(k).astype(np.float64)
                                       - rb.get_tensor(k).astype(np.float64)), initial=0.0))
                   for k in keys), default=0.0) if same_keys else float("nan")
    rows.append((f"ckpt-{epochs} tensors", same_keys and not diffs,
                 f"{len(keys)} tensors, {len(diffs)} differ, max |diff| {max_abs:.3g}"))

    outs, shape = [], None
    for d in (reference_dir, resumed_dir):
        fn = tf.saved_model.load(os.path.join(d, "saved_model")).signatures["serving_default"]
        spec = list(fn.structured_input_signature[1].values())[0]
        shape = [8, *spec.shape[1:]]
        x = tf.constant(np.random.default_rng(0).random(shape), tf.float32)
        outs.append(fn(x)["representation"].numpy())
    rows.append(("saved_model outputs", bool(np.array_equal(*outs)),
                 f"{shape} input, max |diff| {float(np.max(np.abs(outs[0] - outs[1]))):.3g}"))
    return rows


def run_case(flags, epochs, work, name, sig, when, kills, rng, max_delay, reference):
    """One interrupted run against ``reference``; returns (points, rows, final, seconds)."""
    killed = os.path.join(work, name)
    t0 = time.time()
    points, final = run_with_kills(flags, killed, kills, epochs, rng, max_delay, sig=sig,
                                   when=when)
    seconds = time.time() - t0
    rows = []
    if final.returncode != 0:
        rows.append(("final resumed run", False,
                     f"exit {final.returncode}: {final.stderr[-300:]!r}"))
        return points, rows, final, seconds
    rows = compare_runs(reference, killed, epochs)
    checks = [check_interrupted(p) for p in points]
    rows.append(("interrupt exit + line", all(ok for ok, _ in checks),
                 "; ".join(sorted({why for _, why in checks if why}))[:200] or "-"))
    again = run_to_end(flags, killed)
    rows.append(("finished re-run", again.returncode == 0 and "already finished" in
                 again.stdout, f"exit {again.returncode}: {again.stdout.strip()[:60]}"))
    return points, rows, final, seconds


def _print_points(points):
    print("kill  signal   when       delay_s  exit  lines_at_kill  ckpt_epoch  stderr line")
    for p in points:
        line = (p.get("line") or ["-"])[0] if p.get("signal") != "SIGKILL" else "-"
        print(f"{p['kill']:>4}  {p['signal']:<7}  {p['when']:<9}  {p['delay_s']:>7.3f}  "
              f"{str(p.get('exit', '-')):>4}  {p.get('lines_at_kill', '-'):>13}  "
              f"{p.get('checkpoint_epoch', '-'):>10}  {line}")


def _print_rows(rows):
    print("compared                 equal  detail")
    for what, equal, detail in rows:
        print(f"{what:<24} {str(equal):<6} {detail}")


MATRIX_KINDS = [(signal.SIGINT, "epoch"), (signal.SIGINT, "execution"),
                (signal.SIGKILL, "epoch"), (signal.SIGKILL, "execution"),
                (signal.SIGTERM, "epoch")]


def matrix(args, work):
    """Every config of CONFIGS (and the tiny odd HLTM) x every kind of MATRIX_KINDS."""
    configs = dict(CONFIGS)
    configs["tiny_odd"] = (tiny_flags(8, 8, 2, 3), 8,
                           "tiny HLTM, 8 steps = 3 + 3 + 2, checkpoint every 2")
    names = args.configs.split(",") if args.configs else list(configs)
    kinds = MATRIX_KINDS
    if args.kinds:  # e.g. SIGINT:execution,SIGKILL:epoch
        kinds = [(signal.Signals[k.split(":")[0]], k.split(":")[1])
                 for k in args.kinds.split(",")]
    summary = []
    for name in names:
        flags, epochs, what = configs[name]
        ref = os.path.join(work, name, "reference")
        t0 = time.time()
        proc = run_to_end(flags, ref)
        if proc.returncode != 0:
            sys.exit(f"{name}: reference run failed:\n{proc.stderr[-2000:]}")
        print(f"\n=== {name}: {what}; reference {time.time() - t0:.0f} s", flush=True)
        for k, (sig, when) in enumerate(kinds):
            rng = random.Random(args.seed * 1000 + k)
            case = f"{signal.Signals(sig).name}_{when}"
            points, rows, _, seconds = run_case(flags, epochs, os.path.join(work, name), case,
                                                sig, when, args.kills, rng, args.max_delay,
                                                ref)
            print(f"\n--- {name} / {case} ({seconds:.0f} s)")
            _print_points(points)
            _print_rows(rows)
            sys.stdout.flush()
            detail = dict((r[0].split()[0], r) for r in rows)
            ckpt = next((r for r in rows if r[0].startswith("ckpt-")), None)
            summary.append((name, case, sum(p["killed"] for p in points),
                            all(r[1] for r in rows),
                            detail.get("metrics.jsonl", (0, False))[1],
                            ckpt[2].split("max |diff| ")[-1] if ckpt else "-"))
    print("\nconfig            interruption        n  all_equal  metrics_bytes  max|diff|")
    for name, case, n, ok, metrics, diff in summary:
        print(f"{name:<17} {case:<18} {n:>2}  {str(ok):<9}  {str(metrics):<13}  {diff}")
    return all(s[3] for s in summary)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="tiny", choices=["tiny", *CONFIGS])
    parser.add_argument("--matrix", action="store_true",
                        help="every config x (SIGINT, SIGKILL) x (epoch, execution) + SIGTERM")
    parser.add_argument("--configs", default="", help="with --matrix: comma-separated names")
    parser.add_argument("--kinds", default="",
                        help="with --matrix: SIGNAL:WHEN,... (default: MATRIX_KINDS)")
    parser.add_argument("--signal", default="SIGKILL", choices=["SIGKILL", "SIGINT", "SIGTERM"])
    parser.add_argument("--when", default="epoch", choices=["epoch", "execution", "startup"])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20, help="--config=tiny")
    parser.add_argument("--steps_per_epoch", type=int, default=20, help="--config=tiny")
    parser.add_argument("--checkpoint_every", type=int, default=2, help="--config=tiny")
    parser.add_argument("--steps_per_execution", type=int, default=2, help="--config=tiny")
    parser.add_argument("--max_delay", type=float, default=2.0,
                        help="cap (s) of the random delay after the target epoch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--workdir", default="", help="default: a new temporary directory")
    args = parser.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="kill_resume_")
    if args.matrix:
        ok = matrix(args, work)
        print(f"\nworkdir: {work}")
        sys.exit(0 if ok else 1)
    if args.config == "tiny":
        flags = tiny_flags(args.epochs, args.steps_per_epoch, args.checkpoint_every,
                           args.steps_per_execution)
        epochs = args.epochs
        what = (f"tiny HLTM, {args.epochs} epochs x {args.steps_per_epoch} steps, checkpoint "
                f"every {args.checkpoint_every}, steps_per_execution "
                f"{args.steps_per_execution}")
    else:
        flags, epochs, what = CONFIGS[args.config]
    t0 = time.time()
    ref = run_to_end(flags, os.path.join(work, "reference"))
    t_ref = time.time() - t0
    if ref.returncode != 0:
        sys.exit(f"reference run failed:\n{ref.stderr[-2000:]}")
    sig = signal.Signals[args.signal]
    points, rows, final, t_kill = run_case(flags, epochs, work, "killed", sig, args.when,
                                           args.kills, random.Random(args.seed),
                                           args.max_delay, os.path.join(work, "reference"))
    print(f"run: {what}")
    print(f"wall time: reference {t_ref:.1f} s, interrupted+resumed {t_kill:.1f} s "
          "(shared CPU: pessimistic)\n")
    _print_points(points)
    print()
    _print_rows(rows)
    print(f"\nworkdir: {work}")
    sys.exit(0 if all(r[1] for r in rows) else 1)


if __name__ == "__main__":
    main()
