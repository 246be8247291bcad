"""Export a run's encoder as a SavedModel: python tools/export.py --model_dir=runs/x
[--checkpoint=FILE] [--export_dir=DIR]

Rebuilds the networks from ``model_dir/flags.txt``, loads the weights of ``--checkpoint`` (a
trainer checkpoint prefix such as ``model_dir/checkpoints/ckpt-8``, which the trainer writes
with ``tf.train.Checkpoint`` (``run.checkpoints.RunCheckpoints``), or a Keras ``.weights.h5`` that
a user saved with the method's ``save_weights``; default: the run's newest readable trainer
checkpoint, else its newest ``*.weights.h5``) and writes ``model_dir/saved_model`` (or
``--export_dir``) atomically, with model_card.json (flags, metrics.jsonl's last record,
run.json metadata, the checkpoint used).

Bad input ends with one line on stderr naming the flag or file, and exit status 2.
"""

import contextlib
import json
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import cli  # noqa: E402

TOOL = "export.py"
from dualssl_tf import config  # noqa: E402  (TensorFlow-free: errors come fast)
from dualssl_tf.run.lock import RunLock, RunLocked  # noqa: E402  (TensorFlow-free)

flags.DEFINE_string("model_dir", "", "Run directory written by tools/train.py (flags.txt).")
flags.DEFINE_string("checkpoint", "", "Weights to export: a trainer checkpoint prefix "
                    "(checkpoints/ckpt-N) or a .weights.h5 file; default: the run's newest.")
flags.DEFINE_string("export_dir", "", "Where to write the SavedModel; default "
                    "model_dir/saved_model.")
flags.DEFINE_string("intermediate_layers", "auto", "Comma-separated layer names of a "
                    "functional encoder to export as extra outputs; 'auto' = the encoder's "
                    "own taps (e.g. HLTM depths), 'none' = no intermediate outputs.")
FLAGS = flags.FLAGS


def fail(message):
    cli.fail(TOOL, message)


def read_flagfile(path, read_text=None):
    """TrainConfig from a run's flags.txt; ``read_text`` reads a URL (gs://) path."""
    return config.from_flag_strings(config.read_flagfile(path, read_text), unknown="error",
                                    source=path)


def find_checkpoint(model_dir):
    """The run's newest readable trainer checkpoint, else its newest ``*.weights.h5``.

    Writes nothing in the run directory. A newer checkpoint that cannot be read is skipped
    with one warning line; when none can be read, fails with one line naming the newest.
    """
    from dualssl_tf import runfiles
    from dualssl_tf.run import checkpoints, rundir
    unreadable = []
    found = rundir.RunDir(model_dir).find_checkpoint(
        report=lambda prefix, reason: unreadable.append((prefix, reason)), clean=False)
    if found:
        if unreadable:
            sys.stderr.write(f"{TOOL}: warning: {unreadable[0][0]} is unreadable "
                             f"({unreadable[0][1]}); exporting {found['path']}\n")
        return found["path"]
    files = (runfiles.glob(os.path.join(model_dir, "*.weights.h5"))
             + runfiles.glob(os.path.join(model_dir, checkpoints.CHECKPOINT_DIR,
                                          "*.weights.h5")))
    if files:
        return max(files, key=runfiles.mtime)
    if unreadable:
        prefix, reason = unreadable[0]
        more = (f" (and {len(unreadable) - 1} older one{'s' * (len(unreadable) > 2)})"
                if len(unreadable) > 1 else "")
        fail(f"--checkpoint: {prefix}{more} is corrupt or truncated ({reason}); pass "
             "--checkpoint=PATH of a readable one, or retrain with tools/train.py")
    return ""


def load_weights(model, checkpoint, input_shape):
    """Loads a .weights.h5 or a trainer checkpoint prefix into the freshly built method."""
    import tensorflow as tf
    if checkpoint.endswith(".weights.h5"):
        model(tf.zeros([1, *input_shape]))   # Keras .h5 loading needs a built model
        model.load_weights(checkpoint)
        return
    # The trainer's layout (run.checkpoints.RunCheckpoints.attach): the model's variables as a
    # list, in the order of a freshly built method; optimizer state is not needed.
    status = tf.train.Checkpoint(model=list(model.variables)).restore(checkpoint)
    status.expect_partial()
    status.assert_existing_objects_matched()


def _checkpoint_metrics(model_dir, checkpoint):
    """metrics.jsonl's record of the checkpoint's own epoch (an older checkpoint than the
    run's last: its metrics, not the last epoch's); the last record for a weights file."""
    from dualssl_tf.run import checkpoints, rundir
    path = os.path.join(model_dir, "metrics.jsonl")
    return rundir.metrics_record(path, checkpoints.checkpoint_epoch(checkpoint))


