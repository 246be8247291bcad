"""Scale-out on tf.distribute is exactly the single-device computation (CPU only).

The replica tests split the CPU into 2 and 4 logical devices, which must happen before
TensorFlow initialises its devices, so they run tests/distribute_worker.py in one fresh
process per replica count (module fixtures below) and assert on the differences it reports.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dualssl_tf import config
from tests import distribute_worker as worker

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "distribute_worker.py")
TOL = 1e-6        # float32: one SGD step on O(1) weights agrees to a few ulp
MOVED = 1e-3      # a step must move the weights far more than TOL, or the test is vacuous
# Logged metrics (O(1) to O(10)) of R replicas vs one device: the same float32 sums taken in
# another order (per replica, then across), a few ulp apart. Logging a replica's share of
# the loss (the defect of issue 20) is off by (1 - 1/R) x loss, orders of magnitude more.
LOG_TOL = 1e-5


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **extra)
    return env


# ---------------------------------------------------------------------------------------
# Multi-worker: two processes on localhost, MultiWorkerMirroredStrategy over gRPC.

def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_equals_single_process(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, outs = [], []
    for i in range(2):
        out = tmp_path / f"worker{i}.npz"
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen([sys.executable, WORKER, "train", str(out)],
                                      env=_env(TF_CONFIG=tf_config),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
        outs.append(out)
    try:
        for p in procs:
            _, err = p.communicate(timeout=420)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    w0, w1 = ([z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
              for z in (np.load(o) for o in outs))
    # Reference: the same STEPS global batches on one device, in this process.
    ref, ref_logs = worker.fit_single(worker.CASES["ntxent"],
                                      worker.make_batches(worker.STEPS, seed=7), with_logs=True)
    init = worker.weights(worker.build(worker.CASES["ntxent"]))
    assert worker._maxdiff(ref, init) > MOVED
    assert worker._maxdiff(w0, w1) == 0.0          # workers hold identical weights
    assert worker._maxdiff(w0, ref) < 1e-5         # = single process (3 steps of float32)
    for out in outs:                               # and both log the single process's metrics
        logs = json.loads(open(str(out) + ".logs.json").read())
        assert worker.logs_diff(logs, ref_logs) < LOG_TOL, (logs, ref_logs)
    assert ref_logs["epoch"]["loss"] > 100 * LOG_TOL


@pytest.mark.gpu
@pytest.mark.slow
def test_image_run_on_two_replicas_with_sync_bn(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, WORKER, "images", "2", str(tmp_path / "run"),
                           str(out)], env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "--sync_bn=true" in result["flags"]      # set by the trainer for 2 replicas
    assert np.isfinite(result["final"]["loss"])
    assert 0.0 <= result["final"]["probe_acc"] <= 1.0
    assert 0.0 <= result["final"]["knn_top1"] <= 1.0  # the kNN monitor on mirrored weights


# ---------------------------------------------------------------------------------------
# Bad input: one-line errors naming the flag.

def _cfg(tmp_path, **kw):
    return config.TrainConfig(model_dir=str(tmp_path / "run"), **kw)


@pytest.mark.parametrize("kw, flag", [
    (dict(strategy="gpu"), "strategy"),
    (dict(strategy="tpu"), "tpu"),
    (dict(tpu="my-tpu"), "tpu"),
    (dict(strategy="default", num_gpus=2), "num_gpus"),
    (dict(strategy="mirrored", num_gpus=-1), "num_gpus"),
    (dict(mixed_precision="fp8"), "mixed_precision"),
    (dict(mixed_precision="float16", loss="nce", temperature=0.1), "mixed_precision"),
    (dict(mixed_precision="float16", loss="tri", temperature=0.2, margin=0.5),
     "mixed_precision"),
])
def test_validate_rejects(tmp_path, kw, flag):
    with pytest.raises(config.ConfigError) as e:
        config.validate(_cfg(tmp_path, **kw))
    assert e.value.flag == flag
    assert "\n" not in str(e.value)


def test_float16_threshold_is_exp_range(tmp_path):
    # e^(2/tau) <= 65504  <=>  tau >= 2 / ln(65504) = 0.18034; the message's bound passes.
    with pytest.raises(config.ConfigError) as e:
        config.validate(_cfg(tmp_path, mixed_precision="float16", temperature=0.18))
    bound = float(str(e.value).rsplit(">= ", 1)[1])
    assert bound == 0.181
    config.validate(_cfg(tmp_path, mixed_precision="float16", temperature=bound))
    config.validate(_cfg(tmp_path, mixed_precision="bfloat16", temperature=0.1))
    config.validate(_cfg(tmp_path, mixed_precision="float16", loss="simp"))


def test_multi_worker_needs_tf_config(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(config.ConfigError, match="--strategy: multi_worker needs the TF_CONFIG"):
        config.validate(_cfg(tmp_path, strategy="multi_worker"))
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": '
                       '{"type": "worker", "index": 3}}')
    with pytest.raises(config.ConfigError, match="not a valid cluster spec"):
        config.validate(_cfg(tmp_path, strategy="multi_worker"))
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": '
                       '{"type": "worker", "index": 1}}')
    config.validate(_cfg(tmp_path, strategy="multi_worker"))


def test_tool_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"),
                           "--strategy=tpu", f"--model_dir={tmp_path / 'run'}"],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "train.py: error: --tpu: --strategy=tpu needs --tpu=NAME, "
        "--tpu=grpc://HOST:8470 or --tpu=local"]
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------
# distribute.py library pieces (one device in this process).

def test_make_strategy_errors(monkeypatch):
    from dualssl_tf.run import distribute
    with pytest.raises(config.ConfigError, match="--tpu: .*needs --tpu"):
        distribute.make_strategy("tpu")
    with pytest.raises(config.ConfigError, match="--tpu: cannot reach TPU at grpc://127.0.0.1"):
        distribute.make_strategy("tpu", tpu=f"grpc://127.0.0.1:{_free_ports(1)[0]}")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(config.ConfigError, match="--strategy: multi_worker needs"):
        distribute.make_strategy("multi_worker")
    with pytest.raises(config.ConfigError, match="--num_gpus: asked for 64 GPUs"):
        distribute.make_strategy("mirrored", num_gpus=64)
    assert distribute.make_strategy("default").num_replicas_in_sync == 1


def test_per_replica_batch_and_seeds():
    import tensorflow as tf
    from dualssl_tf import cross_replica
    from dualssl_tf.run import distribute
    assert distribute.per_replica_batch_size(256, 8) == 32
    with pytest.raises(config.ConfigError, match="--batch_size: global batch 100 .* 3 "
                       r"replicas; use a multiple of 3 \(e.g. 99 or 102\)"):
        distribute.per_replica_batch_size(100, 3)
    ctx = [tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=i,
                                      num_replicas_in_sync=8) for i in range(4)]
    seeds = [cross_replica.replica_seed(5, c) for c in ctx]
    assert len(set(seeds)) == 4 and all(0 <= s < 2 ** 31 for s in seeds)
    assert cross_replica.replica_seed(5, tf.distribute.InputContext()) == 5  # one pipeline


def test_hltm_per_replica_data_differs_across_hosts():
    import tensorflow as tf
    from dualssl_tf.tasks.hltm import task as hltm
    cfg = config.TrainConfig(hltm_depth=3, batch_size=8, hltm_eval_samples=16)
    exp = hltm.build(cfg)
    ctx = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                      num_replicas_in_sync=4) for i in range(2)]
    first = [next(iter(exp.make_data(2, c))) for c in ctx]
    assert first[0]["view1"].shape == (2, 8) and first[0]["negatives"].shape == (2, 1, 8)
    a, b = (np.concatenate([f["view1"], f["view2"]]) for f in first)
    assert not np.array_equal(a, b)
    # Resuming at global step 3 skips 3 * (4 replicas / 2 pipelines) per-replica batches.
    resumed = hltm.build(cfg, start_step=3).make_data(2, ctx[0])
    fresh = iter(exp.make_data(2, ctx[0]))
    for _ in range(6):
        next(fresh)
    np.testing.assert_array_equal(next(iter(resumed))["view1"], next(fresh)["view1"])


def test_cross_replica_helpers_on_one_replica():
    import tensorflow as tf
    from dualssl_tf import cross_replica
    z1, z2 = tf.ones([3, 2]), tf.zeros([3, 2])
    a, b, offset = cross_replica.cross_replica_candidates(z1, z2)
    assert a is z1 and b is z2 and offset == 0
    x = tf.constant([[1.0, 2.0], [3.0, 6.0]])
    assert float(cross_replica.cross_replica_mean(x)) == 3.0


# ---------------------------------------------------------------------------------------
# XLA: the train step compiles (TPU stand-in) and equals the non-XLA step.

def _tree_model(loss, jit):
    import keras
    from dualssl_tf.methods.contrastive import ContrastiveMethod
    from dualssl_tf.models.tree_net import TreeNet
    keras.utils.set_random_seed(3)
    net = TreeNet(depth=3, num_children=2, hid=4)
    net(np.zeros([1, 8], np.float32))
    model = ContrastiveMethod(net, loss=loss, temperature=0.5, margin=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=jit,
                  run_eagerly=not jit)
    return model


def _one_step(model, batch):
    import tensorflow as tf
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1,
                        steps_per_epoch=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    return [v.numpy() for v in model.trainable_variables]


JIT_CASES = [("simp", 0), ("tri", 0), ("nce", 0), ("ntxent", 0), ("cov", 0), ("nce", 2),
             ("nce_batch", 1)]


def _tree_batch(negatives, seed=0):
    rng = np.random.default_rng(seed)
    batch = {"view1": rng.random((8, 8)) < 0.5, "view2": rng.random((8, 8)) < 0.5}
    if negatives:
        batch["negatives"] = rng.random((8, negatives, 8)) < 0.5
    return {k: v.astype(np.float32) for k, v in batch.items()}


@pytest.mark.gpu
def test_every_loss_compiles_with_xla():
    """One XLA program holding every loss's forward + backward (the per-replica step,
    ContrastiveMethod.replica_loss), compiled once; its gradients equal TF's non-XLA gradients."""
    import tensorflow as tf
    models = [_tree_model(loss, jit=False) for loss, _ in JIT_CASES]
    batches = [{k: tf.constant(v) for k, v in _tree_batch(neg).items()} for _, neg in JIT_CASES]

    def grads():
        out = []
        for model, batch in zip(models, batches):
            with tf.GradientTape() as tape:
                total, _ = model.replica_loss(batch, model.forward(batch, training=True))
            out.append(tape.gradient(total, model.trainable_variables))
        return out

    # jit_compile=True is must-compile: any op XLA cannot compile raises here.
    got, want = tf.function(grads, jit_compile=True)(), grads()
    for (loss, neg), g, w in zip(JIT_CASES, got, want):
        norm = max(float(np.max(np.abs(x))) for x in w)
        assert norm > 1e-3, (loss, neg)
        assert worker._maxdiff(g, w) < 1e-5 * max(1.0, norm), (loss, neg)


