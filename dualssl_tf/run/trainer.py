"""The training run behind tools/train.py: TrainConfig in, run directory out.

The data path reads in the package's folder names: the task (``dualssl_tf.tasks``) gives
data and networks, the method (``dualssl_tf.methods``) the training step, the run directory
(:mod:`dualssl_tf.run.rundir`) keeps every file, and the encoder is exported by
:mod:`dualssl_tf.evaluation.export`.
"""

import keras
import tensorflow as tf

from dualssl_tf import config, cross_replica, methods, runfiles, tasks
from dualssl_tf.evaluation import export
from dualssl_tf.optim import schedules, weight_decay
from dualssl_tf.run import distribute, epoch_steps, safe_stop
from dualssl_tf.run.callbacks import NonFiniteLossGuard
from dualssl_tf.run.lock import RunLock, RunLocked
from dualssl_tf.run.rundir import RunDir


def run(cfg, monitors=()):
    """Trains per ``cfg`` and writes ``cfg.run.model_dir``; resumes a run found there.

    ``monitors``: extra per-epoch measurements, each a ``(cfg, task) -> callback`` factory
    called once the task is built; their callbacks follow the task's own, on the epoch-0
    line too. The analysis monitor of ``--analysis_every`` comes this way
    (:func:`dualssl_tf.training.train`, ``dt.train``), so no training module imports the
    analysis; without it a config with ``--analysis_every`` > 0 is refused (ValueError).

    Raises ConfigError before anything is written if a setting is bad or another process
    holds the run directory (:mod:`dualssl_tf.run.lock`), NonFiniteLossError if the loss
    turns NaN/Inf (the last good checkpoint and export are kept), and RunWriteError when
    the run directory cannot be written (no space, quota, permission; the last good
    checkpoint is kept). Returns dict: ``initial`` and ``final`` logs, a printable ``summary``,
    ``finished`` (True when there was nothing left to do).
    """
    config.validate(cfg)
    if cfg.analysis.every and not monitors:  # rather than a run silently without it
        raise ValueError("--analysis_every: the analysis monitor is added by "
                         "dualssl_tf.train (dualssl_tf.training.train); call that instead "
                         "of run.trainer.run, or pass monitors=")
    check_remote_model_dir(cfg)
    rundir = RunDir(cfg.run.model_dir, cfg.run.keep_checkpoints)
    try:
        with RunLock(cfg.run.model_dir):  # one writer per run directory (run/lock.py)
            # Again under the lock: a run with other flags may have started since.
            config.check_resume_compatible(cfg, read_text=runfiles.read_text,
                                           exists=runfiles.exists)
            return _run_locked(cfg, rundir, monitors)
    except RunLocked as e:
        raise config.ConfigError("model_dir", str(e)) from None
    except config.ConfigError:
        raise
    except Exception as e:
        failure = rundir.write_failure(e)  # out of space / quota / permission: one line
        if failure is None:
            raise
        raise failure from None


def _run_locked(cfg, rundir, monitors):
    """:func:`run` once the run directory is this process's."""
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
    if found:  # epoch E of a checkpoint must end at step E * steps_per_epoch
        epoch_steps.check_resume_step(found, task.steps_per_epoch)
    data = distribute.train_input(strategy, cfg.optim.batch_size, task,
                                  lambda ds: select_negatives(cfg, task, ds))
    extra = [make(cfg, task) for make in monitors]
    callbacks = list(task.callbacks) + extra
    # Nothing is written before every setting has been checked and the data built.
    rundir.write_config(config.to_flagfile(cfg), task.metadata)
    with strategy.scope():
        model = build_model(cfg, task)
        rundir.attach(model)
    for monitor in extra:  # e.g. the method's loss at epoch 0 too (fit sets it again)
        monitor.set_model(model)
    initial = rundir.begin(found, lambda: initial_logs(callbacks), network_variables(task))
    model.fit(data, epochs=cfg.optim.epochs, steps_per_epoch=task.steps_per_epoch,
              initial_epoch=found["epoch"] if found else 0, verbose=cfg.run.verbose,
              callbacks=fit_callbacks(cfg, task, model, rundir, callbacks, found))
    final = rundir.last_metrics()
    print(end_of_run_line(final, rundir.saved_model), flush=True)
    export.export_encoder(task.encoder, task.head, rundir.saved_model, task.input_shape,
                          model_card=export.run_model_card(cfg.flags(), task.metadata, final),
                          intermediate_layers=model.export_outputs(
                              export.default_intermediates(task.encoder)))
    rundir.mark_finished(max(cfg.optim.epochs, found["epoch"] if found else 0))
    summary = task.summarize(initial, final) if task.summarize and initial else ""
    return {"initial": initial, "final": final, "summary": summary, "finished": False}