def _metadata(model_dir):
    from dualssl_tf import runfiles
    path = os.path.join(model_dir, "run.json")
    return json.loads(runfiles.read_text(path)) if runfiles.exists(path) else {}


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    model_dir = FLAGS.model_dir
    if not model_dir:
        fail("--model_dir: is required: the run directory written by tools/train.py")
    flagfile = os.path.join(model_dir, "flags.txt")
    checkpoint = FLAGS.checkpoint
    read_text = None
    if "://" in model_dir or "://" in checkpoint:
        # URLs (gs://) need TensorFlow's file systems: import it before the checks.
        cli.import_tensorflow()  # its C++ start-up lines captured (--tf_log shows them)
        from dualssl_tf import runfiles
        exists, isfile, read_text = runfiles.exists, runfiles.exists, runfiles.read_text
    else:
        exists, isfile = os.path.exists, os.path.isfile
    try:
        if not isfile(flagfile):
            fail(f"--model_dir: {flagfile} does not exist; pass a run directory written by "
                 "tools/train.py")
    except ValueError as e:     # a URL the file system cannot reach
        fail(f"--model_dir: {e}")
    try:
        if checkpoint and not (exists(checkpoint) or exists(checkpoint + ".index")):
            fail(f"--checkpoint: {checkpoint} does not exist")
    except ValueError as e:
        fail(f"--checkpoint: {e}")
    export_dir = FLAGS.export_dir or os.path.join(model_dir, "saved_model")
    # Writing into the run directory: one writer at a time, as train.py (run/lock.py).
    lock = (RunLock(model_dir, TOOL) if _inside(export_dir, model_dir)
            else contextlib.nullcontext())
    try:
        with lock:
            _export(model_dir, flagfile, checkpoint, read_text, export_dir)
    except RunLocked as e:
        fail(f"--model_dir: {e}; or export elsewhere meanwhile with --export_dir")
    print(f"SavedModel written to {export_dir}")


def _inside(path, directory):
    """Whether ``path`` is ``directory`` or below it (URLs compared as strings)."""
    if "://" in path or "://" in directory:
        return (path.rstrip("/") + "/").startswith(directory.rstrip("/") + "/")
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return path == directory or path.startswith(directory + os.sep)


def _export(model_dir, flagfile, checkpoint, read_text, export_dir):
    """Builds the run's model, loads ``checkpoint`` (or the newest) and exports it."""
    try:
        cfg = read_flagfile(flagfile, read_text)
        cfg.run.model_dir = model_dir   # the run may have moved since training
        config.validate(cfg)
        cli.import_tensorflow()  # its C++ start-up lines captured (--tf_log shows them)
        from dualssl_tf import tasks
        from dualssl_tf.evaluation import export
        from dualssl_tf.run import trainer
        checkpoint = checkpoint or find_checkpoint(model_dir)
        if not checkpoint:
            fail(f"--checkpoint: no checkpoint (*.weights.h5 or tf.train checkpoint) in "
                 f"{model_dir} or its checkpoints/; pass --checkpoint=PATH")
        task = tasks.build(cfg)
        model = trainer.build_model(cfg, task)
        try:
            load_weights(model, checkpoint, task.input_shape)
        except Exception as e:  # wrong architecture or corrupt file: one line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            fail(f"--checkpoint: cannot load {checkpoint} into the model of {flagfile} "
                 f"({msg})")
        if FLAGS.intermediate_layers == "auto":
            taps = export.default_intermediates(task.encoder)
        elif FLAGS.intermediate_layers in ("", "none"):
            taps = None
        else:
            taps = [n.strip() for n in FLAGS.intermediate_layers.split(",") if n.strip()]
        card = export.run_model_card(cfg.flags(), _metadata(model_dir),
                                     _checkpoint_metrics(model_dir, checkpoint))
        card["checkpoint"] = checkpoint if "://" in checkpoint else os.path.abspath(checkpoint)
        try:
            export.export_encoder(task.encoder, task.head, export_dir, task.input_shape,
                                  model_card=card,
                                  intermediate_layers=model.export_outputs(taps))
        except ValueError as e:
            msg = str(e)
            fail("--" + msg if msg.split(":")[0] in ("intermediate_layers", "export_dir")
                 else msg)
    except ValueError as e:  # ConfigError and bad flag values
        fail(str(e).strip().splitlines()[0])


def parse_flags(argv):
    return cli.parse_flags(TOOL, argv)


if __name__ == "__main__":
    cli.run(main, TOOL)