@pytest.mark.gpu
@pytest.mark.slow  # XLA compiling a ResNet-18 takes minutes on a shared CPU
def test_resnet_step_compiles_with_xla():
    """Tiny ResNet-18 + projection head (BatchNorm in training mode) under XLA."""
    import keras
    import tensorflow as tf
    from dualssl_tf.methods.contrastive import ContrastiveMethod
    from dualssl_tf.models import heads, resnet
    keras.utils.set_random_seed(0)
    enc = resnet.resnet(18, image_size=16, stem="cifar", width_multiplier=0.125)
    head = heads.projection_head(enc.output_shape[-1], 16, 8)
    model = ContrastiveMethod(enc, head, loss="ntxent", temperature=0.5)
    rng = np.random.default_rng(0)
    batch = {k: tf.constant(rng.random((4, 16, 16, 3)), tf.float32) for k in ("view1", "view2")}

    def grads():
        with tf.GradientTape() as tape:
            total, _ = model.replica_loss(batch, model.forward(batch, training=True))
        return tape.gradient(total, model.trainable_variables)

    got, want = tf.function(grads, jit_compile=True)(), grads()
    scale = max(float(np.max(np.abs(w))) for w in want)
    assert scale > 1e-4
    assert worker._maxdiff(got, want) < 1e-4 * scale


