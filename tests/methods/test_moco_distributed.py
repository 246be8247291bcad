"""Scale-out of MoCo v2 and v3: 3 SGD steps under MirroredStrategy on 2 (and 4, slow)
logical CPU devices equal the single-device steps on the same global batches: every
variable (query and key networks, MoCo v3's predictor, MoCo v2's queue and pointer) AND
every logged metric. BatchNorm in the encoder is synchronised on the replicas
(``cross_replica.use_sync_bn()``), the only way its batch statistics, and so the update, are
the global batch's (MoCo's shuffled BN is not reproduced). MoCo v2's queue is filled with
the keys gathered from every replica, so from step 2 on every replica contrasts with the
same global-batch keys of the step before; MoCo v3's keys are gathered and the labels
offset by the replica's first row.

Run as a script this module is the subprocess half (the CPU must be split before
TensorFlow starts): ``python tests/methods/test_moco_distributed.py R OUT.json``.
"""

import json
import os
import sys

import pytest

from tests import distribute_worker as worker

TOL = 1e-6        # variables after 3 float32 SGD steps: a few ulp (tests/test_distribute.py)
# MoCo v3's predictor output bias: its gradient is a global-batch sum of per-example terms
# that nearly cancel (the normalisation after it makes the loss almost blind to a shared
# shift), so another summation order moves it by ~7e-6 of its move (measured at lr 0.5
# and 0.05 alike; every other variable within 1e-6). A wrong label offset or a key not
# gathered would be off by the order of the move itself.
TOL_V3 = 3e-5
LOG_TOL = 1e-5    # logged metrics: float32 sums in another order (tests/test_distribute.py)
MOVED = 1e-3
STEPS = 3
# Queue of 16 keys: the global batch is 8, so step 3 overwrites step 1's keys.
CASES = {"mocov2": dict(queue_size=16), "mocov2_symmetric": dict(queue_size=16, symmetric=True),
         "mocov3": dict(pred_hidden_dim=12)}


def build(case, gather_fn=None):
    """Tiny MLP encoder with BatchNorm (synchronised on replicas) + the case's method +
    SGD, fixed init (the same draws on one device and under the strategy)."""
    import keras
    from dualssl_tf import cross_replica
    from dualssl_tf.methods.moco import MoCoV2Method, MoCoV3Method
    keras.utils.set_random_seed(1)
    sync = cross_replica.use_sync_bn()
    encoder = keras.Sequential([
        keras.Input((worker.IN_DIM,)), keras.layers.Dense(worker.WIDTH),
        keras.layers.BatchNormalization(momentum=0.5, synchronized=sync),
        keras.layers.ReLU(), keras.layers.Dense(worker.OUT_DIM)])
    cls = MoCoV3Method if case == "mocov3" else MoCoV2Method
    kw = dict(CASES[case], sync_bn=sync) if case == "mocov3" else CASES[case]
    # Momentum 0.5 -> 1 over 3 steps: the key network visibly moves (and by the schedule).
    model = cls(encoder, temperature=0.5, base_momentum=0.5, final_momentum=1.0,
                total_steps=STEPS, **kw)
    model.compile(optimizer=keras.optimizers.SGD(worker.LR),
                  run_eagerly=os.environ.get("DIST_TEST_EAGER") == "1")
    return model


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
                                 # the networks' move (the queue pointer left out)
                                 "moved": worker._maxdiff(
                                     [v for v in ref if v.dtype.kind == "f"],
                                     [v for v in worker.weights(build(case))
                                      if v.dtype.kind == "f"]),
                                 "logs_diff": worker.logs_diff(ref_logs, got_logs),
                                 "logs": ref_logs["epoch"],
                                 "variables": len(ref)}
    with open(out_path, "w") as f:
        json.dump(result, f)


def _run(tmp_path, replicas):
    # The compiled step (fit's tf.function), as a run trains; DIST_TEST_EAGER=1 runs it
    # eagerly, as the BYOL and contract tests do.
    return worker.launch(os.path.abspath(__file__), [replicas],
                         tmp_path / f"moco{replicas}.json", eager=False)


def _check(result, replicas):
    assert result["replicas"] == replicas and set(result["cases"]) == set(CASES)
    for name, got in result["cases"].items():
        assert got["moved"] > MOVED, (name, got)
        tol = TOL_V3 if name == "mocov3" else TOL
        assert got["diff"] < tol * max(1.0, got["moved"]), (name, got)
        assert got["logs_diff"] < LOG_TOL, (name, got)
        assert set(got["logs"]) == {"loss", "pos_cos", "contrastive_acc"}, (name, got)
        # Logging a replica's share (loss / R) would be off by far more than LOG_TOL.
        assert abs(got["logs"]["loss"]) * (1 - 1 / replicas) > 100 * LOG_TOL, (name, got)


@pytest.mark.gpu
def test_two_replicas_equal_one_device(tmp_path):
    _check(_run(tmp_path, 2), 2)


@pytest.mark.gpu
@pytest.mark.slow
def test_four_replicas_equal_one_device(tmp_path):
    _check(_run(tmp_path, 4), 4)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
