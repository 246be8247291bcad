"""An epoch is exactly --steps_per_epoch steps whatever --steps_per_execution
(dualssl_tf/epoch_steps.py): Keras 3.15 alone rounds each epoch up to whole executions."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config
from dualssl_tf.run import epoch_steps
from tests.tiny_runs import train

# 5 steps per epoch: 3 per execution gives 3 + 2, 7 gives one short execution of 5.
FIVE = dict(steps_per_epoch=5, epochs=3)


def _step(model_dir, epoch):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", f"ckpt-{epoch}"))
    return int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def _bytes(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl"), "rb") as f:
        return f.read()


def test_execution_sizes():
    assert epoch_steps.execution_sizes(156, 10) == [10] * 15 + [6]
    assert epoch_steps.execution_sizes(20, 7) == [7, 7, 6]
    assert epoch_steps.execution_sizes(500, 50) == [50] * 10
    assert epoch_steps.execution_sizes(5, 7) == [5]
    for n in range(1, 40):
        for k in range(1, 12):
            sizes = epoch_steps.execution_sizes(n, k)
            assert sum(sizes) == n and max(sizes) <= k and min(sizes) >= 1


def test_checkpoint_of_rounded_epochs_is_refused():
    epoch_steps.check_resume_step({"path": "p/ckpt-2", "epoch": 2, "step": 312}, 156)
    with pytest.raises(config.ConfigError, match=r"^--model_dir: checkpoint p/ckpt-2 holds "
                                                 r"step 320 after 2 epochs, not 312"):
        epoch_steps.check_resume_step({"path": "p/ckpt-2", "epoch": 2, "step": 320}, 156)


@pytest.fixture(scope="module")
def by_execution(tmp_path_factory):
    """The same 3 x 5-step run with 1, 3 and 7 steps per execution."""
    root = tmp_path_factory.mktemp("spe")
    for spe in (1, 3, 7):
        train(root / f"spe{spe}", steps_per_execution=spe, **FIVE)
    return root


def test_every_epoch_is_exactly_its_steps(by_execution):
    for spe in (1, 3, 7):
        assert [_step(by_execution / f"spe{spe}", e) for e in (1, 2, 3)] == [5, 10, 15]


def test_steps_per_execution_does_not_change_the_run(by_execution):
    # One step is the same computation however many run per call: byte-identical logs.
    want = _bytes(by_execution / "spe1")
    assert [json.loads(l)["epoch"] for l in want.decode().splitlines()] == [0, 1, 2, 3]
    assert _bytes(by_execution / "spe3") == want and _bytes(by_execution / "spe7") == want


def test_resume_with_other_steps_per_execution_equals_uninterrupted(by_execution, tmp_path):
    run = tmp_path / "run"
    train(run, steps_per_execution=3, steps_per_epoch=5, epochs=2)
    train(run, steps_per_execution=2, **FIVE)  # config.RESUMABLE_FLAGS allows the change
    assert _bytes(run) == _bytes(by_execution / "spe1") and _step(run, 3) == 15
    ref = tf.train.load_checkpoint(str(by_execution / "spe3" / "checkpoints" / "ckpt-3"))
    got = tf.train.load_checkpoint(str(run / "checkpoints" / "ckpt-3"))
    keys = [k for k in ref.get_variable_to_shape_map()
            if k.startswith(("model/", "optimizer/", "epoch/", "step/"))]
    assert len(keys) == 16  # 6 weights, 8 optimizer (momentum SGD), epoch, step
    for k in keys:
        np.testing.assert_array_equal(ref.get_tensor(k), got.get_tensor(k), err_msg=k)


def test_progress_bar_counts_the_epochs_steps(tmp_path, capsys):
    train(tmp_path / "run", steps_per_execution=3, steps_per_epoch=5, epochs=1, verbose=2)
    out = capsys.readouterr().out
    assert "5/5 - " in out and "6/5" not in out
