"""Subprocess half of tests/test_image_replicas.py (not collected by pytest).

  python tests/image_replicas_worker.py OUT.json [reverse]

The CPU split into 2 logical devices (tests/distribute_worker.split_devices); then
``trainer.run`` of one epoch of one SGD step on generated images (a tiny ResNet-18 with
BatchNorm, SimCLR's head, the online probe, the kNN and collapse monitors), first on one
device (the default strategy), then under MirroredStrategy on the 2 devices, then (with
``reverse``) on one device again with every training batch in reverse order: the same
update in exact arithmetic, another float32 summation order. Writes each run's
metrics.jsonl lines.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.distribute_worker import split_devices  # noqa: E402

SETTINGS = dict(
    dataset="generated_images", image_size=16, generated_examples=128, batch_size=16,
    width_multiplier=0.125, proj_hidden_dim=16, proj_dim=8, loss="ntxent", temperature=0.5,
    optimizer="sgd", momentum=0.0, learning_rate=0.05, lr_schedule="constant", epochs=1,
    steps_per_epoch=1, knn_monitor_bank=64, verbose=0, seed=1)


def _reversed_batches(select):
    def wrapped(cfg, task, dataset):
        import tensorflow as tf
        return select(cfg, task, dataset).map(
            lambda batch: {k: tf.reverse(v, [0]) for k, v in batch.items()})
    return wrapped


def main(out_path, *runs):
    split_devices(2)
    from dualssl_tf import config
    from dualssl_tf.run import trainer

    lines = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("one", "two", *runs):
            cfg = config.TrainConfig(model_dir=os.path.join(tmp, name),
                                     strategy="mirrored" if name == "two" else "default",
                                     **SETTINGS)
            select = trainer.select_negatives
            if name == "reverse":  # the batches as the trainer feeds them, reversed
                trainer.select_negatives = _reversed_batches(select)
            try:
                trainer.run(cfg)
            finally:
                trainer.select_negatives = select
            with open(os.path.join(cfg.run.model_dir, "metrics.jsonl")) as f:
                lines[name] = [json.loads(line) for line in f]
    with open(out_path, "w") as f:
        json.dump(lines, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
