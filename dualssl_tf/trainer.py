"""The training run behind tools/train.py: TrainConfig in, model_dir out."""

import json
import os

import keras
import tensorflow as tf

from dualssl_tf import callbacks, config, experiments, export
from dualssl_tf.dual import DualModel


def build_optimizer(cfg):
    """Keras optimizer named by ``cfg.optimizer`` (sgd | adam | adamw)."""
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(cfg.learning_rate, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay or None)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(cfg.learning_rate, weight_decay=cfg.weight_decay or None)
    return keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay)


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


def build_model(cfg, exp):
    model = DualModel(exp.encoder, exp.head, loss=cfg.loss, temperature=cfg.temperature,
                      margin=cfg.margin, beta=cfg.beta, norm_eps=exp.norm_eps,
                      probe=exp.probe, name="dual")
    model.compile(optimizer=build_optimizer(cfg), steps_per_execution=cfg.steps_per_execution,
                  jit_compile=cfg.jit_compile)
    return model


def run(cfg):
    """Trains per ``cfg`` and writes into ``cfg.model_dir``.

    Writes ``flags.txt`` (a re-usable flagfile), ``run.json`` (metadata such as the HLTM
    polarities), ``metrics.jsonl`` (epoch 0 = at initialisation), TensorBoard logs under
    ``logs/`` and the encoder SavedModel under ``saved_model/``.

    Raises ConfigError before anything is written if a setting is bad.
    Returns dict with ``initial`` and ``final`` logs and a printable ``summary``.
    """
    config.validate(cfg)
    keras.utils.set_random_seed(cfg.seed)
    exp = experiments.build(cfg)
    train_data = _select_negatives(cfg, exp.train_data)

    # Nothing is written before every setting has been checked and the data built.
    model_dir = cfg.model_dir
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(os.path.join(model_dir, "flags.txt"), "w") as f:
        f.write(config.to_flagfile(cfg))
    with tf.io.gfile.GFile(os.path.join(model_dir, "run.json"), "w") as f:
        json.dump(exp.metadata, f)

    model = build_model(cfg, exp)
    logger = callbacks.MetricsLogger(os.path.join(model_dir, "metrics.jsonl"))
    initial = {}
    for cb in exp.callbacks:
        if hasattr(cb, "initial_logs"):
            initial.update(cb.initial_logs())
    logger.log_initial(initial)
    board = keras.callbacks.TensorBoard(log_dir=os.path.join(model_dir, "logs"))
    model.fit(train_data, epochs=cfg.epochs, steps_per_epoch=exp.steps_per_epoch,
              callbacks=exp.callbacks + [logger, board], verbose=cfg.verbose, shuffle=False)
    final = _last_logged(logger.path)
    export.export_encoder(
        exp.encoder, exp.head, os.path.join(model_dir, "saved_model"), exp.input_shape,
        model_card=export.run_model_card(cfg, exp.metadata, final),
        intermediate_layers=export.default_intermediates(exp.encoder))
    summary = exp.summarize(initial, final) if exp.summarize else ""
    return {"initial": initial, "final": final, "summary": summary}


def _last_logged(path):
    """The last metrics.jsonl record, flattened back to ``name/key`` form."""
    with tf.io.gfile.GFile(path) as f:
        record = json.loads(f.read().strip().splitlines()[-1])
    flat = {}
    for k, v in record.items():
        if isinstance(v, dict):
            flat.update({f"{k}/{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    return flat
