"""RunDir keeps the weights at initialisation (initial/), and the analysis reads them back
instead of re-seeding and relying on the build order."""

import keras
import numpy as np

from dualssl_tf import tasks
from dualssl_tf.analysis import runs
from dualssl_tf.run import rundir
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
    assert rundir.restore_initial(other.variables, str(run))
    for a, b in zip(fresh.variables, other.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # load_run takes them from initial/ even when seeding is not reproduced.
    monkeypatch.setattr(keras.utils, "set_random_seed", lambda seed: None)
    loaded = runs.load_run(str(run))
    for a, b in zip(fresh.variables, loaded.init.encoder.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not rundir.restore_initial(other.variables, str(tmp_path / "no_such_run"))
