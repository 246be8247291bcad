"""Subprocess half of tests/test_distribute.py and the methods' replica tests (not collected
by pytest), and :func:`launch`, which those tests call to run a half in a fresh process.

Splitting the CPU into logical devices, and MultiWorkerMirroredStrategy, must happen before
TensorFlow initialises its devices, so each configuration runs in a fresh process:

  python tests/distribute_worker.py equality R OUT.json
      CPU split into R logical devices; one SGD step under MirroredStrategy on R replicas
      vs one step on one device with the same global batch, for every loss; local
      negatives; SyncBN statistics vs the global batch. Writes max |difference| per case,
      of the variables and of the logged metrics (epoch and batch logs).
  python tests/distribute_worker.py siamese R OUT.json
      The same equality for BYOL (moving-average target), BYOL with DirectPred's predictor
      and SimSiam, SyncBN in encoder and predictor, over two steps.
  python tests/distribute_worker.py vit R OUT.json
      The same equality for a tiny ViT encoder (SimCLR, and BYOL, whose target clones it)
      on 8 x 8 images, over two steps.
  python tests/distribute_worker.py dino R OUT.json
      The same equality for DINO (moving-average teacher, global-batch centre, frozen
      last layer in step 1, local crops), SyncBN in the encoder, over two steps.
  python tests/distribute_worker.py train OUT.npz
      Multi-worker run (TF_CONFIG set by the caller) or, without TF_CONFIG, the
      single-process reference: STEPS SGD steps on fixed global batches; saves weights
      (and OUT.npz.logs.json: what fit logged).

A test imports it as ``from tests import distribute_worker as worker`` (a test module that is
its own subprocess half too, e.g. tests/methods/test_moco_distributed.py, imports it the same
way when run as a script).
"""

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SCRIPT = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(SCRIPT))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

GLOBAL_BATCH = 8      # pairs per step; divisible by 2 and 4 replicas
IN_DIM, WIDTH, OUT_DIM = 6, 16, 8
STEPS = 3             # multi-worker steps
LR = 0.5              # big enough that a wrong gradient scale moves weights visibly

# name -> ContrastiveMethod / data settings. Every loss, both negative sources, beta variants,
# weight decay + L2 regularisation, and BatchNorm (synchronised on replicas).
CASES = {
    "simp": dict(loss="simp"),
    "tri": dict(loss="tri", margin=0.2, temperature=0.5),
    "nce": dict(loss="nce", temperature=0.5),
    "ntxent": dict(loss="ntxent", temperature=0.5),
    "cov": dict(loss="cov", temperature=0.5),
    "ntxent_beta": dict(loss="ntxent", temperature=0.5, beta=0.5, base="ntxent"),
    "cov_beta": dict(loss="cov", temperature=0.5, beta=-0.5, base="cov"),
    "nce_explicit": dict(loss="nce", temperature=0.5, negatives=3),
    "tri_explicit": dict(loss="tri", temperature=0.5, negatives=1),
    "nce_batch_explicit": dict(loss="nce_batch", temperature=0.1, negatives=1),
    # alpha-CL (the pair weights are per anchor over the global batch's negatives): the
    # README recipe's p = 2, eps = 0 in-batch, the inverse form on explicit negatives.
    "alpha_cl": dict(loss="alpha_cl", temperature=0.5,
                     alpha_cl=dict(exponent=2.0, eps=0.0)),
    "alpha_cl_explicit": dict(loss="alpha_cl", temperature=0.5, negatives=3,
                              alpha_cl=dict(form="inverse", inverse_exponent=2.0)),
    "ntxent_wd_l2": dict(loss="ntxent", temperature=0.5, weight_decay=0.1, l2=0.05,
                         base="ntxent"),
    "ntxent_syncbn": dict(loss="ntxent", temperature=0.5, bn=True),
    # PyTorch's L2-in-the-gradient decay (--weight_decay_mode=coupled): added once to the
    # all-reduced gradient, not once per replica.
    "ntxent_coupled_wd": dict(loss="ntxent", temperature=0.5, weight_decay=0.1,
                              weight_decay_mode="coupled", base="ntxent"),
    # Online probe (SGD, so a wrong gradient weighting shows) on labels whose unlabelled
    # (-1) examples are spread unevenly over the replicas.
    "ntxent_probe": dict(loss="ntxent", temperature=0.5, probe=True),
}
# Cases checked on 4 replicas too (all of them on 2, to keep the test fast).
CASES_4 = ("ntxent", "cov", "nce_explicit", "nce_batch_explicit", "ntxent_wd_l2",
           "ntxent_syncbn", "ntxent_probe")
