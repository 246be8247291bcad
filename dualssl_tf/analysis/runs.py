"""Reading a finished run (a ``model_dir`` written by tools/train.py) for analysis.

A run holds ``flags.txt`` (flagfile of its TrainConfig), ``metrics.jsonl``, its weights at
initialisation ``initial/`` and the encoder SavedModel ``saved_model/``. The networks are
rebuilt from the flags; the initial weights are read from ``initial/`` (runs older than
that file are rebuilt from the seed, as the trainer seeds Keras before building) and the
trained ones from the SavedModel's checkpoint into a second copy.
"""

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from dualssl_tf import config, runfiles, tasks
from dualssl_tf.run import checkpoints

VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def read_flagfile(path):
    """TrainConfig from a ``--name=value`` flagfile (local or gs://); flags this version
    does not know are ignored (their defaults apply)."""
    return config.from_flag_strings(config.parse_flagfile(runfiles.read_text(path)))


def read_metrics(path):
    """metrics.jsonl -> list of dicts (one per epoch, epoch 0 = initialisation).

    A half-written last line (a run killed mid-write) is left out; any other line that is
    not JSON raises ValueError("model_dir: ...") naming the file and line.
    """
    lines = runfiles.read_lines(path)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines) and not line.endswith("\n"):
                continue   # the killed run's partial last record
            raise ValueError(f"model_dir: {path} line {number} is not a JSON record; the "
                             "run's metrics are damaged") from None
    return records


def load_savedmodel_weights(model, saved_model_dir, prefix="encoder"):
    """Copies the encoder's variables of an exported SavedModel into the rebuilt ``model``.

    Two layouts are understood: the Keras ExportArchive of :mod:`dualssl_tf.evaluation.export`
    (``variables/<i>``: the encoder's variables first, in ``model.variables`` order, then the
    head's) and a plain ``tf.Module`` export (``<prefix>/levels/0/kernel``: the same
    attribute path is followed on the rebuilt model). Returns the number of variables
    restored; raises ValueError("model_dir: ...") when the export does not match the model.
    """
    ckpt = os.path.join(saved_model_dir, "variables", "variables")
    keys = dict(tf.train.list_variables(ckpt))
    listed = [f"variables/{i}{VARIABLE_SUFFIX}" for i in range(len(model.variables))]
    if all(k in keys for k in listed):
        for var, key in zip(model.variables, listed):
            if tuple(keys[key]) != tuple(var.shape):
                raise ValueError(f"model_dir: exported variable {key} has shape {keys[key]}, "
                                 f"the rebuilt {var.path} {tuple(var.shape)}; were the flags "
                                 "changed after training?")
            var.assign(tf.train.load_variable(ckpt, key))
        return len(listed)
    restored = set()
    for key in keys:
        if not key.startswith(prefix + "/") or not key.endswith(VARIABLE_SUFFIX):
            continue
        obj = model
        for part in key[len(prefix) + 1:-len(VARIABLE_SUFFIX)].split("/"):
            try:
                obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
            except (AttributeError, IndexError, TypeError) as e:
                raise ValueError(f"model_dir: saved variable {key} does not match the rebuilt "
                                 f"model ({e})") from None
        obj.assign(tf.train.load_variable(ckpt, key))
        restored.add(id(obj))
    missing = [w.path for w in model.weights if id(w) not in restored]
    if missing:
        raise ValueError(f"model_dir: SavedModel lacks weights {', '.join(missing)}")
    return len(restored)


@dataclasses.dataclass
class Run:
    """A finished run: its config, metrics, and the task rebuilt twice.

    ``init`` is the Task at initialisation, ``final`` a Task whose encoder holds the
    trained weights (``None`` when the run has no SavedModel).
    """
    model_dir: str
    cfg: config.TrainConfig
    metrics: list
    init: tasks.Task
    final: tasks.Task


def load_run(model_dir):
    """Loads a run directory. Raises ValueError("model_dir: ...") on missing files."""
    flags_path = os.path.join(model_dir, "flags.txt")
    metrics_path = os.path.join(model_dir, "metrics.jsonl")
    if not runfiles.isdir(model_dir):
        raise ValueError(f"model_dir: {model_dir} is not a directory")
    for path in (flags_path, metrics_path):
        if not runfiles.exists(path):
            raise ValueError(f"model_dir: no {os.path.basename(path)} in {model_dir}; point it "
                             "at a run written by tools/train.py")
    cfg = read_flagfile(flags_path)
    metrics = read_metrics(metrics_path)
    if not metrics:
        raise ValueError(f"model_dir: {metrics_path} is empty")
    # Same seeding and build order as trainer.run, so a run without initial/ (made before
    # it was written) still gets its initial encoder back.
    keras.utils.set_random_seed(cfg.run.seed)
    init = tasks.build(cfg)
    checkpoints.restore_initial(list(init.encoder.variables) + (
        list(init.head.variables) if init.head else []), model_dir)
    final = None
    saved = os.path.join(model_dir, "saved_model")
    if runfiles.isdir(saved):
        keras.utils.set_random_seed(cfg.run.seed)
        final = tasks.build(cfg)
        load_savedmodel_weights(final.encoder, saved)
    return Run(model_dir, cfg, metrics, init, final)


def metric_series(metrics, key):
    """(epochs [T], values [T] or dict sub-key -> [T]) of ``key`` over metrics.jsonl.

    For a grouped key (``best_corr``) returns ``(epochs, {sub: np.array})``; epochs without
    the key are skipped.
    """
    rows = [m for m in metrics if key in m]
    epochs = np.array([m["epoch"] for m in rows])
    if rows and isinstance(rows[0][key], dict):
        subs = sorted(rows[0][key], key=lambda s: (len(s), s))
        return epochs, {s: np.array([m[key].get(s, np.nan) for m in rows]) for s in subs}
    return epochs, np.array([m[key] for m in rows])
