"""Scale-out of Barlow Twins and VICReg: two SGD steps under MirroredStrategy on 2 (and,
slow, 4) logical CPU devices equal the single-device steps on the same global batches,
variables (BatchNorm moving statistics included) AND logged metrics.

The networks: a tiny MLP encoder and the methods' 3-layer projector with BatchNorm, which
is synchronised across the replicas (``sync_bn``, as the trainer turns it on with more than
one replica and as the papers' multi-GPU runs do): the loss standardises over the global
batch, so the projector's batch statistics must be the global batch's too for equality.

Run as a script this module is the subprocess half (the CPU must be split before
TensorFlow starts): ``python tests/methods/test_twin_distributed.py R OUT.json``.
"""

import json
import os
import sys

import pytest

from tests import distribute_worker as worker

CASES = ("barlow", "vicreg")
STEPS = 2
TOL = 1e-6       # variables after 2 float32 SGD steps: a few ulp of the step (x moved)
# Logged metrics, relative: float32 sums in another order (all-reduced partial sums); VICReg
# logs values ~30, so the suite's absolute 1e-5 would be ~3 ulps there.
LOG_RTOL = 1e-5
MOVED = 1e-3
LR = 0.05        # VICReg's gradient is ~25x Barlow's at this size: SGD stays stable


def build(case, gather_fn=None):
    """Tiny MLP encoder + the method's projector (3 layers, BN synchronised on replicas)."""
    import keras
    from dualssl_tf import cross_replica
    from dualssl_tf.methods.barlow import BarlowTwinsMethod
    from dualssl_tf.methods.vicreg import VICRegMethod
    from dualssl_tf.models import heads

    keras.utils.set_random_seed(1)
    encoder = keras.Sequential([keras.Input((worker.IN_DIM,)), keras.layers.Dense(worker.WIDTH),
                                keras.layers.ReLU()])
    head = heads.projection_head(worker.WIDTH, worker.WIDTH, worker.OUT_DIM, 3,
                                 sync_bn=cross_replica.use_sync_bn())
    if case == "barlow":
        model = BarlowTwinsMethod(encoder, head, lambd=0.05)
    else:
        model = VICRegMethod(encoder, head)
    model.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.9),
                  run_eagerly=os.environ.get("DIST_TEST_EAGER") == "1")
    return model


def rel_logs_diff(a, b):
    """Max relative |difference| of two logs (worker._fit's), inf when names differ."""
    pairs = [(a["epoch"], b["epoch"])] + list(zip(a["batches"], b["batches"]))
    if len(a["batches"]) != len(b["batches"]) or any(set(x) != set(y) for x, y in pairs):
        return float("inf")
    return max(abs(x[k] - y[k]) / max(abs(x[k]), 1e-3) for x, y in pairs for k in x)


def main(replicas, out_path):
    worker.split_devices(replicas)
    from dualssl_tf.run import distribute
    strategy = distribute.make_strategy("mirrored")
    result = {"replicas": strategy.num_replicas_in_sync, "cases": {}}
    for case in CASES:
        batches = worker.make_batches(STEPS, seed=7)
        ref, ref_logs = worker.fit_single(case, batches, build, with_logs=True)
        got, got_logs = worker.fit_replicas(strategy, case, batches, None, build,
                                            with_logs=True)
        result["cases"][case] = {"diff": worker._maxdiff(ref, got),
                                 "moved": worker._maxdiff(ref, worker.weights(build(case))),
                                 "logs_rdiff": rel_logs_diff(ref_logs, got_logs),
                                 "logs": ref_logs["epoch"]}
    with open(out_path, "w") as f:
        json.dump(result, f)


def _run(tmp_path, replicas):
    return worker.launch(os.path.abspath(__file__), [replicas], tmp_path / f"twin{replicas}.json")


def _check(result, replicas):
    assert result["replicas"] == replicas and set(result["cases"]) == set(CASES)
    names = {"barlow": {"loss", "on_diag", "off_diag", "pos_cos"},
             "vicreg": {"loss", "invariance", "variance", "covariance", "pos_cos"}}
    for name, got in result["cases"].items():
        assert set(got["logs"]) == names[name], (name, got)
        assert got["moved"] > MOVED, (name, got)
        assert got["diff"] < TOL * max(1.0, got["moved"]), (name, got)
        # The logged loss is the global batch's, not a replica's share (issue 20).
        assert got["logs_rdiff"] < LOG_RTOL, (name, got)
        assert got["logs"]["loss"] > 0.1, (name, got)


@pytest.mark.gpu
def test_two_replicas_equal_one_device(tmp_path):
    _check(_run(tmp_path, 2), 2)


@pytest.mark.gpu
@pytest.mark.slow
def test_four_replicas_equal_one_device(tmp_path):
    _check(_run(tmp_path, 4), 4)


if __name__ == "__main__":
    main(*sys.argv[1:])
