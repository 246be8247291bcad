"""Subprocess half of tests/test_analysis_operator_monitor.py (not collected by pytest).

  python tests/operator_monitor_worker.py R OUT.json

The CPU split into R logical devices (tests/distribute_worker.split_devices); the matrix-free
monitor of a tiny ResNet-18 on one device (the default strategy), then on the same weights
under MirroredStrategy over the R devices, called in cross-replica context as in a Keras
callback (its passes split over the replicas), with Theorem 4's weights; once with chunks
that match the replicas' shares and once with a padded share. Writes the log dicts and the
points per replica.
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

    from dualssl_tf.analysis import theorems
    from dualssl_tf.analysis.operator_free import MatrixFreeOperator
    from dualssl_tf.analysis.operator_monitor import OperatorMonitor
    from dualssl_tf.models.resnet import resnet
    from dualssl_tf.run import distribute

    rng = np.random.default_rng(0)
    x_aug = tf.constant(rng.uniform(size=(5, 2, 8, 8, 3)), tf.float32)
    x0 = tf.constant(rng.uniform(size=(5, 8, 8, 3)), tf.float32)
    # Theorem 4's weights of a fixed loss (nce, tau 0.5) at the encoder's distances of x0.
    pair_weights = lambda model, x: np.exp(-theorems.base_distances(model, x) / 0.5)  # noqa

    def loss_fn(model, v1, v2):
        return tf.reduce_mean(tf.square(model(v1, training=False) - model(v2, training=False)))

    def monitor_logs(sync_bn, weights, points, chunk_size, one_trace=False):
        """(encoder, logs): ``points`` base points in chunks of ``chunk_size``."""
        keras.utils.set_random_seed(0)
        enc = resnet(18, image_size=8, stem="cifar", width_multiplier=0.0625,
                     sync_bn=sync_bn)
        if weights is not None:
            enc.set_weights(weights)
        mon = OperatorMonitor(enc, ["layer2_0_conv1"], x_aug[:points], budget=1, seed=1,
                              chunk_size=chunk_size, loss_fn=loss_fn, x0=x0[:points],
                              pair_weights=pair_weights, one_trace=one_trace)
        mon.set_model(enc)
        return enc, mon.compute(epoch=1)

    # "same_chunks": 4 points in chunks of 2, on 2 replicas one chunk each (the same
    # kernels on the same chunks); "padded": 5 points in one chunk on one device, 3 + 3
    # (one padded) on 2 replicas; "one_trace": the same with every layer's VJPs in one
    # traced function (analysis.operator_free.LayerVJPs).
    cases = {"same_chunks": (4, 2), "padded": (5, 64), "one_trace": (5, 64, True)}
    enc, _ = monitor_logs(False, None, 4, 2)
    weights = enc.get_weights()
    logs = {name: [monitor_logs(False, weights, *case)[1]] for name, case in cases.items()}
    strategy = distribute.make_strategy("mirrored")
    with strategy.scope():
        for name, case in cases.items():
            enc, out = monitor_logs(True, weights, *case)
            logs[name].append(out)
        # The passes were split over the replicas (each made 1/R of them).
        split = MatrixFreeOperator(enc, "layer2_0_conv1", x_aug, chunk_size=2)._replicas
    with open(out_path, "w") as f:
        json.dump({"replicas": [1, strategy.num_replicas_in_sync], "logs": logs,
                   "share": None if split is None else split.share}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
