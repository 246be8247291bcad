"""The per-epoch covariance monitor and its --analysis_every wiring (dualssl_tf.training hands
it to the trainer)."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from dualssl_tf import config, training
from dualssl_tf.run import trainer
from dualssl_tf.analysis import sampling
from dualssl_tf.analysis.callback import CovarianceMonitor
from dualssl_tf.analysis.connections import Connection
from dualssl_tf.analysis.covariance import CovarianceOperator
from dualssl_tf.data.hltm import HLTM
from dualssl_tf.models.tree_net import TreeNet


def test_monitor_values_match_direct_operator():
    tree = HLTM(depth=2, num_children=2, delta_lower=0.8, seed=0)
    keras.utils.set_random_seed(0)
    net = TreeNet(2, 2, hid=4)
    net(np.zeros((1, 4), "float32"))
    sampler = lambda seed: sampling.hltm_augmented(tree, 16, 4, seed)[0]  # noqa: E731
    monitor = CovarianceMonitor(net, [("depth_1", True), ("depth_2", True)], sampler, seed=5)
    logs = monitor.initial_logs()
    assert set(logs) == {f"{k}/depth_1.g{g}" for k in ("op_norm", "w_norm", "op_align")
                         for g in (0, 1)} | {f"{k}/depth_2.g0" for k in
                                             ("op_norm", "w_norm", "op_align")} | {
        "op_align_mean/depth_1", "op_align_mean/depth_2"}
    # Group 1 of depth_1 computed independently, via Connection(index=1).
    x_aug = sampler(5)
    conn = Connection(net, "depth_1", index=1)
    kbar = conn(x_aug.reshape(-1, 4)).numpy().reshape(16, 4, 4, -1).mean(1)
    op = CovarianceOperator(kbar, weight_vector=net.levels[0].kernel.numpy()[1].ravel())
    assert logs["op_norm/depth_1.g1"] == pytest.approx(op.frobenius_norm(), rel=1e-5)
    assert logs["op_align/depth_1.g1"] == pytest.approx(op.alignment(k=1)[0], rel=1e-4)
    assert logs["w_norm/depth_1.g1"] == pytest.approx(
        np.linalg.norm(net.levels[0].kernel.numpy()[1]), rel=1e-6)
    assert 0.0 <= logs["op_align/depth_2.g0"] <= 1.0
    assert logs["op_norm/depth_1.g0"] > 0
    # Analysis only every 2nd epoch.
    monitor.every = 2
    epoch_logs = {}
    monitor.on_epoch_end(0, epoch_logs)
    assert epoch_logs == {}
    monitor.on_epoch_end(1, epoch_logs)
    assert "op_norm/depth_2.g0" in epoch_logs


def test_trainer_writes_analysis_into_metrics(tmp_path):
    cfg = config.TrainConfig(dataset="hltm", hltm_depth=2, hltm_hid=4, batch_size=32,
                             epochs=2, steps_per_epoch=5, hltm_samples_per_epoch=160,
                             hltm_eval_samples=200, analysis_every=1, analysis_points=8,
                             model_dir=str(tmp_path / "run"), verbose=0)
    training.train(cfg)
    lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    assert [l["epoch"] for l in lines] == [0, 1, 2]
    for line in lines:
        assert set(line["op_norm"]) == {"depth_1.g0", "depth_1.g1", "depth_2.g0"}
        assert 0.0 <= line["op_align"]["depth_2.g0"] <= 1.0
    # Weights move with training, and the logged norm follows them.
    assert lines[2]["w_norm"]["depth_2.g0"] != lines[0]["w_norm"]["depth_2.g0"]


def test_analysis_flags_validated():
    with pytest.raises(config.ConfigError, match="--analysis_points"):
        config.validate(config.TrainConfig(model_dir="/tmp/x", analysis_points=1))
    with pytest.raises(config.ConfigError, match="--analysis_every"):
        config.validate(config.TrainConfig(model_dir="/tmp/x", analysis_every=-1))


def test_trainer_refuses_analysis_without_its_monitor(tmp_path):
    """The trainer imports no analysis: run.trainer.run with --analysis_every and no monitor
    fails before writing anything, rather than training without it; dualssl_tf.train
    (dualssl_tf.training) hands it over, and asks for none with --analysis_every=0."""
    import dualssl_tf
    from dualssl_tf.analysis.callback import build_analysis_callback
    cfg = config.TrainConfig(dataset="hltm", analysis_every=2, model_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="--analysis_every: .*dualssl_tf.train"):
        trainer.run(cfg)
    assert not (tmp_path / "run").exists()
    assert training.monitors(cfg) == [build_analysis_callback]
    assert training.monitors(cfg.replace(analysis_every=0)) == []
    assert dualssl_tf.train is training.train
