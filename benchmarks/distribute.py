"""Scale-out benchmarks: cross-replica negatives and XLA.

  PYTHONPATH=. python benchmarks/distribute.py [--steps=20] [--batch=256] [--dim=128]

1. Gathering the global batch for in-batch negatives, at 2 and 4 logical CPU devices
   (MirroredStrategy): ``ReplicaContext.all_gather`` (dualssl_tf.distribute) vs the
   "scatter + all_reduce" trick of older TF code (each replica zero-pads its rows into a
   [G, D] buffer and the buffers are SUM-all-reduced). Bytes each replica moves (ring
   algorithms, forward + backward; both backward passes are one SUM all-reduce of the
   [G, D] gradients) and measured time per NT-Xent training step. The updates are checked
   to agree.
2. XLA vs no XLA: time per training step of the HLTM tree network (and ResNet-18 when
   dualssl_tf.models.resnet exists) on one device.

Each device split needs a fresh TensorFlow, so part 1 runs one subprocess per count.
The CPU is shared with other jobs: timings are pessimistic and noisy; compare columns.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

IN_DIM, HIDDEN = 64, 256


def scatter_allreduce_candidates(z1, z2):
    """The older trick: zero-pad local rows to [G, D] at the replica's offset, SUM."""
    import tensorflow as tf
    ctx = tf.distribute.get_replica_context()
    r, i = ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group
    n = tf.shape(z1)[0]
    pad = [[i * n, (r - 1 - i) * n], [0, 0]]
    z1 = tf.cast(z1, tf.float32)
    z2 = tf.cast(z2, tf.float32)
    z1_all, z2_all = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                    [tf.pad(z1, pad), tf.pad(z2, pad)])
    return z1_all, z2_all, i * n


def gather_bytes(method, replicas, batch, dim):
    """Bytes one replica sends per step for both views, forward + backward (float32).

    Ring all-gather of a [G, D] result: (R-1)/R * G*D*4; ring all-reduce: 2 (R-1)/R *
    G*D*4. Forward: all-gather or all-reduce; backward: one all-reduce of [G, D].
    """
    g = batch * dim * 4 * 2                       # two views
    frac = (replicas - 1) / replicas
    forward = frac * g if method == "all_gather" else 2 * frac * g
    return forward + 2 * frac * g


def _mlp_model(gather_fn, dim):
    import keras
    from dualssl_tf.methods.contrastive import ContrastiveMethod
    keras.utils.set_random_seed(0)
    enc = keras.Sequential([keras.Input((IN_DIM,)), keras.layers.Dense(HIDDEN, "relu"),
                            keras.layers.Dense(dim)])
    model = ContrastiveMethod(enc, loss="ntxent", temperature=0.5, gather_fn=gather_fn)
    model.compile(optimizer=keras.optimizers.SGD(0.1), steps_per_execution=1)
    return model


def _time_fit(model, data, steps):
    """Seconds per step after one warm-up epoch (which traces the step)."""
    model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
    t = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - t) / steps


def gather_child(replicas, steps, batch, dim):
    """Runs in a subprocess with the CPU split into ``replicas`` devices; prints JSON."""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    from dualssl_tf import cross_replica
    from dualssl_tf.run import distribute
    strategy = distribute.make_strategy("mirrored")
    rng = np.random.default_rng(0)
    x = {k: rng.normal(size=(batch, IN_DIM)).astype(np.float32) for k in ("view1", "view2")}

    def make(per_replica, ctx):
        return tf.data.Dataset.from_tensors(
            {k: v[:per_replica] for k, v in x.items()}).repeat()

    out = {}
    weights = {}
    for method, fn in (("all_gather", cross_replica.cross_replica_candidates),
                       ("scatter+all_reduce", scatter_allreduce_candidates)):
        with strategy.scope():
            model = _mlp_model(fn, dim)
        data = distribute.distributed_dataset(strategy, batch, make)
        out[method] = _time_fit(model, data, steps)
        weights[method] = [v.numpy() for v in model.trainable_variables]
    out["max_weight_diff"] = max(float(np.max(np.abs(a - b))) for a, b in
                                 zip(weights["all_gather"], weights["scatter+all_reduce"]))
    print(json.dumps(out))


def xla_rows(steps):
    import keras
    import tensorflow as tf
    from dualssl_tf.data.hltm import HLTM
    from dualssl_tf.methods.contrastive import ContrastiveMethod
    from dualssl_tf.models.tree_net import TreeNet

    nets = {"HLTM TreeNet (L=5, hid 10), B=128, nce, H=1": (
        lambda: TreeNet(5, 2, 10),
        HLTM(5, 2, 0.8, seed=1).dataset(128, 1, seed=1, steps_per_epoch=500), "nce")}
    try:
        from dualssl_tf.models import resnet
        img = tf.data.Dataset.from_tensors({
            "view1": tf.random.uniform([32, 32, 32, 3]),
            "view2": tf.random.uniform([32, 32, 32, 3])}).repeat()
        nets["ResNet-18 (CIFAR stem) 32x32, B=32, ntxent"] = (
            lambda: resnet.resnet18(image_size=32), img, "ntxent")
    except ImportError:
        pass
    rows = []
    for name, (make_net, data, loss) in nets.items():
        times = {}
        for jit in (False, True):
            keras.utils.set_random_seed(0)
            model = ContrastiveMethod(make_net(), loss=loss, temperature=0.5)
            model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit)
            times[jit] = _time_fit(model, data, steps)
        rows.append((name, times[False], times[True]))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=256, help="global batch (pairs)")
    p.add_argument("--dim", type=int, default=128, help="embedding width D")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        gather_child(args.child, args.steps, args.batch, args.dim)
        return

    print(f"Cross-replica negatives: NT-Xent step, MLP {IN_DIM}-{HIDDEN}-{args.dim}, global "
          f"batch {args.batch}, {args.steps} steps (shared CPU: pessimistic)")
    print(f"{'replicas':>8}  {'method':<20} {'MB/step/replica':>15} {'ms/step':>9}")
    for r in (2, 4):
        print(f"  ... {r} logical devices", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, f"--child={r}",
                               f"--steps={args.steps}", f"--batch={args.batch}",
                               f"--dim={args.dim}"], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=ROOT))
        if proc.returncode:
            sys.exit(f"child with {r} devices failed: {proc.stderr.strip().splitlines()[-1]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        for method in ("all_gather", "scatter+all_reduce"):
            mb = gather_bytes(method, r, args.batch, args.dim) / 1e6
            print(f"{r:>8}  {method:<20} {mb:>15.3f} {1e3 * res[method]:>9.1f}")
        print(f"{'':>8}  (updates agree to {res['max_weight_diff']:.1e})")

    print(f"\nXLA: one device, {args.steps} steps")
    print(f"{'network':<46} {'no XLA ms':>10} {'XLA ms':>8} {'speed-up':>9}")
    for name, t0, t1 in xla_rows(args.steps):
        print(f"{name:<46} {1e3 * t0:>10.1f} {1e3 * t1:>8.1f} {t0 / t1:>8.2f}x")


if __name__ == "__main__":
    main()
