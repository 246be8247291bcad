"""The image task: built from a TrainConfig, trained for a few steps with the probe."""

import logging

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dualssl_tf import methods
from dualssl_tf.models import heads
from dualssl_tf.run import trainer
from dualssl_tf.config import ConfigError, TrainConfig
from dualssl_tf.methods.contrastive import ContrastiveMethod
from dualssl_tf.tasks import build, eval_data
from dualssl_tf.tasks.base import HeadSpec
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


def test_the_method_builds_the_projector(tmp_path, monkeypatch):
    """The task gives --proj_* as head_spec; the method's build_head makes Task.head (by
    default exactly that head), and the method trains that same network."""
    cfg = _cfg(tmp_path, steps_per_epoch=0, proj_layers=3, proj_bn=False)
    exp = build(cfg)
    assert exp.head_spec == HeadSpec(16, 8, 3, batch_norm=False)
    assert [(layer.name, tuple(layer.kernel.shape)) for layer in exp.head.layers
            if hasattr(layer, "kernel")] == [("dense1", (32, 16)), ("dense2", (16, 16)),
                                             ("dense3", (16, 8))]
    assert not any("bn" in layer.name for layer in exp.head.layers)

    seen = []

    def own_projector(cls, cfg_, rep_dim, head_spec, sync_bn):   # e.g. Barlow's 3 x 8192
        seen.append((cls.__name__, rep_dim, head_spec, sync_bn))
        return heads.projection_head(rep_dim, 24, 12, 2, sync_bn, name="own")

    monkeypatch.setattr(ContrastiveMethod, "build_head", classmethod(own_projector))
    exp = build(cfg)
    assert seen == [("ContrastiveMethod", 32, exp.head_spec, False)]
    assert exp.head.name == "own" and exp.head.output_shape == (None, 12)
    model = methods.build(cfg, exp)
    assert model.head is exp.head
    assert model(tf.zeros([2, 16, 16, 3])).shape == (2, 12)


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


def _image_folder(root, classes=3, per_class=6):
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            tf.io.write_file(str(root / f"c{c}" / f"{i}.png"), tf.io.encode_png(
                np.full((8, 8, 3), 10 * c + i, np.uint8)))
    return root


def _count(ds):
    return sum(int(y.shape[0]) for _, y in ds)


def test_folder_holdout_is_the_probe_test_split_and_recorded(tmp_path):
    """--holdout_fraction: the held-out files are what the online probe tests on, never in
    the pretraining data, and the model card's record rebuilds them for linear_eval even
    after the folder changed."""
    from dualssl_tf.evaluation import data, export
    from dualssl_tf.monitors.probes import ProbeAccuracy

    root = _image_folder(tmp_path / "imgs")
    cfg = _cfg(tmp_path, dataset="folder", data_dir=str(root), image_size=8, batch_size=4,
               holdout_fraction=0.34, holdout_seed=2, color_jitter_strength=0.0)
    exp = build(cfg)
    record = exp.metadata["images"]["holdout"]
    assert record["num_files"] == 6 and len(record["files"]) == 6   # 2 of each class's 6
    assert exp.metadata["images"]["num_examples"] == 12
    (probe_cb,) = [c for c in exp.callbacks if isinstance(c, ProbeAccuracy)]
    assert _count(probe_cb.dataset) == 6
    # The pretraining stream only ever shows the 12 kept images: its pixel values (each
    # image a distinct constant) never include a held-out one's.
    value = {f"c{c}/{i}.png": 10 * c + i for c in range(3) for i in range(6)}
    held_values = {value[f] for f in record["files"]}
    seen = set()
    for batch in exp.make_data(4).take(12):
        seen |= set(np.round(batch["view1"].numpy()[:, 4, 4, :].max(-1) * 255).astype(int))
    assert seen and not seen & held_values, (seen, held_values)

    card = export.run_model_card(cfg.flags(), exp.metadata)
    tf.io.write_file(str(root / "c0" / "new.png"),
                     tf.io.encode_png(np.full((8, 8, 3), 200, np.uint8)))
    train, test, num_classes = data.probe_datasets("folder", model_card=card, batch_size=5)
    assert (_count(train), _count(test), num_classes) == (13, 6, 3)
    test_values = sorted(int(round(v)) for x, _ in test
                         for v in x.numpy()[:, 4, 4, 0] * (255 if x.dtype != tf.uint8 else 1))
    assert test_values == sorted(held_values)
    # Another folder with its own train/ + val/ is probed on its own split.
    other = tmp_path / "other"
    _image_folder(other / "train", per_class=2)
    _image_folder(other / "val", per_class=1)
    train, test, _ = data.probe_datasets("folder", data_dir=str(other), model_card=card)
    assert (_count(train), _count(test)) == (6, 3)


def test_tfds_hosts_read_their_own_files(tmp_path, caplog):
    """Per-host data of a real (tiny, 4-file) tfds data set is sharded by file."""
    data_dir = tmp_path / "tfds"
    tiny_tfds.prepare(data_dir, num_shards=4)
    exp = build(_cfg(tmp_path, dataset=tiny_tfds.NAME, data_dir=str(data_dir), image_size=0,
                     batch_size=4))
    assert exp.metadata["images"]["num_examples"] == tiny_tfds.NUM_TRAIN
    # any earlier SavedModel export leaves it at WARNING
    caplog.set_level(logging.INFO, logger="absl")
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


def test_probe_batchnorm_is_synced_with_the_encoder(tmp_path):
    """The online probe standardises by batch statistics: on several replicas they are the
    global batch's, like the encoder's (its update and logged probe_loss are one device's;
    tests/distribute_worker.py's ntxent_probe case has the numbers), one device's own
    otherwise."""
    for sync_bn in (False, True):
        exp = build(_cfg(tmp_path, steps_per_epoch=0, sync_bn=sync_bn))
        assert exp.probe.norm.synchronized is sync_bn
        assert exp.encoder.get_layer("stem_bn").synchronized is sync_bn
