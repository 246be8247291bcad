"""Shared by the resume tests: tiny HLTM and image runs, an in-process Ctrl-C, and a reader
of TensorBoard event files."""

import os
import shutil
import signal

import keras
import tensorflow as tf

from dualssl_tf import config
from dualssl_tf.run import interrupt as run_interrupt, safe_stop as run_interrupt_callback, trainer

# Depth-3 binary tree, 4 units per latent, 3 steps of 16 pairs per epoch: a few seconds a run.
TINY_HLTM = config.TrainConfig(
    dataset="hltm", hltm_depth=3, hltm_children=2, hltm_hid=4, batch_size=16,
    steps_per_epoch=3, hltm_samples_per_epoch=64, hltm_eval_samples=128, loss="nce",
    temperature=0.1, optimizer="sgd", learning_rate=0.1, momentum=0.9, seed=3,
    steps_per_execution=1, checkpoint_every=1, keep_checkpoints=3, verbose=0,
    deterministic=True)


# Generated shapes, 16 px, a 1/16-width ResNet-18: 80 examples of batch 16 = 5 steps per
# epoch, and 2 per execution do not divide it (2 + 2 + 1).
TINY_IMAGES = config.TrainConfig(
    dataset="generated_images", image_size=16, stem="cifar", width_multiplier=0.0625,
    proj_hidden_dim=16, proj_dim=8, batch_size=16, generated_examples=80,
    generated_classes=3, loss="ntxent", temperature=0.5, optimizer="adam",
    learning_rate=0.001, seed=1, steps_per_execution=2, checkpoint_every=1,
    keep_checkpoints=3, verbose=0, deterministic=True)


def train(model_dir, base=TINY_HLTM, **changes):
    """Runs ``base`` (TINY_HLTM; with ``changes``) in ``model_dir``; returns trainer.run's
    result."""
    return trainer.run(base.replace(model_dir=str(model_dir), **changes))


def train_interrupted(model_dir, epoch, batch, sig=signal.SIGINT, base=TINY_HLTM, **changes):
    """:func:`train` under tools/train.py's SignalCatcher, sending ``sig`` to this process
    when the execution at ``batch`` (its first step in the epoch) of the 1-based ``epoch``
    begins: it is then pending while that execution runs, as a Ctrl-C in the middle of one.
    Returns the :class:`~dualssl_tf.run_interrupt.Interrupted` the run ended with."""

    class Send(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self.epoch = e + 1

        def on_train_batch_begin(self, b, logs=None):
            if (self.epoch, b) == (epoch, batch):
                os.kill(os.getpid(), sig)

    real = run_interrupt_callback.callbacks
    run_interrupt_callback.callbacks = lambda *a: [Send()] + real(*a)
    try:
        with run_interrupt.SignalCatcher():
            train(model_dir, base=base, **changes)
    except run_interrupt.Interrupted as e:
        return e
    finally:
        run_interrupt_callback.callbacks = real
    raise AssertionError(f"the run was not interrupted at epoch {epoch}, batch {batch}")


def ckpt_tensors(model_dir, epoch):
    """{key: array} of the weights, optimizer state, epoch and step of ckpt-<epoch>."""
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", f"ckpt-{epoch}"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("model/", "optimizer/", "epoch/", "step/"))}


def metrics_bytes(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl"), "rb") as f:
        return f.read()



def check_resume(tmp_path, base=TINY_HLTM, **changes):
    """A 2-epoch run, and its copy as a kill during epoch 2 leaves it (ckpt-2, the export
    and finished.json gone; schedules span the same --epochs), resumed from ckpt-1: asserts
    metrics.jsonl and every epoch-2 checkpoint tensor equal bit for bit; returns the
    tensors ({name: array})."""
    import numpy as np

    ref, part = tmp_path / "ref", tmp_path / "part"
    train(ref, base=base, epochs=2, **changes)
    shutil.copytree(ref, part)
    for name in os.listdir(part / "checkpoints"):
        if name.startswith("ckpt-2."):
            os.remove(part / "checkpoints" / name)
    shutil.rmtree(part / "saved_model")
    os.remove(part / "finished.json")
    train(part, base=base, epochs=2, **changes)   # resumes from ckpt-1
    assert metrics_bytes(ref) == metrics_bytes(part)
    a, b = ckpt_tensors(ref, 2), ckpt_tensors(part, 2)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    return a

def events(log_dir):
    """[(subdir, tag, step, value)] of every scalar summary in every events file under
    log_dir (local or URL), in file order; subdir is the events file's directory name."""
    out = []
    for directory, _, files in tf.io.gfile.walk(log_dir):
        for name in sorted(files):
            if "tfevents" not in name:
                continue
            for raw in tf.data.TFRecordDataset(os.path.join(directory, name)):
                event = tf.compat.v1.Event.FromString(raw.numpy())
                for v in event.summary.value:
                    out.append((os.path.basename(directory), v.tag, event.step,
                                float(tf.make_ndarray(v.tensor))))
    return out
