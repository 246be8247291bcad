"""Subprocess half of tests/test_analysis_operator_monitor.py (not collected by pytest).

  python tests/operator_monitor_worker.py R OUT.json

The CPU split into R logical devices (tests/distribute_worker.split_devices); the matrix-free
monitor of a tiny ResNet-18 on one device (the default strategy), then on the same weights
under MirroredStrategy over the R devices, computed in cross-replica context as in a Keras
callback. Writes both log dicts.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from tests.distribute_worker import split_devices  # noqa: E402


def main(replicas, out_path):
    split_devices(int(replicas))
    import keras
    import tensorflow as tf

    from dualssl_tf.analysis.operator_monitor import OperatorMonitor
    from dualssl_tf.models.resnet import resnet
    from dualssl_tf.run import distribute

    x_aug = tf.constant(np.random.default_rng(0).uniform(size=(4, 2, 8, 8, 3)), tf.float32)

    def loss_fn(model, v1, v2):
        return tf.reduce_mean(tf.square(model(v1, training=False) - model(v2, training=False)))

    def monitor_logs(sync_bn, weights=None):
        keras.utils.set_random_seed(0)
        enc = resnet(18, image_size=8, stem="cifar", width_multiplier=0.0625,
                     sync_bn=sync_bn)
        if weights is not None:
            enc.set_weights(weights)
        mon = OperatorMonitor(enc, ["layer2_0_conv1"], x_aug, budget=1,
                              seed=1, chunk_size=2, loss_fn=loss_fn)
        mon.set_model(enc)
        return enc, mon

    enc, mon = monitor_logs(False)
    weights = enc.get_weights()
    logs = [mon.compute(epoch=1)]
    strategy = distribute.make_strategy("mirrored")
    with strategy.scope():
        _, mon = monitor_logs(True, weights)
        logs.append(mon.compute(epoch=1))
    with open(out_path, "w") as f:
        json.dump({"replicas": [1, strategy.num_replicas_in_sync], "logs": logs}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