@pytest.fixture
def no_op_determinism():
    """Keras refuses XLA while op determinism is on, and an earlier trainer run in this
    process may have turned it on (it is process-wide)."""
    from tensorflow.python.framework import config as tf_config
    was = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    yield
    if was:
        tf_config.enable_op_determinism()


@pytest.mark.gpu
def test_keras_jit_compiled_train_step_equals_eager(no_op_determinism):
    batch = _tree_batch(0)
    xla = _tree_model("ntxent", jit=True)
    assert xla.jit_compile is True
    got = [_one_step(xla, batch), _one_step(_tree_model("ntxent", jit=False), batch)]
    assert worker._maxdiff(*got) < 1e-5
    initial = [v.numpy() for v in _tree_model("ntxent", False).trainable_variables]
    assert worker._maxdiff(got[1], initial) > MOVED


@pytest.mark.gpu
def test_float16_step_uses_loss_scaling():
    import keras
    from dualssl_tf.methods.contrastive import ContrastiveMethod
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        enc = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
        model = ContrastiveMethod(enc, loss="ntxent", temperature=0.5)
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
        model.compile(optimizer=opt, run_eagerly=True)
        batch = worker.make_batches(1)[0]
        assert model.encoder(batch["view1"]).dtype == "float16"
        assert model(batch["view1"]).dtype == "float32"   # normalised in float32
        before = [v.numpy() for v in model.trainable_variables]
        after = _one_step(model, batch)
        assert all(v.dtype == "float32" for v in model.trainable_variables)
        assert worker._maxdiff(before, after) > 1e-4
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---------------------------------------------------------------------------------------
# Replicas on one machine (MirroredStrategy over logical CPU devices), in subprocesses.

