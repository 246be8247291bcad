"""The method layer's contract (ARCHITECTURE.md, "Adding a method"), tried as an outsider.

Two methods written here in a few lines each, on the public hooks only, no ``call()`` of
their own: ``NegCosine`` (``per_example_loss``: minus the cosine of the two views'
embeddings) and ``Decorrelate`` (``batch_loss``: a Barlow-Twins-like loss of the global
batch's cross-correlation, through ``cross_replica.global_mean``, with ``global_gather`` in a
log). Each trains 2 steps on 2 mirrored replicas (logical CPU devices) and must equal one
device on the same global batches: variables AND logged metrics.

Run as a script this module is the subprocess half (the CPU must be split before
TensorFlow starts): ``python tests/methods/test_method_contract.py R OUT.json``.
"""

import json
import os
import sys

import numpy as np
import pytest

from tests import distribute_worker as worker

TOL = 1e-6        # variables after 2 float32 SGD steps: a few ulp of the step (x moved)
LOG_TOL = 1e-5    # logged metrics: float32 sums in another order (tests/test_distribute.py)
MOVED = 1e-3
STEPS = 2


def method_classes():
    """``(NegCosine, Decorrelate)``, defined on first use (importing TensorFlow)."""
    import tensorflow as tf
    from dualssl_tf.methods.base import SSLMethod
    from dualssl_tf import cross_replica

    class TwoViews(SSLMethod):
        def __init__(self, encoder, **kwargs):
            super().__init__(**kwargs)
            self.encoder = encoder
            self.attach_probe(None)

        def forward(self, batch, training):
            z1, z2 = (self.encoder(batch[v], training=training) for v in ("view1", "view2"))
            return {"z1": z1, "z2": z2, "h1": z1}

    class NegCosine(TwoViews):
        metric_names = ("loss", "pos_cos")

        def per_example_loss(self, batch, outputs):
            cos = tf.reduce_sum(tf.math.l2_normalize(outputs["z1"], -1)
                                * tf.math.l2_normalize(outputs["z2"], -1), -1)
            return -cos, {"pos_cos": tf.reduce_mean(cos)}

    class Decorrelate(TwoViews):
        metric_names = ("loss", "on_diag", "spread")

        def batch_loss(self, batch, outputs):
            def standardize(z):  # per dimension, over the global batch
                centred = z - cross_replica.global_mean(z)
                return centred / tf.sqrt(cross_replica.global_mean(tf.square(centred)) + 1e-4)

            n1, n2 = standardize(outputs["z1"]), standardize(outputs["z2"])
            corr = cross_replica.global_mean(n1[:, :, None] * n2[:, None, :])    # [D, D]
            diag = tf.linalg.diag_part(corr)
            on_diag = tf.reduce_sum(tf.square(1.0 - diag))
            off_diag = tf.reduce_sum(tf.square(corr)) - tf.reduce_sum(tf.square(diag))
            spread = tf.reduce_mean(tf.math.reduce_std(
                cross_replica.global_gather(outputs["z1"]), axis=0))
            dim = float(corr.shape[0])
            return (on_diag + 0.1 * off_diag) / dim, {"on_diag": on_diag, "spread": spread}

    return NegCosine, Decorrelate


def build(case, gather_fn=None):
    """Tiny MLP encoder + the case's method + SGD, fixed init (distribute_worker's)."""
    import keras
    keras.utils.set_random_seed(1)
    encoder = keras.Sequential([keras.Input((worker.IN_DIM,)), keras.layers.Dense(worker.WIDTH),
                                keras.layers.ReLU(), keras.layers.Dense(worker.OUT_DIM)])
    neg_cosine, decorrelate = method_classes()
    model = (neg_cosine if case == "neg_cosine" else decorrelate)(encoder)
    model.compile(optimizer=keras.optimizers.SGD(worker.LR),
                  run_eagerly=os.environ.get("DIST_TEST_EAGER") == "1")
    return model


