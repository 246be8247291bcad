"""The training run behind tools/train.py: TrainConfig in, model_dir out."""

import dataclasses
import json
import os

import keras
import tensorflow as tf

from dualssl_tf import (callbacks, checkpointing, config, distribute, experiments,
                        runfiles)
from dualssl_tf.evaluation import export
from dualssl_tf.dual import DualModel
from dualssl_tf.optim import schedules


def build_optimizer(cfg, steps_per_epoch=1):
    """Keras optimizer named by ``cfg.optimizer`` (sgd | adam | adamw | lars) with the
    run's learning-rate scaling, warmup and schedule (:mod:`dualssl_tf.optim`)."""
    lr = schedules.learning_rate_schedule(
        cfg.learning_rate, cfg.batch_size, cfg.lr_scaling, cfg.lr_schedule,
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)))
    return schedules.build_optimizer(cfg.optimizer, lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay, eta=cfg.lars_eta)


def _select_negatives(cfg, dataset):
    """Applies ``--negatives``: keep explicit negatives, or drop them for in-batch ones."""
    has_explicit = "negatives" in dataset.element_spec
    mode = cfg.negatives
    if mode == "auto":
        mode = "explicit" if has_explicit else "batch"
    if mode == "explicit" and not has_explicit:
        raise config.ConfigError("negatives", f"dataset {cfg.dataset!r} has no explicit "
                                 "negatives; use --negatives=batch (SimCLR in-batch)")
    if mode == "batch" and has_explicit:
        dataset = dataset.map(lambda b: {k: v for k, v in b.items() if k != "negatives"})
    return dataset


def _check_not_empty(cfg, exp, dataset):
    """An empty training set is a bad setting: reject it before anything is written.

    Uses the static cardinality (free; 0 for e.g. ``empty.repeat()``); a pipeline whose size
    is unknown (filtered) and turns out empty ends fit early with Keras' "ran out of data".
    """
    if exp.steps_per_epoch < 1 or int(dataset.cardinality()) == 0:
        raise config.ConfigError("dataset", f"{cfg.dataset!r} yields no batch of "
                                 f"--batch_size={cfg.batch_size}; check --data_dir and the "
                                 "dataset's files, or lower --batch_size")


def build_model(cfg, exp):
    """DualModel + optimizer; call inside ``strategy.scope()``."""
    gather_fn = None if cfg.local_negatives else distribute.cross_replica_candidates
    if exp.probe is not None and not exp.probe.built:
        # Built now, so the optimizer and the checkpoints know its variables from step 0.
        rep = exp.encoder(tf.zeros([1, *exp.input_shape]), training=False)
        exp.probe.build(rep.shape)
    model = DualModel(exp.encoder, exp.head, loss=cfg.loss, temperature=cfg.temperature,
                      margin=max(cfg.margin, 0.0),  # -1 = not given; only tri uses it
                      beta=cfg.beta, norm_eps=exp.norm_eps,
                      probe=exp.probe, gather_fn=gather_fn, name="dual")
    optimizer = build_optimizer(cfg, exp.steps_per_epoch)
    if cfg.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # dynamic loss scale
    # TPUStrategy compiles the replica step with XLA itself; Keras' jit_compile is for
    # one device (multi-replica mirrored + jit_compile is rejected in run()).
    model.compile(optimizer=optimizer, steps_per_execution=cfg.steps_per_execution,
                  jit_compile=cfg.jit_compile and cfg.strategy != "tpu")
    return model