def _start_worker(tmp_path_factory, replicas, names="", trainer=False):
    out = tmp_path_factory.mktemp(f"replicas{replicas}_") / "result.json"
    args = [sys.executable, WORKER, "equality", str(replicas), str(out), names]
    if trainer:
        args.append(str(out.parent / "run"))
    # Eager Keras steps: the same math as the traced step without minutes of tracing.
    proc = subprocess.Popen(args, env=_env(DIST_TEST_EAGER="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    return proc, out


def _finish(started):
    proc, out = started
    try:
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module", autouse=True)
def workers(request, tmp_path_factory):
    """Starts both replica counts at the module's first test, each in its own process, so
    they run while this process does the single-device tests (which come first); only
    when a selected test needs them."""
    wanted = {name for item in request.session.items
              if item.module is request.module for name in ("two", "four")
              if name in item.fixturenames}
    started = {}
    if "two" in wanted:
        started["two"] = _start_worker(tmp_path_factory, 2, trainer=True)
    if "four" in wanted:
        started["four"] = _start_worker(tmp_path_factory, 4, ",".join(worker.CASES_4))
    yield started
    for proc, _ in started.values():
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def two(workers):
    return _finish(workers["two"])


@pytest.fixture(scope="module")
def four(workers):
    return _finish(workers["four"])


def _check_logs(got, replicas):
    """The logged metrics (epoch and every batch) equal one device's, and the loss is big
    enough that logging a replica's share (loss / replicas) would fail."""
    assert got["logs_diff"] < LOG_TOL, got
    assert abs(got["logs"]["loss"]) * (1 - 1 / replicas) > 100 * LOG_TOL, got


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(worker.CASES))
def test_two_replicas_equal_one_device(two, case):
    got = two["cases"][case]
    assert two["replicas"] == 2
    assert got["moved"] > MOVED
    assert got["diff"] < TOL, got
    _check_logs(got, 2)
    if "effect" in got:  # beta / weight decay + L2 change the update: the case is real
        assert got["effect"] > MOVED


@pytest.mark.gpu
@pytest.mark.parametrize("case", worker.CASES_4)
def test_four_replicas_equal_one_device(four, case):
    got = four["cases"][case]
    assert four["replicas"] == 4
    assert got["moved"] > MOVED
    assert got["diff"] < TOL, got
    _check_logs(got, 4)


@pytest.mark.gpu
def test_probe_metrics_on_unevenly_labelled_replicas(two, four):
    # Replica 0 holds 1 labelled example of 4 (2 replicas) or none of 2 (4 replicas): the
    # probe's update and its logged loss / accuracy are still the global batch's.
    for result in (two, four):
        got = result["cases"]["ntxent_probe"]
        assert {"probe_loss", "probe_acc"} <= set(got["logs"])
        assert got["logs"]["probe_loss"] > 100 * LOG_TOL


@pytest.mark.gpu
def test_local_negatives_differ(two, four):
    # Per-replica negatives are a different loss: the same comparison must fail.
    assert two["local_negatives"] > MOVED
    assert four["local_negatives"] > MOVED


@pytest.mark.gpu
def test_sync_batchnorm_uses_global_batch_statistics(two, four):
    # Output normalised by the global mean/variance; moving statistics updated with them.
    for result in (two, four):
        stats = result["syncbn"]
        assert stats["output"] < 1e-5
        assert stats["moving_mean"] < 1e-5
        assert stats["moving_var"] < 1e-5


@pytest.mark.gpu
def test_trainer_on_two_replicas(two):
    t = two["trainer"]
    assert t["batch_size"].startswith("--batch_size: global batch 7 is not divisible by "
                                      "the 2 replicas")
    assert t["jit_compile"].startswith("--jit_compile:")
    assert not t["wrote_before_error"]
    assert np.isfinite(t["final_loss"])  # bfloat16 mixed precision on 2 replicas
    assert {"flags.txt", "metrics.jsonl", "saved_model"} <= set(t["files"])
