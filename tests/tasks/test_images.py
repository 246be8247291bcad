"""The image task: built from a TrainConfig, trained for a few steps with the probe."""

import logging

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dualssl_tf.run import trainer
from dualssl_tf.config import ConfigError, TrainConfig
from dualssl_tf.methods.contrastive import ContrastiveMethod
from dualssl_tf.tasks import build, eval_data
from tests.data import tiny_tfds


def _cfg(tmp_path, **kw):
    base = dict(dataset="generated_images", model_dir=str(tmp_path / "run"), loss="ntxent",
                temperature=0.5, image_size=16, stem="cifar", width_multiplier=0.0625,
                proj_hidden_dim=16, proj_dim=8, batch_size=16, generated_examples=64,
                steps_per_epoch=2, epochs=1, optimizer="sgd", learning_rate=0.05,
                momentum=0.9)
    base.update(kw)
    return TrainConfig(**base)


def test_generated_task_parts(tmp_path):
    cfg = _cfg(tmp_path, steps_per_epoch=0)
    exp = build(cfg)
    spec = exp.make_data(16).element_spec
    assert spec["view1"].shape == (16, 16, 16, 3) and spec["label"].shape == (16,)
    assert exp.encoder.output_shape == (None, 32)          # 512 * 1/16
    assert exp.head.output_shape == (None, 8)
    assert exp.probe.num_classes == 6
    assert exp.input_shape == (16, 16, 3)
    assert exp.metadata["images"]["stem"] == "cifar"
    train_eval, test_eval, num_classes = eval_data(cfg)
    assert num_classes == 6
    x, y = next(iter(test_eval))
    assert x.shape[1:] == (16, 16, 3) and y.dtype == tf.int32
    assert exp.steps_per_epoch == 64 // 16  # the data set's natural epoch
    # Two hosts with one replica each: per-replica batches from disjoint example shards,
    # with distinct augmentation seeds.
    streams = []
    for pid in (0, 1):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                         num_replicas_in_sync=2)
        ds = exp.make_data(8, ctx)
        assert ds.element_spec["view1"].shape == (8, 16, 16, 3)
        streams.append(next(iter(ds))["view1"].numpy())
    assert np.abs(streams[0] - streams[1]).max() > 0.1


@pytest.mark.slow
def test_fit_steps_update_probe_and_log_metrics(tmp_path):
    cfg = _cfg(tmp_path, optimizer="lars", lr_schedule="cosine", warmup_epochs=0.5)
    exp = build(cfg)
    model = trainer.build_model(cfg, exp)
    before = exp.probe.classifier.kernel.numpy().copy()
    hist = model.fit(exp.make_data(16), epochs=1, steps_per_epoch=2, callbacks=exp.callbacks,
                     verbose=0)
    logs = {k: v[-1] for k, v in hist.history.items()}
    for key in ("loss", "contrastive_acc", "r_pos", "r_neg", "probe_acc", "probe_loss",
                "probe_test_acc", "embed_std"):
        assert np.isfinite(logs[key]), key
    assert 0 <= logs["probe_test_acc"] <= 1 and 0 < logs["embed_std"] < 1
    assert np.abs(exp.probe.classifier.kernel.numpy() - before).max() > 0
    # NT-Xent at tau 0.5 with 2B - 1 = 31 candidates starts near log(31) (+/- embedding).
    assert 2.0 < logs["loss"] < 6.0


def test_probe_ignores_unlabelled_examples():
    enc = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3)])
    probe = tf.keras.layers.Dense(2)
    model = ContrastiveMethod(enc, None, loss="ntxent", probe=probe)
    x = tf.random.normal([4, 4], seed=1)
    data = {"view1": x, "view2": x + 0.1, "label": tf.constant([1, -1, 0, -1])}
    logs = model.probe_step(data, model.forward(data, training=False), training=False)
    logits = probe(enc(x)).numpy()[[0, 2]]
    labels = np.array([1, 0])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(float(logs["probe_loss"]),
                               -logp[[0, 1], labels].mean(), rtol=1e-5)
    assert float(logs["probe_acc"]) == np.mean(logits.argmax(1) == labels)


def test_tfds_task_errors(tmp_path):
    with pytest.raises(ConfigError, match="^--data_dir: --dataset=cifar10 is not prepared"):
        build(_cfg(tmp_path, dataset="cifar10", data_dir=str(tmp_path), image_size=0,
                   download=False))   # never download in tests
    with tfds.testing.mock_data(num_examples=8):
        with pytest.raises(ConfigError, match="^--batch_size: 16 is larger than cifar10"):
            build(_cfg(tmp_path, dataset="cifar10", data_dir=str(tmp_path), image_size=0))
        exp = build(_cfg(tmp_path, dataset="cifar10", data_dir=str(tmp_path), image_size=0,
                         batch_size=4))
        assert exp.input_shape == (32, 32, 3) and exp.probe.num_classes == 10


def test_folder_needs_image_size_for_mixed_sizes(tmp_path):
    for i, size in enumerate([(10, 12), (20, 9)]):
        tf.io.write_file(str(tmp_path / f"{i}.png"), tf.io.encode_png(
            np.zeros(size + (3,), np.uint8)))
    with pytest.raises(ConfigError, match="^--image_size: folder:.* varying sizes"):
        build(_cfg(tmp_path, dataset="folder", data_dir=str(tmp_path), image_size=0,
                   batch_size=2))
    exp = build(_cfg(tmp_path, dataset="folder", data_dir=str(tmp_path), batch_size=2))
    assert exp.probe is None and "label" not in exp.make_data(2).element_spec


def test_tfds_hosts_read_their_own_files(tmp_path, caplog):
    """Per-host data of a real (tiny, 4-file) tfds data set is sharded by file."""
    data_dir = tmp_path / "tfds"
    tiny_tfds.prepare(data_dir, num_shards=4)
    exp = build(_cfg(tmp_path, dataset=tiny_tfds.NAME, data_dir=str(data_dir), image_size=0,
                     batch_size=4))
    assert exp.metadata["images"]["num_examples"] == tiny_tfds.NUM_TRAIN
    caplog.set_level(logging.INFO, logger="absl")  # any earlier SavedModel export leaves it at WARNING
    for pid in (0, 1):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                         num_replicas_in_sync=2)
        batches = list(exp.make_data(4, ctx).take(4).as_numpy_iterator())
        assert batches[0]["view1"].shape == (4, 16, 16, 3)
        # 16 of this host's 18 examples (first epoch: no repeats), all from its files.
        labels = np.concatenate([b["label"] for b in batches])
        assert len(set(labels)) == 16
        assert set(labels) <= set(tiny_tfds.labels_in_files(data_dir, range(pid, 4, 2)))
    lines = [r.getMessage() for r in caplog.records if "reads by file" in r.getMessage()]
    assert len(lines) == 2 and "input pipeline 1 of 2 reads by file: 2 of the split's 4 " \
        "files, 18 examples" in lines[1]
