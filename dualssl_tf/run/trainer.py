"""The training run behind tools/train.py: TrainConfig in, run directory out.

The data path reads in the package's folder names: the task (``dualssl_tf.tasks``) gives
data and networks, the method (``dualssl_tf.methods``) the training step, the run directory
(:mod:`dualssl_tf.run.rundir`) keeps every file, and the encoder is exported by
:mod:`dualssl_tf.evaluation.export`.
"""

import keras
import tensorflow as tf

from dualssl_tf import config, methods, runfiles, tasks
from dualssl_tf.evaluation import export
from dualssl_tf.optim import schedules
from dualssl_tf.run import distribute
from dualssl_tf.run.callbacks import NonFiniteLossGuard
from dualssl_tf.run.rundir import RunDir


def run(cfg):
    """Trains per ``cfg`` and writes ``cfg.run.model_dir``; resumes a run found there.

    Raises ConfigError before anything is written if a setting is bad, and
    NonFiniteLossError if the loss turns NaN/Inf (the last good checkpoint and export are
    kept). Returns dict: ``initial`` and ``final`` logs, a printable ``summary``,
    ``finished`` (True when there was nothing left to do).
    """
    config.validate(cfg)
    check_remote_model_dir(cfg)
    rundir = RunDir(cfg.run.model_dir, cfg.run.keep_checkpoints)
    done = rundir.finished_epochs()
    if done is not None and done >= cfg.optim.epochs:
        return {"initial": {}, "final": {}, "finished": True,
                "summary": f"Run in {cfg.run.model_dir} is already finished ({done} "
                           "epochs); nothing to do (raise --epochs to train further)."}
    strategy, cfg = distribute.setup(cfg)
    found = rundir.find_checkpoint()
    with strategy.scope():  # networks, method and optimizers all live on the replicas
        task = tasks.build(cfg, start_step=found["step"] if found else 0)
    check_not_empty(cfg, task)
    data = distribute.train_input(strategy, cfg.optim.batch_size, task,
                                  lambda ds: select_negatives(cfg, task, ds))
    callbacks = list(task.callbacks)
    if cfg.analysis.every:  # imported on request only: training never needs the analysis
        from dualssl_tf.analysis.callback import build_analysis_callback
        callbacks.append(build_analysis_callback(cfg, task))
    # Nothing is written before every setting has been checked and the data built.
    rundir.write_config(config.to_flagfile(cfg), task.metadata)
    with strategy.scope():
        model = build_model(cfg, task)
        rundir.attach(model)
    initial = rundir.begin(found, lambda: initial_logs(callbacks), network_variables(task))
    model.fit(data, epochs=cfg.optim.epochs, steps_per_epoch=task.steps_per_epoch,
              initial_epoch=found["epoch"] if found else 0, verbose=cfg.run.verbose,
              shuffle=False, callbacks=[NonFiniteLossGuard(cfg.run.steps_per_execution),
                                        *callbacks, *rundir.callbacks(
                                            cfg.run.checkpoint_every, cfg.optim.epochs, found)])
    final = rundir.last_metrics()
    export.export_encoder(task.encoder, task.head, rundir.saved_model, task.input_shape,
                          model_card=export.run_model_card(cfg.flags(), task.metadata, final),
                          intermediate_layers=export.default_intermediates(task.encoder))
    rundir.mark_finished(max(cfg.optim.epochs, found["epoch"] if found else 0))
    summary = task.summarize(initial, final) if task.summarize and initial else ""
    return {"initial": initial, "final": final, "summary": summary, "finished": False}


