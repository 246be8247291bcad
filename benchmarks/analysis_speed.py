"""Speed of the analysis toolkit on the paper's HLTM network (depth 5, binary, hid 10).

1. Covariance operator OP_l of one latent group from M = 2000 base points x A = 8
   augmentations (16000 per-example Jacobians): sampling, connections (vectorised autodiff,
   averaged over augmentations), Gram eigh -> ||OP||_F, top-10 spectrum, alignment.
2. Overhead of the per-epoch monitor (--analysis_every=1, 64 points x 8 augmentations, all 31
   latent groups) relative to one HLTM training epoch (64000 samples, batch 128, SGD, NCE).

Usage: PYTHONPATH=. python benchmarks/analysis_speed.py [--points=2000] [--repeats=3]
Timings are wall-clock on whatever machine runs this; on a CPU shared with other jobs they
are pessimistic, and the overhead *ratio* (measured interleaved) is the robust number.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dualssl_tf import config# noqa: E402
from dualssl_tf.run import trainer# noqa: E402
from dualssl_tf.analysis import sampling  # noqa: E402
from dualssl_tf.analysis.callback import build_analysis_callback  # noqa: E402
from dualssl_tf.analysis.connections import Connection  # noqa: E402
from dualssl_tf.analysis.covariance import CovarianceOperator, averaged_connections  # noqa
from dualssl_tf import experiments  # noqa: E402
from dualssl_tf.data.hltm import HLTM  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_operator(points, augs, repeats):
    keras.utils.set_random_seed(0)
    cfg = config.TrainConfig(model_dir="/tmp/unused", hltm_eval_samples=2)
    exp = experiments.build(cfg)
    tree = HLTM.from_dict(exp.metadata["hltm"])
    net = exp.encoder
    print(f"\n1) OP of one latent group, M={points} x A={augs} "
          f"({points * augs} Jacobians); median of {repeats}")
    print(f"{'layer':<9} {'P':>4} {'sample s':>9} {'connect s':>10} {'eig+stats s':>12} "
          f"{'total s':>8} {'||OP||_F':>10} {'align':>6}")
    for level in net.levels:
        conn = Connection(net, level.name, lambda x: net(x, training=False), index=0,
                          chunk_size=2048)
        conn(np.zeros((2, tree.num_leaves), "float32"))              # trace once
        rows = []
        for r in range(repeats):
            x_aug, t_s = timed(lambda: sampling.hltm_augmented(tree, points, augs, seed=r)[0])
            kbar, t_c = timed(lambda: averaged_connections(conn, x_aug))

            def stats():
                op = CovarianceOperator(kbar, weight_vector=conn.weight_vector().numpy())
                return op, op.frobenius_norm(), op.top_eigen(10), op.alignment(k=1)[0]
            (op, norm, _, align), t_e = timed(stats)
            rows.append((t_s, t_c, t_e, norm, align))
        t_s, t_c, t_e = (np.median([r[i] for r in rows]) for i in range(3))
        print(f"{level.name:<9} {op.num_params:>4} {t_s:>9.2f} {t_c:>10.2f} {t_e:>12.2f} "
              f"{t_s + t_c + t_e:>8.2f} {rows[-1][3]:>10.3g} {rows[-1][4]:>6.3f}")


def bench_callback(repeats, points):
    cfg = config.TrainConfig(model_dir="/tmp/unused", epochs=1, analysis_every=1,
                             analysis_points=points, hltm_eval_samples=2,
                             steps_per_execution=50, verbose=0)
    keras.utils.set_random_seed(1)
    exp = experiments.build(cfg)
    model = trainer.build_model(cfg, exp)
    monitor = build_analysis_callback(cfg, exp)
    data = exp.train_data
    model.fit(data, epochs=1, steps_per_epoch=exp.steps_per_epoch, verbose=0)   # warm-up
    monitor.compute(0)                                                           # warm-up
    epochs, analyses = [], []
    for r in range(repeats):
        _, t = timed(lambda: model.fit(data, epochs=1, steps_per_epoch=exp.steps_per_epoch,
                                       verbose=0))
        epochs.append(t)
        _, t = timed(lambda: monitor.compute(r + 1))
        analyses.append(t)
    e, a = np.median(epochs), np.median(analyses)
    print(f"\n2) Per-epoch monitor ({points} points x 8 augmentations, 31 groups) vs one HLTM "
          f"epoch ({exp.steps_per_epoch} steps of 128); median of {repeats}, interleaved")
    print(f"{'HLTM epoch s':>13} {'monitor s':>10} {'overhead':>9}")
    print(f"{e:>13.2f} {a:>10.2f} {100 * a / e:>8.1f}%")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--augmentations", type=int, default=8)
    parser.add_argument("--monitor_points", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="operator,monitor",
                        help="comma list of parts to run: operator, monitor")
    args = parser.parse_args()
    parts = args.parts.split(",")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if "operator" in parts:
        bench_operator(args.points, args.augmentations, args.repeats)
    if "monitor" in parts:
        bench_callback(args.repeats, args.monitor_points)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
