"""--hltm_seeds=S: S independent HLTM experiments as one model (issue 12 part 1)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config
from dualssl_tf.methods.contrastive import ContrastiveMethod
from dualssl_tf.models.tree_net import TreeNet
from dualssl_tf.tasks.hltm import task as hltm_task
from tests.tiny_runs import TINY_HLTM, train


def _metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_seed_i_of_three_equals_the_single_seed_run(tmp_path):
    train(tmp_path / "s3", epochs=1, hltm_seeds=3)
    multi = _metrics(tmp_path / "s3")
    with open(tmp_path / "s3" / "run.json") as f:
        trees = json.load(f)["hltm_trees"]
    cfg3 = TINY_HLTM.replace(hltm_seeds=3)
    forest = hltm_task.build(cfg3).encoder
    for i in range(3):
        seed = TINY_HLTM.run.seed + i
        run = tmp_path / f"s1_{seed}"
        train(run, epochs=1, seed=seed)
        single = _metrics(run)
        with open(run / "run.json") as f:
            assert json.load(f)["hltm"] == trees[i]          # the same tree
        net = hltm_task.build(TINY_HLTM.replace(seed=seed)).encoder
        for a, b in zip(net.levels, forest.levels):          # the same initial weights
            g = a.groups
            np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy()[i * g:(i + 1) * g])
            np.testing.assert_array_equal(a.bias.numpy(), b.bias.numpy()[i * g:(i + 1) * g])
        for epoch in (0, 1):                                 # the same metrics
            for d, v in single[epoch]["best_corr"].items():
                assert abs(multi[epoch]["best_corr_seeds"][d][i] - v) < 1e-5, (i, epoch, d)
    summary = multi[1]
    for d, values in summary["best_corr_seeds"].items():
        assert summary["best_corr"][d] == pytest.approx(np.mean(values))
        assert summary["best_corr_sd"][d] == pytest.approx(np.std(values, ddof=1))


@pytest.mark.parametrize("loss", ["nce", "nce_batch"])
def test_the_gradient_of_a_seed_depends_on_its_own_data_only(loss):
    net = TreeNet(3, 2, 4, seed=[1, 2])
    net(tf.zeros([1, 16]))
    model = ContrastiveMethod(net, loss=loss, temperature=0.1)
    rng = np.random.default_rng(0)
    batch = {k: rng.integers(0, 2, shape).astype(np.float32)
             for k, shape in (("view1", (8, 16)), ("view2", (8, 16)), ("negatives", (8, 2, 16)))}
    other = {k: np.concatenate([v[..., :8], rng.integers(0, 2, v[..., 8:].shape)], -1)
             .astype(np.float32) for k, v in batch.items()}

    def grads(b):
        with tf.GradientTape() as tape:
            loss_value, _ = model.replica_loss(b, model.forward(b, training=True))
        return [g.numpy() for g in tape.gradient(loss_value, net.trainable_variables)]

    single = TreeNet(3, 2, 4, seed=1)
    single(tf.zeros([1, 8]))
    one = ContrastiveMethod(single, loss=loss, temperature=0.1)
    b0 = {k: v[..., :8] for k, v in batch.items()}
    with tf.GradientTape() as tape:
        ref, _ = one.replica_loss(b0, one.forward(b0, training=True))
    ref = [g.numpy() for g in tape.gradient(ref, single.trainable_variables)]
    for g, h, r in zip(grads(batch), grads(other), ref):
        half = g.shape[0] // 2
        np.testing.assert_array_equal(g[:half], h[:half])  # seed 1's data: no effect
        np.testing.assert_allclose(g[:half], r, rtol=1e-5, atol=1e-7)  # = seed 0 alone
        assert not np.allclose(g[half:], h[half:])


def test_multi_seed_run_resumes_as_if_uninterrupted(tmp_path):
    train(tmp_path / "straight", epochs=2, hltm_seeds=2)
    train(tmp_path / "resumed", epochs=1, hltm_seeds=2)
    train(tmp_path / "resumed", epochs=2, hltm_seeds=2)
    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed")
    assert [r["epoch"] for r in b] == [0, 1, 2]
    assert a[-1]["best_corr_seeds"] == b[-1]["best_corr_seeds"]
    with pytest.raises(config.ConfigError, match="hltm_seeds"):
        train(tmp_path / "resumed", epochs=3, hltm_seeds=3)


def test_multi_seed_refuses_lars(tmp_path):
    with pytest.raises(config.ConfigError, match="hltm_seeds"):
        config.validate(TINY_HLTM.replace(hltm_seeds=2, optimizer="lars",
                                          model_dir=str(tmp_path)))


@pytest.mark.parametrize("name,loss", [("hltm.cfg", "nce"), ("hltm_official.cfg", "nce_batch")])
def test_hltm_configs_validate(tmp_path, name, loss):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", name)
    cfg = config.from_flag_strings(config.read_flagfile(path)).replace(model_dir=str(tmp_path))
    config.validate(cfg)
    assert cfg.contrastive.loss == loss and cfg.hltm.seeds == 1
