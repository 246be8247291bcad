"""``--steps_per_execution`` > 1 on several replicas (keras_internals.ReplicaStepLoop).

Keras 3.15's own train function fails on 2 mirrored replicas with steps_per_execution > 1
("You must feed a value for placeholder tensor ... multi_step_on_iterator",
keras-team/keras#19246), for any model. The methods run those executions through a loop of
their own; here, on 2 logical CPU devices under MirroredStrategy:

* ``fit`` with 2 steps per execution equals 1 step per execution, the variables and every
  logged metric at the same step, to an ulp (SAME_TOL); and one device within float32
  rounding;
* (slow) a tiny HLTM run of the trainer (5 steps per epoch, ``--steps_per_execution=3``:
  full and short executions through ``run.epoch_steps.ExactEpochs``) writes the metrics.jsonl of
  ``--steps_per_execution=1`` (to an ulp: see SAME_TOL);
* ``evaluate`` with 2 steps per execution equals 1 (its test function has the same bug for
  a step with cross-replica calls, as the methods' is);
* Keras' own function still fails there (when a Keras upgrade fixes it, this says so, and
  the loop can go).

Run as a script this module is the subprocess half (the CPU must be split before
TensorFlow starts): ``python tests/run/test_replica_step_loop.py fit|trainer OUT.json``.
"""

import json
import os
import sys

import pytest

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))

from tests import distribute_worker as worker  # noqa: E402

STEPS = 4         # 2 executions of 2 steps
# ntxent with cross-replica negatives, SyncBN and the online probe: every collective of the
# step inside the loop.
CASE = dict(loss="ntxent", temperature=0.5, bn=True, probe=True)
TOL = 1e-6        # 2 replicas vs one device, variables after 4 float32 SGD steps: a few
#                   ulp (the all-reduce sums in another order; tests/test_distribute.py)
LOG_TOL = 1e-5    # logged metrics, the same float32 sums in another order
# 2 vs 1 steps per execution (same process, same replicas): an ulp or two. Grappler
# optimises the loop body's copy of the step apart from the top-level one, and its constant
# folding and arithmetic optimizer may round differently there: here the variables came out
# bit-equal and pos_cos 1.5e-8 off (turning off either optimizer makes it bit-equal too);
# configs/hltm.cfg's metrics after 100 steps moved by 2.4e-7. A step too many or too few
# moves the variables by ~0.1.
SAME_TOL = 1e-6
MOVED = 1e-3      # the steps move the variables far more than TOL: the test is not vacuous


def _with_spe(steps_per_execution):
    def build(case, gather_fn=None):
        model = worker.build(case, gather_fn)
        model.steps_per_execution = steps_per_execution  # fit reads it (compile set 1)
        return model
    return build


def _keras_own_error(strategy):
    """What Keras' own function does on ``strategy`` with 2 steps per execution: a plain
    Sequential regression (nothing of the package); returns the error or ''."""
    import keras
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse", steps_per_execution=2)
    try:
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), epochs=1,
                  steps_per_epoch=4, verbose=0)
    except Exception as e:  # noqa: BLE001 (whatever Keras raises is the record)
        return f"{type(e).__name__}: {e}"
    return ""


def _evaluate(strategy, gather, batches, steps_per_execution):
    """``evaluate``'s logs on ``strategy``."""
    import tensorflow as tf
    from dualssl_tf.run import distribute
    with strategy.scope():
        model = _with_spe(steps_per_execution)(CASE, gather)
    r = strategy.num_replicas_in_sync
    per = worker.GLOBAL_BATCH // r

    def make(per_replica, ctx):  # one pipeline: consecutive elements to consecutive replicas
        return tf.data.Dataset.from_tensor_slices(worker._stack(
            [{k: v[i * per:(i + 1) * per] for k, v in b.items()}
             for b in batches for i in range(r)]))

    data = distribute.distributed_dataset(strategy, worker.GLOBAL_BATCH, make)
    return model.evaluate(data, steps=len(batches), verbose=0, return_dict=True)


def _trainer_metrics(root, steps_per_execution):
    from dualssl_tf import config
    from dualssl_tf.run import trainer
    model_dir = os.path.join(root, f"spe{steps_per_execution}")
    trainer.run(config.TrainConfig(
        dataset="hltm", strategy="mirrored", loss="ntxent", temperature=0.5, batch_size=8,
        epochs=2, steps_per_epoch=5, steps_per_execution=steps_per_execution, hltm_depth=2,
        hltm_hid=4, hltm_samples_per_epoch=64, hltm_eval_samples=64, verbose=0,
        negatives="batch", model_dir=model_dir))
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return f.read()


