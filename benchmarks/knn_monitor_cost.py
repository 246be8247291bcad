"""Cost of the online kNN monitor (``--knn_monitor``) per epoch of a real run.

    PYTHONPATH=. python benchmarks/knn_monitor_cost.py [--flagfile=configs/generated_images.cfg]
        [--epochs=2] [--model_dir=/tmp/knn_cost]

Runs ``tools/train.py``'s path (``run.trainer.run``) for ``--epochs`` epochs with the
monitor on, timing every ``KnnAccuracy.compute`` (feature extraction of the bank and the
test images, the kNN vote) and the wall time between consecutive epoch ends (training,
every callback, the checkpoint). Prints seconds per epoch and the monitor's share.
"""

import argparse
import os
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the tools (tools/cli.py)

from dualssl_tf import config  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flagfile", default="configs/generated_images.cfg")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model_dir", default="/tmp/knn_monitor_cost")
    args = parser.parse_args()
    values = config.read_flagfile(args.flagfile)
    values.update(epochs=str(args.epochs), model_dir=args.model_dir, verbose="0")
    cfg = config.from_flag_strings(values, source=args.flagfile)
    config.validate(cfg)
    shutil.rmtree(args.model_dir, ignore_errors=True)

    from dualssl_tf.monitors import probes
    from dualssl_tf.run import trainer
    knn_times, epoch_ends = [], []
    compute = probes.KnnAccuracy.compute

    def timed(self, epoch=0):
        start = time.perf_counter()
        out = compute(self, epoch)
        knn_times.append((epoch, time.perf_counter() - start, out))
        if epoch:
            epoch_ends.append(time.perf_counter())
        return out

    probes.KnnAccuracy.compute = timed
    start = time.perf_counter()
    trainer.run(cfg)
    print(f"{args.flagfile}: {args.epochs} epochs, wall {time.perf_counter() - start:.1f} s")
    print("epoch  knn s  epoch-to-epoch s  knn share  knn_top1")
    for i, (epoch, sec, out) in enumerate(knn_times):
        if epoch == 0:
            print(f"{epoch:5d}  {sec:5.2f}  {'(init)':>16s}  {'':9s}  {out['knn_top1']:.3f}")
            continue
        span = epoch_ends[epoch - 1] - epoch_ends[epoch - 2] if epoch >= 2 else float("nan")
        share = f"{100 * sec / span:8.1f}%" if span == span else "        -"
        print(f"{epoch:5d}  {sec:5.2f}  {span:16.1f}  {share}  {out['knn_top1']:.3f}")


if __name__ == "__main__":
    main()
