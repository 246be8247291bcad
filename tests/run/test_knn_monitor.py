"""The online kNN monitor (monitors.probes.KnnAccuracy): the offline kNN's value on the same
features, a hand-checked nearest neighbour, its flags, and the images task's wiring."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config
from dualssl_tf.evaluation import knn
from dualssl_tf.options import ConfigError
from dualssl_tf.monitors import probes


def _linear(w):
    layer = keras.layers.Dense(w.shape[1], use_bias=False)
    layer.build((None, w.shape[0]))
    layer.kernel.assign(w)
    return layer


def _data(seed, n, classes=3, dim=5):
    """Labelled points around one centre per class (so kNN is well above chance)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(100).normal(size=(classes, dim))
    y = rng.integers(0, classes, n).astype(np.int32)
    x = (centres[y] + rng.normal(size=(n, dim))).astype(np.float32)
    return x, y


def test_monitor_equals_the_offline_knn_on_the_same_features():
    w = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    enc = _linear(w)
    xtr, ytr = _data(2, 37)
    xte, yte = _data(3, 21)
    bank = tf.data.Dataset.from_tensor_slices((xtr, ytr)).batch(8)  # last batch has 5
    queries = tf.data.Dataset.from_tensor_slices((xte, yte)).batch(8)
    cb = probes.KnnAccuracy(enc, bank, queries, num_classes=3, k=[3, 50], max_bank=30)
    got = cb.compute()
    # The bank is the first 30 examples (cut inside the fourth batch of 8).
    want = knn.knn_probe(enc(xtr[:30]).numpy(), ytr[:30], enc(xte).numpy(), yte, 3,
                         k=[3, 50], temperature=0.07)
    assert got == {"knn_top1": want["top1@3"], "knn_top1@3": want["top1@3"],
                   "knn_top1@50": want["top1@50"]}
    assert 0.5 < got["knn_top1"] < 1.0  # informative, not a trivial 0 or 1
    # Another bank gives another value: the limit is honoured.
    other = knn.knn_probe(enc(xtr[:10]).numpy(), ytr[:10], enc(xte).numpy(), yte, 3, k=3)
    cb10 = probes.KnnAccuracy(enc, bank, queries, num_classes=3, k=3, max_bank=10)
    assert cb10.compute() == {"knn_top1": other["top1"]}
    logs = {}
    cb10.on_epoch_end(0, logs)
    assert logs == {"knn_top1": other["top1"]}
    assert cb10.initial_logs() == {"knn_top1": other["top1"]}  # also at initialisation


def test_nearest_neighbour_by_hand():
    """k = 1 on cosine: query (1, 0.1) is nearest (1, 0) (class 0); (0.1, 1) nearest (0, 1)
    (class 1); (-1, 0.2) nearest (-1, 0) whose label 0 is wrong for its label 1."""
    enc = _linear(np.eye(2, dtype=np.float32))
    bank = tf.data.Dataset.from_tensor_slices(
        (np.array([[1, 0], [0, 1], [-1, 0]], np.float32), np.array([0, 1, 0]))).batch(2)
    queries = tf.data.Dataset.from_tensor_slices(
        (np.array([[1, 0.1], [0.1, 1], [-1, 0.2]], np.float32), np.array([0, 1, 1]))).batch(2)
    cb = probes.KnnAccuracy(enc, bank, queries, num_classes=2, k=1)
    assert cb.compute() == {"knn_top1": pytest.approx(2 / 3, abs=0)}


def _images_cfg(**kw):
    base = dict(dataset="generated_images", image_size=16, stem="cifar",
                width_multiplier=0.0625, proj_hidden_dim=8, proj_dim=8, batch_size=16,
                generated_examples=64, steps_per_epoch=1, epochs=1, loss="ntxent",
                temperature=0.5, verbose=0)
    base.update(kw)
    return config.TrainConfig(**base)


@pytest.mark.parametrize("kw,flag", [
    (dict(knn_monitor_k="0"), "knn_monitor_k"),
    (dict(knn_monitor_k="20,x"), "knn_monitor_k"),
    (dict(knn_monitor_k=""), "knn_monitor_k"),
    (dict(knn_monitor_bank=0), "knn_monitor_bank"),
])
def test_bad_flags_name_the_flag(tmp_path, kw, flag):
    with pytest.raises(ConfigError) as err:
        config.validate(_images_cfg(model_dir=str(tmp_path / "run"), **kw))
    assert err.value.flag == flag and str(err.value).startswith(f"--{flag}: ")


def test_images_task_wires_the_monitor_and_the_flag_turns_it_off():
    from dualssl_tf.tasks.images import task
    t = task.build(_images_cfg(knn_monitor_k="5,20,5", knn_monitor_bank=40))
    (cb,) = [c for c in t.callbacks if isinstance(c, probes.KnnAccuracy)]
    assert cb.ks == [5, 20] and cb.max_bank == 40 and cb.num_classes == 6
    t = task.build(_images_cfg(knn_monitor=False))
    assert not any(isinstance(c, probes.KnnAccuracy) for c in t.callbacks)


@pytest.mark.slow  # two short trainer runs
def test_monitor_leaves_every_other_metric_byte_identical(tmp_path):
    from dualssl_tf.run import trainer
    lines = {}
    for on in (True, False):
        out = tmp_path / f"knn_{on}"
        trainer.run(_images_cfg(model_dir=str(out), knn_monitor=on, epochs=2,
                                steps_per_epoch=2))
        lines[on] = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines[True]) == len(lines[False]) == 3
    for with_knn, without in zip(lines[True], lines[False]):
        record = json.loads(with_knn)
        assert 0.0 <= record.pop("knn_top1") <= 1.0
        assert json.dumps(record) == without
