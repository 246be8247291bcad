"""Export a run's encoder as a SavedModel: python tools/export.py --model_dir=runs/x
[--checkpoint=FILE] [--export_dir=DIR]

Rebuilds the networks from ``model_dir/flags.txt``, loads the weights of ``--checkpoint`` (a
``.weights.h5`` written by ``DualModel.save_weights``, or a ``tf.train.Checkpoint`` prefix
holding ``model=DualModel``; default: the newest checkpoint in ``model_dir`` or
``model_dir/checkpoints``) and writes ``model_dir/saved_model`` (or ``--export_dir``)
atomically, with model_card.json (flags, metrics.jsonl's last record, run.json metadata).

Bad input ends with one line on stderr naming the flag or file, and exit status 2.
"""

import dataclasses
import glob
import json
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dualssl_tf import config  # noqa: E402  (TensorFlow-free: errors come fast)

flags.DEFINE_string("model_dir", "", "Run directory written by tools/train.py (flags.txt).")
flags.DEFINE_string("checkpoint", "", "Weights to export: a .weights.h5 file or a "
                    "tf.train.Checkpoint prefix; default: the newest in model_dir.")
flags.DEFINE_string("export_dir", "", "Where to write the SavedModel; default "
                    "model_dir/saved_model.")
flags.DEFINE_string("intermediate_layers", "auto", "Comma-separated layer names of a "
                    "functional encoder to export as extra outputs; 'auto' = the encoder's "
                    "own taps (e.g. HLTM depths), 'none' = no intermediate outputs.")
FLAGS = flags.FLAGS


def fail(message):
    sys.stderr.write(f"export.py: error: {message}\n")
    sys.exit(2)


def read_flagfile(path):
    """TrainConfig from a ``--name=value`` flagfile (as written by config.to_flagfile)."""
    fields = {f.name: f for f in dataclasses.fields(config.TrainConfig)}
    values = {}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, value = line[2:].partition("=") if line.startswith("--") else ("", "", "")
            if not sep or name not in fields:
                raise config.ConfigError("model_dir", f"{path} line {number}: {line!r} is not "
                                         "a known --name=value flag of tools/train.py")
            kind = type(fields[name].default)
            try:
                values[name] = (value.lower() in ("1", "true") if kind is bool
                                else kind(value))
            except ValueError:
                raise config.ConfigError("model_dir", f"{path} line {number}: {value!r} is "
                                         f"not a valid {kind.__name__} for --{name}") from None
    return config.TrainConfig(**values)


def find_checkpoint(model_dir):
    """Newest .weights.h5 or tf.train checkpoint in model_dir or model_dir/checkpoints."""
    import tensorflow as tf
    candidates = []
    for d in (model_dir, os.path.join(model_dir, "checkpoints")):
        candidates += glob.glob(os.path.join(d, "*.weights.h5"))
        prefix = tf.train.latest_checkpoint(d) if os.path.isdir(d) else None
        if prefix:
            candidates.append(prefix)
    def mtime(p):
        return os.path.getmtime(p if os.path.exists(p) else p + ".index")
    return max(candidates, key=mtime) if candidates else ""


def load_weights(model, checkpoint):
    import tensorflow as tf
    if checkpoint.endswith(".weights.h5"):
        model.load_weights(checkpoint)
    else:
        tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()


def _last_metrics(model_dir):
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        lines = f.read().strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _metadata(model_dir):
    path = os.path.join(model_dir, "run.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    model_dir = FLAGS.model_dir
    if not model_dir:
        fail("--model_dir: is required: the run directory written by tools/train.py")
    flagfile = os.path.join(model_dir, "flags.txt")
    if not os.path.isfile(flagfile):
        fail(f"--model_dir: {flagfile} does not exist; pass a run directory written by "
             "tools/train.py")
    checkpoint = FLAGS.checkpoint
    if checkpoint and not (os.path.exists(checkpoint) or os.path.exists(checkpoint + ".index")):
        fail(f"--checkpoint: {checkpoint} does not exist")
    try:
        cfg = read_flagfile(flagfile)
        cfg.model_dir = model_dir   # the run may have moved since training
        config.validate(cfg)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        from dualssl_tf import experiments, export, trainer
        checkpoint = checkpoint or find_checkpoint(model_dir)
        if not checkpoint:
            fail(f"--checkpoint: no checkpoint (*.weights.h5 or tf.train checkpoint) in "
                 f"{model_dir} or its checkpoints/; pass --checkpoint=PATH")
        exp = experiments.build(cfg)
        model = trainer.build_model(cfg, exp)
        model(tf.zeros([1, *exp.input_shape]))   # create every weight before loading
        try:
            load_weights(model, checkpoint)
        except Exception as e:  # wrong architecture or corrupt file: one line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            fail(f"--checkpoint: cannot load {checkpoint} into the model of {flagfile} "
                 f"({msg})")
        if FLAGS.intermediate_layers == "auto":
            taps = export.default_intermediates(exp.encoder)
        elif FLAGS.intermediate_layers in ("", "none"):
            taps = None
        else:
            taps = [n.strip() for n in FLAGS.intermediate_layers.split(",") if n.strip()]
        export_dir = FLAGS.export_dir or os.path.join(model_dir, "saved_model")
        card = export.run_model_card(cfg, _metadata(model_dir), _last_metrics(model_dir))
        card["checkpoint"] = os.path.abspath(checkpoint)
        try:
            export.export_encoder(exp.encoder, exp.head, export_dir, exp.input_shape,
                                  model_card=card, intermediate_layers=taps)
        except ValueError as e:
            msg = str(e)
            fail("--" + msg if msg.split(":")[0] in ("intermediate_layers", "export_dir")
                 else msg)
    except config.ConfigError as e:
        fail(str(e))
    print(f"SavedModel written to {export_dir}")


def parse_flags(argv):
    """Parses argv; any flag error is one line on stderr and exit status 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0])


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main, flags_parser=parse_flags)
