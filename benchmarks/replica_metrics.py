"""Every metrics.jsonl value of an image run on 2 mirrored replicas beside one device.

  PYTHONPATH=. python benchmarks/replica_metrics.py [--config=configs/generated_images.cfg]
      [--epochs=1] [--generated_examples=640] [FLAG=VALUE ...]

The CPU is split into 2 logical devices; the config is trained on one device, on the 2
replicas (MirroredStrategy) and on one device with every training batch reversed (the same
updates in exact arithmetic, another float32 summation order: the size of rounding noise
after the network amplified it). Prints a markdown table: key, the three values and the
relative differences to one device. ``--steps_per_execution`` is set to 1 (the table was
made before multi-step executions on replicas worked: keras-team/keras#19246, now run by
keras_internals.ReplicaStepLoop).
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import train_tool  # noqa: E402
from tests.distribute_worker import split_devices  # noqa: E402
from tests.image_replicas_worker import _reversed_batches  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/generated_images.cfg")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--generated_examples", type=int, default=640)
    args, extra = parser.parse_known_args()
    split_devices(2)
    import json

    from dualssl_tf.run import trainer

    tool = train_tool.load("replica_metrics_train")
    lines = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("one", "two", "reverse"):
            cfg = train_tool.parse(
                tool, os.path.join(tmp, name), f"--flagfile={args.config}",
                f"--epochs={args.epochs}", f"--generated_examples={args.generated_examples}",
                "--steps_per_execution=1", "--verbose=0",
                f"--strategy={'mirrored' if name == 'two' else 'default'}", *extra)
            select = trainer.select_negatives
            if name == "reverse":
                trainer.select_negatives = _reversed_batches(select)
            try:
                trainer.run(cfg)
            finally:
                trainer.select_negatives = select
            with open(os.path.join(tmp, name, "metrics.jsonl")) as f:
                lines[name] = [json.loads(line) for line in f]
    print("| epoch | key | 1 device | 2 replicas | rel. diff | 1 device, batches reversed "
          "| rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for epoch, (one, two, rev) in enumerate(zip(lines["one"], lines["two"], lines["reverse"])):
        for key, a in one.items():
            if key == "epoch" or not isinstance(a, (int, float)):
                continue

            def rel(x, a=a):
                return abs(x - a) / abs(a) if a else abs(x - a)

            print(f"| {epoch} | {key} | {a:.8g} | {two[key]:.8g} | {rel(two[key]):.2g} "
                  f"| {rev[key]:.8g} | {rel(rev[key]):.2g} |")


if __name__ == "__main__":
    main()
