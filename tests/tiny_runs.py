"""Shared by the resume tests: a tiny HLTM run and a reader of TensorBoard event files."""

import os

import tensorflow as tf

from dualssl_tf import config
from dualssl_tf.run import trainer

# Depth-3 binary tree, 4 units per latent, 3 steps of 16 pairs per epoch: a few seconds a run.
TINY_HLTM = config.TrainConfig(
    dataset="hltm", hltm_depth=3, hltm_children=2, hltm_hid=4, batch_size=16,
    steps_per_epoch=3, hltm_samples_per_epoch=64, hltm_eval_samples=128, loss="nce",
    temperature=0.1, optimizer="sgd", learning_rate=0.1, momentum=0.9, seed=3,
    steps_per_execution=1, checkpoint_every=1, keep_checkpoints=3, verbose=0,
    deterministic=True)


def train(model_dir, **changes):
    """Runs TINY_HLTM (with ``changes``) in ``model_dir``; returns trainer.run's result."""
    return trainer.run(TINY_HLTM.replace(model_dir=str(model_dir), **changes))


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