def main(replicas, out_path):
    worker.split_devices(replicas)
    from dualssl_tf.run import distribute
    strategy = distribute.make_strategy("mirrored")
    result = {"replicas": strategy.num_replicas_in_sync, "cases": {}}
    for case in ("neg_cosine", "decorrelate"):
        batches = worker.make_batches(STEPS, seed=5)
        ref, ref_logs = worker.fit_single(case, batches, build, with_logs=True)
        got, got_logs = worker.fit_replicas(strategy, case, batches, None, build,
                                            with_logs=True)
        result["cases"][case] = {"diff": worker._maxdiff(ref, got),
                                 "moved": worker._maxdiff(ref, worker.weights(build(case))),
                                 "logs_diff": worker.logs_diff(ref_logs, got_logs),
                                 "logs": ref_logs["epoch"]}
    with open(out_path, "w") as f:
        json.dump(result, f)


@pytest.mark.gpu
def test_new_methods_on_two_replicas_equal_one_device(tmp_path):
    result = worker.launch(os.path.abspath(__file__), [2], tmp_path / "result.json")
    assert result["replicas"] == 2 and set(result["cases"]) == {"neg_cosine", "decorrelate"}
    for name, got in result["cases"].items():
        assert got["moved"] > MOVED, (name, got)
        assert got["diff"] < TOL * max(1.0, got["moved"]), (name, got)
        assert got["logs_diff"] < LOG_TOL, (name, got)
        assert abs(got["logs"]["loss"]) > 100 * LOG_TOL, (name, got)


def test_batch_loss_on_one_device_is_the_global_batch_formula():
    """Decorrelate's loss by hand (numpy, float64), and the optimizer gets it whole on one
    device; the default ``call()`` gives ``forward``'s outputs for a batch dict."""
    import tensorflow as tf
    model = build("decorrelate")
    batch = {k: tf.constant(v) for k, v in worker.make_batches(1, seed=5)[0].items()}
    out = model.forward(batch, training=True)
    share, logs = model.replica_loss(batch, out)
    z1, z2 = (out[k].numpy().astype(np.float64) for k in ("z1", "z2"))
    n1, n2 = ((z - z.mean(0)) / np.sqrt(z.var(0) + 1e-4) for z in (z1, z2))
    corr = n1.T @ n2 / len(n1)
    on_diag = ((1 - np.diag(corr)) ** 2).sum()
    want = (on_diag + 0.1 * ((corr ** 2).sum() - (np.diag(corr) ** 2).sum())) / corr.shape[0]
    assert want > 0.5
    assert float(share) == float(logs["loss"]) == pytest.approx(want, rel=1e-5)
    assert float(logs["on_diag"]) == pytest.approx(on_diag, rel=1e-5)
    assert float(logs["spread"]) == pytest.approx(z1.std(0).mean(), rel=1e-5)
    assert model.uses_batch_loss() and not build("neg_cosine").uses_batch_loss()
    called = model(batch)
    np.testing.assert_allclose(called["z2"].numpy(), out["z2"].numpy(), rtol=1e-6)
    with pytest.raises(NotImplementedError, match="no embed"):
        model(batch["view1"])


def test_global_helpers_on_one_device_are_the_plain_reductions():
    import tensorflow as tf
    from dualssl_tf import cross_replica
    x = tf.constant([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]])
    np.testing.assert_array_equal(cross_replica.global_sum(x), [9.0, 9.0])
    np.testing.assert_array_equal(cross_replica.global_mean(x), [3.0, 3.0])
    np.testing.assert_array_equal(cross_replica.global_mean(x, axis=1), [1.5, 4.5, 3.0])
    assert float(cross_replica.global_sum(x, axis=None)) == 18.0
    assert float(cross_replica.global_mean(x, axis=None)) == 3.0
    assert cross_replica.global_gather(x) is x and cross_replica.replica_sum(x) is x


if __name__ == "__main__":
    main(*sys.argv[1:])
