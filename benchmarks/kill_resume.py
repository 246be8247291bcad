"""Kill tools/train.py with SIGKILL at random points, restart it, and compare with a clean run.

    PYTHONPATH=. python benchmarks/kill_resume.py --kills=5 --epochs=20 --steps_per_epoch=20

Runs the same small HLTM training twice: once uninterrupted (the reference) and once killed
with SIGKILL ``--kills`` times at random moments after its first checkpoint (each time the
same command is started again, so it resumes from its newest checkpoint), then run to the end.
Prints a table of the kill points and of what was compared:

* ``metrics.jsonl``: byte for byte (no line duplicated or missing, every value equal);
* the last checkpoint: every tensor (weights, momentum, iterations, epoch, step) exactly;
* the exported SavedModel: its outputs on a fixed input exactly;
* a last re-run of the finished command: exit 0 and "already finished".

Bit-identical results are expected on CPU with ``--deterministic`` (the default): the data
stream is step-indexed (batch k comes from seed (seed, k)), all state is restored exactly,
and TF's deterministic ops make every float op reproducible.

The machine's CPU is shared with other jobs, so the wall times printed are pessimistic.
The functions here are also used by tests/test_resume.py.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "train.py")


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


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_to_end(flags, model_dir, timeout=600):
    """Runs the tool to completion; returns the CompletedProcess."""
    return subprocess.run([sys.executable, TOOL, *flags, f"--model_dir={model_dir}"],
                          capture_output=True, text=True, env=_env(), timeout=timeout)


def _count_lines(path):
    try:
        with open(path) as f:
            return sum(1 for line in f if line.endswith("\n"))
    except FileNotFoundError:
        return 0


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


def run_with_kills(flags, model_dir, kills, epochs, rng, max_delay=0.6, timeout=600):
    """Starts the tool ``kills`` times and SIGKILLs each start at a random point.

    A kill point: wait until the run has at least one checkpoint and its metrics.jsonl has
    reached a random target line count (so kills spread over the epochs), then sleep a
    random 0..max_delay s (so they land anywhere inside an epoch, including between a
    metrics line and its checkpoint) and kill. Afterwards the command runs to the end.

    Returns (list of kill-point dicts, final CompletedProcess).
    """
    points = []
    cmd = [sys.executable, TOOL, *flags, f"--model_dir={model_dir}"]
    metrics = os.path.join(model_dir, "metrics.jsonl")
    for i in range(kills):
        # Metrics lines to wait for: at least one epoch more than now, so this start has
        # trained past its restored checkpoint (lines = epochs done + 1 for epoch 0).
        low = max(_count_lines(metrics) + 1, 2)
        target = rng.randint(low, max(low, epochs))
        delay = rng.uniform(0.0, max_delay)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=_env(), text=True)
        start = time.time()
        while proc.poll() is None and time.time() - start < timeout:
            if _has_checkpoint(model_dir) and _count_lines(metrics) >= target:
                break
            time.sleep(0.01)
        time.sleep(delay)
        point = {"kill": i + 1, "target_lines": target, "delay_s": round(delay, 3)}
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            point.update(killed=True, lines_at_kill=_count_lines(metrics),
                         checkpoint_epoch=_latest_checkpoint_epoch(model_dir))
        else:
            point.update(killed=False, exit=proc.returncode,
                         stderr=proc.stderr.read()[-2000:])
        proc.stderr.close()
        points.append(point)
        if not point["killed"]:  # ended before the kill point (finished, or failed)
            break
    final = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    return points, final


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
                                       - rb.get_tensor(k).astype(np.float64))))
                   for k in keys), default=0.0)
    rows.append((f"ckpt-{epochs} tensors", same_keys and not diffs,
                 f"{len(keys)} tensors, {len(diffs)} differ, max |diff| {max_abs:.3g}"))

    x = tf.constant(np.random.default_rng(0).integers(0, 2, size=(64, 8)), tf.float32)
    outs = []
    for d in (reference_dir, resumed_dir):
        fn = tf.saved_model.load(os.path.join(d, "saved_model")).signatures["serving_default"]
        outs.append(fn(x)["representation"].numpy())
    rows.append(("saved_model outputs", bool(np.array_equal(*outs)),
                 f"[64, 8] input, max |diff| {float(np.max(np.abs(outs[0] - outs[1]))):.3g}"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps_per_epoch", type=int, default=20)
    parser.add_argument("--checkpoint_every", type=int, default=2)
    parser.add_argument("--steps_per_execution", type=int, default=2)
    parser.add_argument("--max_delay", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--workdir", default="", help="default: a new temporary directory")
    args = parser.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="kill_resume_")
    flags = tiny_flags(args.epochs, args.steps_per_epoch, args.checkpoint_every,
                       args.steps_per_execution)
    t0 = time.time()
    ref = run_to_end(flags, os.path.join(work, "reference"))
    t_ref = time.time() - t0
    if ref.returncode != 0:
        sys.exit(f"reference run failed:\n{ref.stderr[-2000:]}")
    t0 = time.time()
    points, final = run_with_kills(flags, os.path.join(work, "killed"), args.kills,
                                   args.epochs, random.Random(args.seed), args.max_delay)
    t_kill = time.time() - t0
    if final.returncode != 0:
        sys.exit(f"final resumed run failed:\n{final.stderr[-2000:]}")
    again = run_to_end(flags, os.path.join(work, "killed"))

    print(f"run: {args.epochs} epochs x {args.steps_per_epoch} steps, checkpoint every "
          f"{args.checkpoint_every} epochs, steps_per_execution {args.steps_per_execution}")
    print(f"wall time: reference {t_ref:.1f} s, killed+resumed {t_kill:.1f} s "
          "(shared CPU: pessimistic)\n")
    print("kill  target_lines  delay_s  killed  lines_at_kill  newest_ckpt_epoch")
    for p in points:
        print(f"{p['kill']:>4}  {p['target_lines']:>12}  {p['delay_s']:>7.3f}  "
              f"{str(p['killed']):>6}  {p.get('lines_at_kill', '-'):>13}  "
              f"{p.get('checkpoint_epoch', '-'):>17}")
    print("\ncompared                 equal  detail")
    rows = compare_runs(os.path.join(work, "reference"), os.path.join(work, "killed"),
                        args.epochs)
    rows.append(("finished re-run", again.returncode == 0 and "already finished" in
                 again.stdout, f"exit {again.returncode}: {again.stdout.strip()[:60]}"))
    for what, equal, detail in rows:
        print(f"{what:<24} {str(equal):<6} {detail}")
    print(f"\nworkdir: {work}")
    sys.exit(0 if all(r[1] for r in rows) else 1)


if __name__ == "__main__":
    main()
