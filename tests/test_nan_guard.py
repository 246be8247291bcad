"""The NaN/Inf guard: a real learning-rate explosion stops training with exit status 3.

With ``--learning_rate=1e30`` the first SGD step (its loss is computed before the update,
so it is finite) multiplies the weights to ~1e29; at step 2 the depth-3 tree network's
pre-activations overflow float32 and the normalised embedding becomes inf/inf = NaN.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config
from dualssl_tf.run import callbacks, checkpoints, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import sys  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import kill_resume  # noqa: E402

EXPLODING = config.TrainConfig(
    dataset="hltm", hltm_depth=3, hltm_children=2, hltm_hid=4, batch_size=16,
    steps_per_epoch=1, hltm_samples_per_epoch=64, hltm_eval_samples=128, loss="nce",
    temperature=0.1, optimizer="sgd", learning_rate=1e30, seed=3, checkpoint_every=1,
    verbose=0)


def _linear_fit(steps_per_execution, learning_rate):
    """Least squares on y = 3x with plain SGD: with lr = 1e30 step 1 overshoots to ~1e31
    and the loss of step 2 is ~1e62 = inf in float32."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(learning_rate), loss="mse",
                  steps_per_execution=steps_per_execution)
    x = np.ones((8, 1), np.float32)
    guard = callbacks.NonFiniteLossGuard(steps_per_execution)
    return model.fit(x, 3 * x, batch_size=2, epochs=1, verbose=0, shuffle=False,
                     callbacks=[guard])


def test_guard_passes_finite_training():
    history = _linear_fit(1, 0.1)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize("spe,expected", [(1, "at step 2;"), (2, "at steps 1-2 (one execution")])
def test_guard_names_the_step_or_execution(spe, expected):
    with pytest.raises(callbacks.NonFiniteLossError, match=r"non-finite loss \(inf\)") as e:
        _linear_fit(spe, 1e30)
    assert e.value.step == 2 and expected in str(e.value)


def test_exploding_run_stops_keeps_good_checkpoint_and_export_exit_3(tmp_path):
    model_dir = tmp_path / "run"
    # Epoch 1 = step 1: finite loss, checkpoint and export written.
    out = trainer.run(EXPLODING.replace(model_dir=str(model_dir), epochs=1))
    assert np.isfinite(out["final"]["loss"])
    export = model_dir / "saved_model"
    x = tf.ones([4, 8])
    before = tf.saved_model.load(str(export)).signatures["serving_default"](x)
    before = before["representation"].numpy()
    saved = {n: os.path.getmtime(export / n) for n in os.listdir(export)}
    metrics = (model_dir / "metrics.jsonl").read_bytes()
    ckpt_files = sorted(os.listdir(model_dir / "checkpoints"))

    # Continuing to 3 epochs explodes at step 2 (epoch 2): one line, exit 3.
    proc = kill_resume.run_to_end([f"--flagfile={model_dir / 'flags.txt'}", "--epochs=3"],
                                  model_dir)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("train.py:")]
    assert errors == ["train.py: error: non-finite loss (nan) at step 2; training stopped, "
                      "the last good checkpoint is kept; lower --learning_rate and re-run"]
    # Nothing of the broken state was written: metrics, checkpoints and export as before.
    assert (model_dir / "metrics.jsonl").read_bytes() == metrics
    assert [json.loads(l)["epoch"] for l in metrics.decode().splitlines()] == [0, 1]
    assert sorted(os.listdir(model_dir / "checkpoints")) == ckpt_files
    assert {n: os.path.getmtime(export / n) for n in os.listdir(export)} == saved
    found = checkpoints.RunCheckpoints(str(model_dir)).find_latest()
    assert (found["epoch"], found["step"]) == (1, 1)
    reader = tf.train.load_checkpoint(found["path"])
    for name in reader.get_variable_to_shape_map():
        if name.startswith("model/"):
            assert np.isfinite(reader.get_tensor(name)).all(), name
    # The export still serves the epoch-1 weights (finite, though large enough after the
    # 1e30 step that they overflow on this input: equal NaNs compare equal here).
    after = tf.saved_model.load(str(export)).signatures["serving_default"](x)
    np.testing.assert_array_equal(after["representation"].numpy(), before)