def build_model(cfg, task):
    """The method of ``cfg.method.method`` on the task's networks, compiled with its
    optimizer (and the online probe's own); call inside ``strategy.scope()``."""
    if task.probe is not None and not task.probe.built:
        # Built now, so the optimizers and the checkpoints know its variables from step 0.
        rep = task.encoder(tf.zeros([1, *task.input_shape]), training=False)
        task.probe.build(rep.shape)
    model = methods.build(cfg, task, gather_fn=distribute.cross_replica_candidates)
    optimizer = build_optimizer(cfg, task.steps_per_epoch)
    probe_optimizer = keras.optimizers.Adam(cfg.method.probe_learning_rate)
    if cfg.run.mixed_precision == "float16":  # dynamic loss scale
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        probe_optimizer = keras.optimizers.LossScaleOptimizer(probe_optimizer)
    # TPUStrategy compiles the replica step with XLA itself; Keras' jit_compile is for one
    # device (multi-replica mirrored + jit_compile is refused in distribute.setup).
    model.compile(optimizer=optimizer, probe_optimizer=probe_optimizer,
                  steps_per_execution=cfg.run.steps_per_execution,
                  jit_compile=cfg.run.jit_compile and cfg.run.strategy != "tpu")
    return model


def build_optimizer(cfg, steps_per_epoch=1):
    """Keras optimizer named by ``--optimizer`` (sgd | adam | adamw | lars) with the run's
    learning-rate scaling, warmup and schedule (:mod:`dualssl_tf.optim`)."""
    o = cfg.optim
    lr = schedules.learning_rate_schedule(
        o.learning_rate, o.batch_size, o.lr_scaling, o.lr_schedule,
        total_steps=o.epochs * steps_per_epoch,
        warmup_steps=int(round(o.warmup_epochs * steps_per_epoch)))
    return schedules.build_optimizer(o.optimizer, lr, momentum=o.momentum,
                                     weight_decay=o.weight_decay, eta=o.lars_eta)


def network_variables(task):
    """The encoder's variables, then the head's (what ``initial/`` holds)."""
    return list(task.encoder.variables) + (list(task.head.variables) if task.head else [])


def initial_logs(callbacks):
    """The epoch-0 metrics: every callback's measurement at initialisation."""
    logs = {}
    for cb in callbacks:
        if hasattr(cb, "initial_logs"):
            logs.update(cb.initial_logs())
    return logs


def check_not_empty(cfg, task):
    """An empty training set is a bad setting: reject it before anything is written.

    Uses the static cardinality of one pipeline (free; 0 for e.g. ``empty.repeat()``); a
    pipeline whose size is unknown (filtered) and turns out empty ends fit early with
    Keras' "ran out of data".
    """
    if task.steps_per_epoch < 1 or int(task.make_data(cfg.optim.batch_size).cardinality()) == 0:
        raise config.ConfigError("dataset", f"{cfg.data.dataset!r} yields no batch of "
                                 f"--batch_size={cfg.optim.batch_size}; check --data_dir and "
                                 "the dataset's files, or lower --batch_size")


def select_negatives(cfg, task, dataset):
    """Applies ``--negatives``: keep explicit negatives, or drop them for in-batch ones."""
    has_explicit = "negatives" in dataset.element_spec
    mode = cfg.contrastive.negatives
    if mode == "auto":
        mode = "explicit" if has_explicit else "batch"
    if mode == "explicit" and not has_explicit:
        raise config.ConfigError("negatives", f"dataset {cfg.data.dataset!r} has no explicit "
                                 "negatives; use --negatives=batch (SimCLR in-batch)")
    if mode == "batch" and has_explicit:
        dataset = dataset.map(lambda b: {k: v for k, v in b.items() if k != "negatives"})
    return dataset


def check_remote_model_dir(cfg):
    """A URL ``--model_dir`` (gs://) is checked here, config.py being TensorFlow-free:
    writable (a probe file) and holding no run made with other flags."""
    if not runfiles.is_remote(cfg.run.model_dir):
        return
    try:
        runfiles.check_writable(cfg.run.model_dir)
    except ValueError as e:
        raise config.ConfigError("model_dir", str(e)) from None
    config.check_resume_compatible(cfg, read_text=runfiles.read_text, exists=runfiles.exists)
