"""No tf.function retracing from the connection functions (issue 13, part 4): the repeated
theorem checks of tools/check_theorems.py trace once per layer and input shape."""

import logging

import numpy as np
import tensorflow as tf

from dualssl_tf.analysis import connections, theorems


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_repeated_checks_trace_once_per_layer_and_shape():
    model = theorems.bias_free_mlp([7, 6, 4], input_dim=5, seed=0)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((4, 5))
    x_aug = theorems.enumerated_augmentations(x0, 3, 0.3, 1)
    x_pair = x_aug.reshape(-1, 5)
    records = _Records()
    tf.get_logger().addHandler(records)
    try:
        for _ in range(2):
            for layer in ("dense_0", "dense_1", "dense_2"):
                theorems.theorem1_check(model, layer, x_pair[0::2][:8], x_pair[1::2][:8])
                theorems.theorem3_check(model, layer, x_aug, "anchor")
                theorems.theorem3_check(model, layer, x_aug, "all")
    finally:
        tf.get_logger().removeHandler(records)
    assert not [m for m in records.messages if "retracing" in m], records.messages
    for layer in ("dense_0", "dense_1", "dense_2"):
        fn = connections.Connection(model, layer)._fn
        assert fn is connections.Connection(model, layer)._fn   # one function per layer
        assert fn.experimental_get_tracing_count() <= 2         # one per input shape