def main(mode, out_path):
    worker.split_devices(2)
    from dualssl_tf import cross_replica
    from dualssl_tf.run import distribute
    # The trainer's own (cached) strategy: a second one over the same devices would reuse
    # its collective keys.
    strategy = distribute.make_strategy("mirrored")
    if mode == "trainer":
        root = os.path.join(os.path.dirname(os.path.abspath(out_path)), "runs")
        result = {spe: _trainer_metrics(root, spe) for spe in (1, 3)}
    else:
        gather = cross_replica.cross_replica_candidates
        batches = worker.case_batches(CASE, STEPS, seed=5)
        one, one_logs = worker.fit_single(CASE, batches, with_logs=True)
        spe1, spe1_logs = worker.fit_replicas(strategy, CASE, batches, gather, _with_spe(1),
                                              with_logs=True)
        spe2, spe2_logs = worker.fit_replicas(strategy, CASE, batches, gather, _with_spe(2),
                                              with_logs=True)
        result = {
            "replicas": strategy.num_replicas_in_sync,
            "train_function": type(worker.build(CASE)).make_train_function.__qualname__,
            "spe2_vs_spe1": worker._maxdiff(spe2, spe1),
            "spe2_vs_one_device": worker._maxdiff(spe2, one),
            "moved": worker._maxdiff(one, worker.weights(worker.build(CASE))),
            "logs": {"one_device": one_logs, "spe1": spe1_logs, "spe2": spe2_logs},
            "evaluate": {spe: _evaluate(strategy, gather, batches, spe) for spe in (1, 2)},
            "keras_own_error": _keras_own_error(strategy),
        }
    with open(out_path, "w") as f:
        json.dump(result, f)


def _close(a, b):
    """Max |a - b| over two logs' values (nested dicts too); inf when their keys differ."""
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return float("inf")
        return max([_close(a[k], b[k]) for k in a] or [0.0])
    return abs(a - b)


def test_two_replicas_several_steps_per_execution(tmp_path):
    got = worker.launch(os.path.abspath(__file__), ["fit"], tmp_path / "result.json",
                        eager=False)
    assert got["replicas"] == 2
    assert got["train_function"] == "ReplicaStepLoop.make_train_function"
    assert got["moved"] > MOVED
    # Variables: 2 steps per execution are 1 step per execution (to an ulp), and one
    # device's within float32 rounding.
    assert got["spe2_vs_spe1"] < SAME_TOL, got
    assert got["spe2_vs_one_device"] < TOL, got
    logs = got["logs"]
    # fit's logs: the epoch's, and the batch logs of each execution's last step.
    spe1, spe2, one = logs["spe1"], logs["spe2"], logs["one_device"]
    assert len(spe2["batches"]) == STEPS // 2
    assert {"loss", "pos_cos", "probe_loss", "probe_acc"} <= set(spe2["epoch"])
    assert _close(spe2["epoch"], spe1["epoch"]) < SAME_TOL, logs
    for got_step, want_step in zip(spe2["batches"], spe1["batches"][1::2]):
        assert _close(got_step, want_step) < SAME_TOL, logs
    assert _close(spe2["epoch"], one["epoch"]) < LOG_TOL, logs
    assert abs(one["epoch"]["loss"]) > 100 * LOG_TOL
    # evaluate(): 2 steps per execution as 1.
    evaluate = got["evaluate"]
    assert {"loss", "pos_cos", "probe_acc"} <= set(evaluate["2"])
    assert _close(evaluate["2"], evaluate["1"]) < SAME_TOL, evaluate
    # Keras' own function on 2 replicas: still keras-team/keras#19246.
    assert "You must feed a value for placeholder tensor" in got["keras_own_error"], (
        "Keras' own train function now runs steps_per_execution > 1 on 2 mirrored "
        f"replicas ({got['keras_own_error']!r}): keras_internals.ReplicaStepLoop may go")


@pytest.mark.slow
def test_trainer_on_two_replicas_metrics_do_not_depend_on_steps_per_execution(tmp_path):
    got = worker.launch(os.path.abspath(__file__), ["trainer"], tmp_path / "result.json",
                        eager=False)
    # 5 steps per epoch as executions of 3 + 2 (ExactEpochs' short one), 2 epochs: the same
    # metrics as 1 step per execution (a step too many or too few would move the data
    # stream and every later value by far more).
    want, have = ([json.loads(line) for line in got[spe].splitlines()] for spe in ("1", "3"))
    assert [line["epoch"] for line in have] == [0, 1, 2]
    for a, b in zip(have, want):
        assert _close(a, b) < SAME_TOL, (a, b)
    assert have[-1]["loss"] != have[1]["loss"]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