def run(cfg):
    """Trains per ``cfg`` and writes into ``cfg.model_dir``; resumes a run found there.

    Writes ``flags.txt`` (a re-usable flagfile), ``run.json`` (metadata such as the HLTM
    polarities), ``metrics.jsonl`` (epoch 0 = at initialisation), TensorBoard logs under
    ``logs/``, checkpoints under ``checkpoints/`` (every ``cfg.checkpoint_every`` epochs),
    the encoder SavedModel under ``saved_model/`` and, last, ``finished.json``. Re-running
    continues from the newest readable checkpoint (see :mod:`dualssl_tf.checkpointing`);
    re-running a finished run does nothing.

    Raises ConfigError before anything is written if a setting is bad, and
    checkpointing.NonFiniteLossError if the loss turns NaN/Inf (checkpoints and export of
    the last good epoch are left as they were).
    Returns dict with ``initial`` and ``final`` logs, a printable ``summary`` and
    ``finished`` (True when there was nothing left to do).
    """
    config.validate(cfg)
    _check_remote_model_dir(cfg)
    ckpts = checkpointing.RunCheckpoints(cfg.model_dir, max_to_keep=cfg.keep_checkpoints)
    done = ckpts.finished_epochs()
    if done is not None and done >= cfg.epochs:
        return {"initial": {}, "final": {}, "finished": True,
                "summary": f"Run in {cfg.model_dir} is already finished ({done} epochs); "
                           "nothing to do (raise --epochs to train further)."}
    strategy = distribute.make_strategy(cfg.strategy, cfg.tpu, cfg.num_gpus)
    replicas = strategy.num_replicas_in_sync
    if cfg.jit_compile and replicas > 1 and cfg.strategy != "tpu":
        raise config.ConfigError("jit_compile", f"Keras compiles the whole step for one "
                                 f"device; with {replicas} {cfg.strategy} replicas use "
                                 "--jit_compile=false (TPUs always compile with XLA)")
    if replicas > 1 and not cfg.sync_bn:  # BatchNorm statistics of the global batch
        cfg = dataclasses.replace(cfg, sync_bn=True)
    distribute.set_precision(cfg.mixed_precision)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic and not cfg.jit_compile:
        # Keras refuses XLA under op determinism; an XLA-compiled CPU step is one fixed
        # program, repeatable on its own (two jit runs give byte-identical metrics.jsonl).
        tf.config.experimental.enable_op_determinism()
    found = ckpts.find_latest()
    start_epoch, start_step = (found["epoch"], found["step"]) if found else (0, 0)
    with strategy.scope():  # networks, DualModel and optimizer all live on the replicas
        exp = experiments.build(cfg, start_step=start_step)
    _check_not_empty(cfg, exp, exp.train_data)
    train_data = distribute.train_input(strategy, cfg.batch_size, exp,
                                        lambda ds: _select_negatives(cfg, ds))
    if cfg.analysis_every:
        # Imported only on request: training never depends on the analysis package.
        from dualssl_tf.analysis.callback import build_analysis_callback
        exp.callbacks.append(build_analysis_callback(cfg, exp))

    # Nothing is written before every setting has been checked and the data built.
    # Every run file goes through runfiles (tf.io.gfile), so model_dir may be gs://;
    # whole-file writes are temp + rename: a kill never leaves half a flags.txt.
    model_dir = cfg.model_dir
    runfiles.makedirs(model_dir)
    runfiles.write_text_atomic(os.path.join(model_dir, "flags.txt"), config.to_flagfile(cfg))
    runfiles.write_text_atomic(os.path.join(model_dir, "run.json"), json.dumps(exp.metadata))

    with strategy.scope():
        model = build_model(cfg, exp)
        ckpts.attach(model)
    logger = callbacks.MetricsLogger(os.path.join(model_dir, "metrics.jsonl"))
    if found:
        with strategy.scope():
            ckpts.restore(found)
        ckpts.clear_finished()
        initial = _flatten(checkpointing.truncate_metrics(logger.path, start_epoch) or {})
        print(f"Resuming {model_dir} at epoch {start_epoch} (step {start_step}) "
              f"from {found['path']}")
    else:
        checkpointing.reset_metrics(logger.path)
        initial = {}
        for cb in exp.callbacks:
            if hasattr(cb, "initial_logs"):
                initial.update(cb.initial_logs())
        logger.log_initial(initial)
    # Events of epochs past the checkpoint (a kill before the next one) would be written
    # again: cut them, as metrics.jsonl is cut. A resumed run's graph is already there.
    log_dir = os.path.join(model_dir, "logs")
    checkpointing.truncate_events(log_dir, start_epoch - 1)
    board = keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=not found)
    guard = checkpointing.NonFiniteLossGuard(cfg.steps_per_execution)
    saver = ckpts.callback(cfg.checkpoint_every, cfg.epochs)  # after logger: see Checkpointer
    model.fit(train_data, epochs=cfg.epochs, steps_per_epoch=exp.steps_per_epoch,
              initial_epoch=start_epoch, verbose=cfg.verbose, shuffle=False,
              callbacks=[guard] + exp.callbacks + [logger, saver, board])
    final = _last_logged(logger.path)
    export.export_encoder(
        exp.encoder, exp.head, os.path.join(model_dir, "saved_model"), exp.input_shape,
        model_card=export.run_model_card(cfg, exp.metadata, final),
        intermediate_layers=export.default_intermediates(exp.encoder))
    ckpts.mark_finished(max(cfg.epochs, start_epoch))
    summary = exp.summarize(initial, final) if exp.summarize and initial else ""
    return {"initial": initial, "final": final, "summary": summary, "finished": False}


def _check_remote_model_dir(cfg):
    """A URL ``--model_dir`` (gs://) is checked here, config.py being TensorFlow-free:
    writable (a probe file) and holding no run made with other flags."""
    if not runfiles.is_remote(cfg.model_dir):
        return
    try:
        runfiles.check_writable(cfg.model_dir)
    except ValueError as e:
        raise config.ConfigError("model_dir", str(e)) from None
    config.check_resume_compatible(cfg, read_text=runfiles.read_text, exists=runfiles.exists)


def _last_logged(path):
    """The last metrics.jsonl record, flattened back to ``name/key`` form."""
    return _flatten(json.loads(runfiles.read_text(path).strip().splitlines()[-1]))


def _flatten(record):
    """A metrics.jsonl record back in ``name/key`` form."""
    flat = {}
    for k, v in record.items():
        if isinstance(v, dict):
            flat.update({f"{k}/{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    return flat