def end_of_run_line(final, saved_model, keys=("loss", "probe_test_acc", "probe_acc")):
    """One short line printed between the last epoch and the (silent) export: the final
    metric and what is being written."""
    shown = [f"{k} {final[k]:.4g}" for k in keys
             if isinstance(final.get(k), (int, float))][:2]
    return (f"Training done ({', '.join(shown) or 'no metrics'}); exporting the encoder to "
            f"{saved_model} ...")


def build_model(cfg, task):
    """The method of ``cfg.method.method`` on the task's networks, compiled with its
    optimizer (and the online probe's own); call inside ``strategy.scope()``."""
    if task.probe is not None and not task.probe.built:
        # Built now, so the optimizers and the checkpoints know its variables from step 0.
        rep = task.encoder(tf.zeros([1, *task.input_shape]), training=False)
        task.probe.build(rep.shape)
    model = methods.build(cfg, task, gather_fn=cross_replica.cross_replica_candidates)
    optimizer = build_optimizer(cfg, task.steps_per_epoch, model.rate_group(),
                                model.gradient_clip())
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


def build_optimizer(cfg, steps_per_epoch=1, group=None, clip_norm=0.0):
    """Keras optimizer named by ``--optimizer`` (sgd | adam | adamw | lars) with the run's
    learning-rate scaling, warmup and schedule, the weight-decay schedule
    (``--weight_decay_end``) (:mod:`dualssl_tf.optim`), the method's learning-rate
    ``group`` (:meth:`SSLMethod.rate_group`), if any, and its per-variable gradient
    clipping ``clip_norm`` (:meth:`SSLMethod.gradient_clip`; 0 = none)."""
    o = cfg.optim
    total_steps = o.epochs * steps_per_epoch
    lr = schedules.learning_rate_schedule(
        o.learning_rate, o.batch_size, o.lr_scaling, o.lr_schedule,
        total_steps=total_steps, warmup_steps=int(round(o.warmup_epochs * steps_per_epoch)),
        min_learning_rate=o.min_learning_rate)
    wd_schedule = (weight_decay.CosineWeightDecay(o.weight_decay, o.weight_decay_end,
                                                  max(total_steps, 1))
                   if o.weight_decay_end >= 0 else None)
    return schedules.build_optimizer(o.optimizer, lr, momentum=o.momentum,
                                     weight_decay=o.weight_decay, eta=o.lars_eta,
                                     weight_decay_mode=o.weight_decay_mode, group=group,
                                     weight_decay_schedule=wd_schedule, clip_norm=clip_norm)


def fit_callbacks(cfg, task, model, rundir, task_callbacks, found):
    """``fit``'s callbacks in their order: the NaN guard, the task's measurements, the run
    directory's (metrics line, checkpoint, TensorBoard), exact epochs for any
    ``--steps_per_execution``, and the safe stop on Ctrl-C/SIGTERM (tools/train.py)."""
    saved = rundir.callbacks(cfg.run.checkpoint_every, cfg.optim.epochs, found)
    return [NonFiniteLossGuard(cfg.run.steps_per_execution), *task_callbacks, *saved,
            *epoch_steps.exact_epochs(model, task.steps_per_epoch),
            *safe_stop.callbacks(saved[1], task.steps_per_epoch)]


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
    """Applies ``--negatives``: keep explicit negatives, or drop them for in-batch ones.
    A method that reads no negatives (BYOL, SimSiam) gets batches without them."""
    has_explicit = "negatives" in dataset.element_spec
    if not methods.spec(cfg.method.method).model_class().uses_negatives:
        return (dataset.map(lambda b: {k: v for k, v in b.items() if k != "negatives"})
                if has_explicit else dataset)
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
