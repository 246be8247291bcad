"""RunDir keeps the weights at initialisation (initial/), and the analysis reads them back
instead of re-seeding and relying on the build order."""

import os

import keras
import numpy as np

from dualssl_tf import tasks
from dualssl_tf.analysis import runs
from dualssl_tf.run import checkpoints, rundir
from tests.tiny_runs import TINY_HLTM, train


def test_initial_weights_are_written_and_read_back(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(run, epochs=1)
    cfg = TINY_HLTM.replace(model_dir=str(run))
    keras.utils.set_random_seed(cfg.run.seed)          # how the trainer built the network
    fresh = tasks.build(cfg).encoder
    # Another network (the tree net is seeded by --seed, not Keras' global seed: another
    # run seed): restore_initial gives it the run's initial weights.
    keras.utils.set_random_seed(12345)
    other = tasks.build(cfg.replace(seed=cfg.run.seed + 1)).encoder
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(fresh.variables, other.variables))
    assert checkpoints.restore_initial(other.variables, str(run))
    for a, b in zip(fresh.variables, other.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # load_run takes them from initial/ even when seeding is not reproduced.
    monkeypatch.setattr(keras.utils, "set_random_seed", lambda seed: None)
    loaded = runs.load_run(str(run))
    for a, b in zip(fresh.variables, loaded.init.encoder.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not checkpoints.restore_initial(other.variables, str(tmp_path / "no_such_run"))


def test_metrics_record_and_checkpoint_epoch(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert rundir.metrics_record(str(path)) == {}
    path.write_text('{"epoch": 0, "loss": 2}\n{"epoch": 1, "loss": 1}\nnot json\n'
                    '{"epoch": 1, "loss": 0.9}\n{"epoch": 2, "lo')   # a crash mid-write
    assert rundir.metrics_record(str(path)) == {"epoch": 1, "loss": 0.9}
    assert rundir.metrics_record(str(path), 0) == {"epoch": 0, "loss": 2}
    assert rundir.metrics_record(str(path), 1) == {"epoch": 1, "loss": 0.9}   # the last
    assert rundir.metrics_record(str(path), 2) == {}
    assert checkpoints.checkpoint_epoch(os.path.join("run", "checkpoints", "ckpt-12")) == 12
    assert checkpoints.checkpoint_epoch("gs://b/run/checkpoints/ckpt-7") == 7
    assert checkpoints.checkpoint_epoch("run/final.weights.h5") is None
    assert checkpoints.checkpoint_epoch("run/checkpoints/xckpt-3") is None