# Probe classes; the first UNLABELLED rows of every global batch are unlabelled (-1), so
# replica 0 of 2 holds 1 labelled example of 4 and replica 0 of 4 none.
CLASSES, UNLABELLED = 3, 3


def launch(script, args, out_path, eager=True):
    """Runs ``python script *args out_path`` in a fresh process and returns the JSON it wrote
    to ``out_path``; asserts it exited 0 (else fails with its stderr's tail).

    ``script``: :data:`SCRIPT` with a mode as the first of ``args`` (``siamese``, ``dino``,
    ...), or a test module that is its own subprocess half. The caller's TF_CONFIG is left
    out (no multi-worker cluster), and the step runs eagerly (``DIST_TEST_EAGER=1``) unless
    ``eager`` is False: then as a run trains it (fit's tf.function), or as the caller's own
    environment says.
    """
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    if eager:
        env["DIST_TEST_EAGER"] = "1"
    proc = subprocess.run([sys.executable, script, *map(str, args), str(out_path)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out_path) as f:
        return json.load(f)


def make_batches(n_steps, negatives=0, seed=0, labels=False):
    """Fixed global batches: list of dicts of float32 arrays [GLOBAL_BATCH, ...] (and an
    int32 ``label`` [GLOBAL_BATCH], -1 = unlabelled, with ``labels``)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_steps):
        b = {"view1": rng.normal(size=(GLOBAL_BATCH, IN_DIM)),
             "view2": rng.normal(size=(GLOBAL_BATCH, IN_DIM))}
        if negatives:
            b["negatives"] = rng.normal(size=(GLOBAL_BATCH, negatives, IN_DIM))
        b = {k: v.astype(np.float32) for k, v in b.items()}
        if labels:
            b["label"] = rng.integers(0, CLASSES, GLOBAL_BATCH).astype(np.int32)
            b["label"][:UNLABELLED] = -1
        out.append(b)
    return out


def case_batches(case, n_steps=1, seed=0):
    return make_batches(n_steps, case.get("negatives", 0), seed, labels=case.get("probe"))


def build(case, gather_fn=None):
    """Tiny MLP ContrastiveMethod + SGD, built in the current strategy scope with fixed init."""
    import keras
    from dualssl_tf import cross_replica
    from dualssl_tf.methods.contrastive import ContrastiveMethod
    from dualssl_tf.models import heads

    keras.utils.set_random_seed(1)
    reg = keras.regularizers.L2(case["l2"]) if case.get("l2") else None
    layers = [keras.Input((IN_DIM,)), keras.layers.Dense(WIDTH, kernel_regularizer=reg)]
    if case.get("bn"):
        layers.append(keras.layers.BatchNormalization(
            momentum=0.5, synchronized=cross_replica.use_sync_bn()))
    layers += [keras.layers.ReLU(), keras.layers.Dense(OUT_DIM)]
    encoder = keras.Sequential(layers)
    # The online probe of the image task: its standardising BatchNorm synced like the
    # encoder's, so the probe's update and logs are the global batch's on every replica count.
    probe = (heads.LinearProbe(CLASSES, synchronized=cross_replica.use_sync_bn(), name="probe")
             if case.get("probe") else None)
    model = ContrastiveMethod(encoder, None, loss=case["loss"],
                              temperature=case.get("temperature", 0.5),
                              margin=case.get("margin", 0.0), beta=case.get("beta", 0.0),
                              gather_fn=gather_fn, probe=probe,
                              alpha_cl=case.get("alpha_cl"))
    if probe is not None:
        probe.build((None, OUT_DIM))
    if case.get("weight_decay_mode") == "coupled":
        from dualssl_tf.optim import schedules
        optimizer = schedules.build_optimizer("sgd", LR, momentum=0.0,
                                              weight_decay=case["weight_decay"],
                                              weight_decay_mode="coupled")
    else:
        optimizer = keras.optimizers.SGD(LR, weight_decay=case.get("weight_decay") or None)
    model.compile(optimizer=optimizer,
                  probe_optimizer=keras.optimizers.SGD(LR) if probe is not None else None,
                  run_eagerly=os.environ.get("DIST_TEST_EAGER") == "1")
    return model


# name -> BYOLMethod / SimSiamMethod settings (tests/methods/test_byol_distributed.py).
SIAMESE_CASES = {
    "byol": dict(method="byol"),
    "byol_directpred": dict(method="byol", predictor="directpred"),
    "simsiam": dict(method="simsiam"),
    # The predictor at 10x a fixed rate, the rest on a decaying schedule, with momentum.
    "simsiam_pred_lr": dict(method="simsiam", pred_lr_mult=10.0, pred_fixed_lr=True),
}
SIAMESE_STEPS = 2     # the second step's target is the moving average of the first


def build_siamese(case, gather_fn=None):
    """Tiny MLP encoder + head with (Sync)BN, BYOL or SimSiam + SGD, fixed init."""
    import keras
    from dualssl_tf import cross_replica
    from dualssl_tf.methods.byol import BYOLMethod, SimSiamMethod

    keras.utils.set_random_seed(1)
    sync = cross_replica.use_sync_bn()
    encoder = keras.Sequential([keras.Input((IN_DIM,)), keras.layers.Dense(WIDTH),
                                keras.layers.BatchNormalization(momentum=0.5,
                                                                synchronized=sync),
                                keras.layers.ReLU()])
    head = keras.Sequential([keras.Input((WIDTH,)), keras.layers.Dense(OUT_DIM)])
    cls = BYOLMethod if case["method"] == "byol" else SimSiamMethod
    extra = (dict(base_momentum=0.5, final_momentum=0.9, total_steps=SIAMESE_STEPS)
             if case["method"] == "byol" else {})
    model = cls(encoder, head, predictor=case.get("predictor", "mlp"), pred_hidden_dim=WIDTH,
                sync_bn=sync, pred_lr_mult=case.get("pred_lr_mult", 1.0),
                pred_fixed_lr=case.get("pred_fixed_lr", False), **extra)
    optimizer = keras.optimizers.SGD(LR)
    if "pred_lr_mult" in case:
        from dualssl_tf.optim import schedules
        optimizer = schedules.build_optimizer(
            "sgd", schedules.WarmupCosineDecay(LR, SIAMESE_STEPS + 1), momentum=0.9,
            group=model.rate_group())
    model.compile(optimizer=optimizer,
                  run_eagerly=os.environ.get("DIST_TEST_EAGER") == "1")
    return model


DINO_LOCAL = 2        # local crops per image in the DINO case (same size as the globals)


def dino_batches(n_steps, seed=13):
    """make_batches plus ``local_views`` [GLOBAL_BATCH, DINO_LOCAL, IN_DIM]."""
    rng = np.random.default_rng(seed + 1)
    out = make_batches(n_steps, seed=seed)
    for b in out:
        b["local_views"] = rng.normal(size=(GLOBAL_BATCH, DINO_LOCAL, IN_DIM)).astype(
            np.float32)
    return out


def build_dino(case, gather_fn=None):
    """Tiny MLP encoder with (Sync)BN, a DINO head, SGD with momentum; the last layer
    frozen for the first step (steps_per_epoch=1), the teacher temperature warming up."""
    import keras
    from dualssl_tf import cross_replica
    from dualssl_tf.methods.dino import DINOMethod, dino_head

    keras.utils.set_random_seed(1)
    sync = cross_replica.use_sync_bn()
    encoder = keras.Sequential([keras.Input((IN_DIM,)), keras.layers.Dense(WIDTH),
                                keras.layers.BatchNormalization(momentum=0.5,
                                                                synchronized=sync),
                                keras.layers.ReLU()])
    head = dino_head(WIDTH, out_dim=OUT_DIM, hidden_dim=WIDTH, bottleneck_dim=4,
                     num_layers=2, sync_bn=sync)
    model = DINOMethod(encoder, head, total_steps=SIAMESE_STEPS, steps_per_epoch=1,
                       warmup_teacher_temp_epochs=2, base_momentum=0.5,
                       freeze_last_layer=1)
    # A tenth of LR: at LR the head's bottleneck bias grows to O(1000) in two steps.
    model.compile(optimizer=keras.optimizers.SGD(LR / 10, momentum=0.9),
                  run_eagerly=os.environ.get("DIST_TEST_EAGER") == "1")
    return model


def weights(model):
    """All variables (trainable and BN moving statistics), as numpy, in a fixed order."""
    return [np.array(v.numpy()) for v in model.variables if "iteration" not in v.path
            and "learning_rate" not in v.path]


def _fit(model, ds, steps):
    """model.fit for ``steps`` steps; returns what it logged: ``{"epoch": {name: value},
    "batches": [{name: value} per step]}`` (the epoch's metrics and each batch's logs, as
    callbacks, metrics.jsonl and the progress bar see them)."""
    import keras
    batches = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append({k: float(v) for k, v in (logs or {}).items()})

    history = model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[Record()])
    return {"epoch": {k: float(v[-1]) for k, v in history.history.items()},
            "batches": batches}


def logs_diff(a, b):
    """Max |difference| of two :func:`_fit` logs (inf when their names differ)."""
    pairs = [(a["epoch"], b["epoch"])] + list(zip(a["batches"], b["batches"]))
    if len(a["batches"]) != len(b["batches"]) or any(set(x) != set(y) for x, y in pairs):
        return float("inf")
    return max(abs(x[k] - y[k]) for x, y in pairs for k in x)


def fit_single(case, batches, builder=None, with_logs=False):
    """Weights after training on ``batches`` on one device (and ``_fit``'s logs)."""
    import tensorflow as tf
    model = (builder or build)(case)
    ds = tf.data.Dataset.from_tensor_slices(_stack(batches))
    logs = _fit(model, ds, len(batches))
    return (weights(model), logs) if with_logs else weights(model)


def fit_replicas(strategy, case, batches, gather_fn, builder=None, with_logs=False):
    """Trains under ``strategy`` with distribute.distributed_dataset; replica r of step t
    gets rows [r*b, (r+1)*b) of global batch t (one pipeline: consecutive elements go to
    consecutive replicas; several pipelines: pipeline p reads its own rows)."""
    import tensorflow as tf
    from dualssl_tf.run import distribute

    with strategy.scope():
        model = (builder or build)(case, gather_fn)
    r = strategy.num_replicas_in_sync

    def make(per_replica, ctx):
        per_pipeline = r // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * per_pipeline
        pieces = [{k: v[(first + i) * per_replica:(first + i + 1) * per_replica]
                   for k, v in b.items()} for b in batches for i in range(per_pipeline)]
        return tf.data.Dataset.from_tensor_slices(_stack(pieces))

    ds = distribute.distributed_dataset(strategy, GLOBAL_BATCH, make)
    logs = _fit(model, ds, len(batches))
    return (weights(model), logs) if with_logs else weights(model)


def _stack(dicts):
    return {k: np.stack([d[k] for d in dicts]) for k in dicts[0]}


def _maxdiff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def syncbn_check(strategy):
    """Max |difference| of SyncBN outputs / moving statistics vs the global batch."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(GLOBAL_BATCH, 5)) * [1, 2, 3, 4, 5] + [0, 1, -1, 2, 5]
         ).astype(np.float32)
    r = strategy.num_replicas_in_sync
    b = GLOBAL_BATCH // r
    with strategy.scope():
        bn = keras.layers.BatchNormalization(momentum=0.5, epsilon=1e-3, synchronized=True)
        bn.build((None, 5))

    @tf.function
    def step():
        ctx = tf.distribute.get_replica_context()
        i = ctx.replica_id_in_sync_group
        return bn(tf.gather(x, tf.range(i * b, (i + 1) * b)), training=True)

    out = strategy.run(step)
    y = np.concatenate([t.numpy() for t in strategy.experimental_local_results(out)])
    mean, var = x.mean(0), x.var(0)
    want = (x - mean) / np.sqrt(var + 1e-3)
    return {"output": float(np.max(np.abs(y - want))),
            "moving_mean": float(np.max(np.abs(bn.moving_mean.numpy() - 0.5 * mean))),
            "moving_var": float(np.max(np.abs(bn.moving_variance.numpy()
                                              - (0.5 + 0.5 * var))))}


def trainer_checks(model_dir):
    """trainer.run under the active device split: a tiny HLTM run on all replicas with
    bfloat16 mixed precision, and the one-line errors that need the replica count."""
    import keras
    from dualssl_tf import config
    from dualssl_tf.run import trainer

    def cfg(**kw):
        base = dict(dataset="hltm", strategy="mirrored", loss="ntxent", temperature=0.5,
                    batch_size=8, epochs=1, steps_per_epoch=2, hltm_depth=2, hltm_hid=4,
                    hltm_samples_per_epoch=64, hltm_eval_samples=64, verbose=0,
                    model_dir=model_dir, negatives="batch")
        base.update(kw)
        return config.TrainConfig(**base)

    out = {}
    for name, kw in {"batch_size": dict(batch_size=7),
                     "jit_compile": dict(jit_compile=True)}.items():
        try:
            trainer.run(cfg(**kw))
            out[name] = "no error"
        except config.ConfigError as e:
            out[name] = str(e)
    out["wrote_before_error"] = os.path.exists(model_dir)
    try:
        result = trainer.run(cfg(mixed_precision="bfloat16"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    out["final_loss"] = result["final"]["loss"]
    out["files"] = sorted(os.listdir(model_dir))
    return out


def split_devices(replicas):
    """R logical devices for MirroredStrategy (``make_strategy("mirrored")`` takes the
    logical GPUs when there are any, else the logical CPUs): the first GPU split into R
    logical GPUs of DIST_TEST_GPU_MB MiB each (default 2048) on a GPU machine (the
    accelerator check, ``pytest -m gpu``), else the CPU split into R. DIST_TEST_DEVICE=cpu
    keeps a GPU machine on the CPU split."""
    import tensorflow as tf
    replicas = int(replicas)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and os.environ.get("DIST_TEST_DEVICE", "") != "cpu":
        mb = int(os.environ.get("DIST_TEST_GPU_MB", "2048"))
        tf.config.set_visible_devices(gpus[0], "GPU")
        tf.config.experimental.enable_tensor_float_32_execution(False)  # float32 = float32
        tf.config.set_logical_device_configuration(
            gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=mb)] * replicas)
        return
    if gpus:
        tf.config.set_visible_devices([], "GPU")
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)


def equality(replicas, out_path, names="", model_dir=""):
    """One process per replica count: two MirroredStrategy objects over different device
    sets in one process collide on collective group keys."""
    replicas = int(replicas)
    split_devices(replicas)
    from dualssl_tf import cross_replica
    from dualssl_tf.run import distribute

    strategy = distribute.make_strategy("mirrored")   # the logical devices of split_devices
    result = {"replicas": strategy.num_replicas_in_sync, "cases": {}}
    refs = {}
    for name in (names.split(",") if names else CASES):
        case = CASES[name]
        batches = case_batches(case)
        ref, ref_logs = fit_single(case, batches, with_logs=True)
        refs[name] = ref
        got, got_logs = fit_replicas(strategy, case, batches,
                                     cross_replica.cross_replica_candidates, with_logs=True)
        result["cases"][name] = {"diff": _maxdiff(ref, got),
                                 # how far one step moves the weights (scale of the test)
                                 "moved": _maxdiff(ref, weights(build(case))),
                                 "logs_diff": logs_diff(ref_logs, got_logs),
                                 "logs": ref_logs["epoch"], "replica_logs": got_logs["epoch"]}
        if "base" in case:  # the variant (beta, decay) really changes the update
            base = refs.get(case["base"]) or fit_single(CASES[case["base"]], batches)
            result["cases"][name]["effect"] = _maxdiff(ref, base)
    case = CASES["ntxent"]
    batches = make_batches(1)
    result["local_negatives"] = _maxdiff(fit_single(case, batches),
                                         fit_replicas(strategy, case, batches, None))
    result["syncbn"] = syncbn_check(strategy)
    if model_dir:
        result["trainer"] = trainer_checks(model_dir)
    with open(out_path, "w") as f:
        json.dump(result, f)


def siamese(replicas, out_path):
    """BYOL / DirectPred / SimSiam: SIAMESE_STEPS SGD steps on R replicas vs one device."""
    split_devices(replicas)
    from dualssl_tf.run import distribute

    strategy = distribute.make_strategy("mirrored")
    result = {"replicas": strategy.num_replicas_in_sync, "cases": {}}
    for name, case in SIAMESE_CASES.items():
        batches = make_batches(SIAMESE_STEPS, seed=11)
        ref, ref_logs = fit_single(case, batches, build_siamese, with_logs=True)
        got, got_logs = fit_replicas(strategy, case, batches, None, build_siamese,
                                     with_logs=True)
        result["cases"][name] = {"diff": _maxdiff(ref, got),
                                 "moved": _maxdiff(ref, weights(build_siamese(case))),
                                 "variables": len(ref),
                                 "logs_diff": logs_diff(ref_logs, got_logs),
                                 "logs": ref_logs["epoch"]}
    with open(out_path, "w") as f:
        json.dump(result, f)


def dino(replicas, out_path):
    """DINO: SIAMESE_STEPS SGD steps on R replicas vs one device (teacher, centre and
    logged metrics included)."""
    split_devices(replicas)
    from dualssl_tf.run import distribute

    strategy = distribute.make_strategy("mirrored")
    batches = dino_batches(SIAMESE_STEPS)
    ref, ref_logs = fit_single({}, batches, build_dino, with_logs=True)
    got, got_logs = fit_replicas(strategy, {}, batches, None, build_dino, with_logs=True)
    model = build_dino({})
    names = [v.path for v in model.variables if "iteration" not in v.path
             and "learning_rate" not in v.path]
    result = {"replicas": strategy.num_replicas_in_sync,
              # relative to each variable's scale: the bottleneck's bias grows to O(100)
              # (the L2 normalisation after it makes its gradient scale-free)
              "diff": max(float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(a))))
                          for a, b in zip(ref, got)),
              "moved": _maxdiff(ref, weights(model)),
              "center_moved": float(np.max(np.abs(ref[names.index("center/center")]))),
              "logs_diff": logs_diff(ref_logs, got_logs), "logs": ref_logs["epoch"],
              "variables": len(ref)}
    with open(out_path, "w") as f:
        json.dump(result, f)


def train(out_path):
    """Multi-worker (TF_CONFIG set) or single-process reference training."""
    import tensorflow as tf
    from dualssl_tf import cross_replica
    from dualssl_tf.run import distribute

    case = CASES["ntxent"]
    batches = make_batches(STEPS, seed=7)
    if os.environ.get("TF_CONFIG"):
        strategy = distribute.make_strategy("multi_worker")
        got, logs = fit_replicas(strategy, case, batches, cross_replica.cross_replica_candidates,
                                 with_logs=True)
    else:
        got, logs = fit_single(case, batches, with_logs=True)
    del tf
    np.savez(out_path, *got)
    with open(str(out_path) + ".logs.json", "w") as f:
        json.dump(logs, f)


def images(replicas, model_dir, out_path):
    """trainer.run on generated images (tiny ResNet + head with SyncBN, online probe) on
    ``replicas`` logical CPU devices; writes the final logs and flags."""
    split_devices(replicas)
    from dualssl_tf import config
    from dualssl_tf.run import trainer
    cfg = config.TrainConfig(
        dataset="generated_images", strategy="mirrored", loss="ntxent", temperature=0.5,
        batch_size=8, epochs=1, steps_per_epoch=2, image_size=16, generated_examples=64,
        width_multiplier=0.125, proj_hidden_dim=16, proj_dim=8, verbose=0,
        model_dir=model_dir, learning_rate=0.1)
    result = trainer.run(cfg)
    with open(os.path.join(model_dir, "flags.txt")) as f:
        flags = f.read().split()
    with open(out_path, "w") as f:
        json.dump({"final": result["final"], "flags": flags}, f)


VIT_SIDE = 8   # 8 x 8 images, patch 4: 4 patch tokens + [CLS]


def build_vit(case, gather_fn=None):
    """A depth-2, width-8 ViT encoder + head, SimCLR (NT-Xent) or BYOL, SGD, fixed init."""
    import keras
    from dualssl_tf.methods.byol import BYOLMethod
    from dualssl_tf.methods.contrastive import ContrastiveMethod
    from dualssl_tf.models import vit

    keras.utils.set_random_seed(1)
    encoder = vit.vit("vit_tiny", image_size=VIT_SIDE, patch_size=4, depth=2, width=8,
                      heads=2)
    if case["method"] == "dino":
        return build_vit_dino(encoder)
    head = keras.Sequential([keras.Input((8,)), keras.layers.Dense(OUT_DIM)])
    if case["method"] == "byol":
        # No BatchNorm in the predictor: a fresh ViT's [CLS] outputs are nearly equal across
        # examples, so a batch variance of ~0 would amplify the replicas' different
        # summation order far past rounding (the MLP cases of siamese test SyncBN).
        model = BYOLMethod(encoder, head, predictor="mlp", pred_hidden_dim=WIDTH,
                           pred_bn=False, base_momentum=0.5, final_momentum=0.9,
                           total_steps=2)
    else:
        model = ContrastiveMethod(encoder, head, loss="ntxent", temperature=0.5,
                                  gather_fn=gather_fn)
    model.compile(optimizer=keras.optimizers.SGD(LR),
                  run_eagerly=os.environ.get("DIST_TEST_EAGER") == "1")
    return model


def build_vit_dino(encoder):
    """DINO on the tiny ViT with local crops of half its side (positions resampled), SGD
    with momentum, DINO's weight-decay cosine and per-variable clipping at 0.01 (below
    every gradient's norm, so it acts: it must clip the global batch's gradient, not a
    replica's share)."""
    from dualssl_tf.methods.dino import DINOMethod, dino_head
    from dualssl_tf.optim import schedules
    from dualssl_tf.optim.weight_decay import CosineWeightDecay

    head = dino_head(8, out_dim=OUT_DIM, hidden_dim=8, bottleneck_dim=4, num_layers=2)
    model = DINOMethod(encoder, head, total_steps=2, steps_per_epoch=1,
                       warmup_teacher_temp_epochs=0, base_momentum=0.5, freeze_last_layer=0)
    model.compile(optimizer=schedules.build_optimizer(
        "sgd", LR, momentum=0.9, weight_decay=0.04,
        weight_decay_schedule=CosineWeightDecay(0.04, 0.4, 2), clip_norm=0.01),
        run_eagerly=os.environ.get("DIST_TEST_EAGER") == "1")
    return model


def vit(replicas, out_path):
    """SimCLR, BYOL and DINO (with smaller local crops) on a tiny ViT: 2 SGD steps on R
    replicas vs one device."""
    split_devices(replicas)
    from dualssl_tf import cross_replica
    from dualssl_tf.run import distribute

    strategy = distribute.make_strategy("mirrored")
    rng = np.random.default_rng(5)
    batches = [{k: rng.uniform(size=(GLOBAL_BATCH, VIT_SIDE, VIT_SIDE, 3)).astype(np.float32)
                for k in ("view1", "view2")} for _ in range(2)]
    result = {"replicas": strategy.num_replicas_in_sync, "cases": {}}
    for name in ("simclr", "byol", "dino"):
        case = {"method": name}
        if name == "dino":
            for b in batches:
                b["local_views"] = rng.uniform(size=(GLOBAL_BATCH, 2, VIT_SIDE // 2,
                                                     VIT_SIDE // 2, 3)).astype(np.float32)
        ref, ref_logs = fit_single(case, batches, build_vit, with_logs=True)
        got, got_logs = fit_replicas(strategy, case, batches,
                                     cross_replica.cross_replica_candidates, build_vit,
                                     with_logs=True)
        result["cases"][name] = {"diff": _maxdiff(ref, got),
                                 "moved": _maxdiff(ref, weights(build_vit(case))),
                                 "logs_diff": logs_diff(ref_logs, got_logs),
                                 "logs": ref_logs["epoch"]}
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    {"equality": equality, "train": train, "images": images,
     "siamese": siamese, "vit": vit, "dino": dino}[sys.argv[1]](*sys.argv[2:])
