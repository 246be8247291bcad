"""Train a dual network: python tools/train.py --flagfile=configs/hltm.cfg [--flag=value ...]

Every field of dualssl_tf.config.TrainConfig is a flag of the same name. Bad flags or values
end with one line on stderr naming the flag, and exit status 2, before anything is written.

Re-running the same command resumes the run in --model_dir from its newest readable
checkpoint, or says it is finished (exit 0). A NaN/Inf loss stops the run with one line
naming the step and exit status 3; the last good checkpoint and export are kept.
"""

import dataclasses
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dualssl_tf import config  # noqa: E402  (TensorFlow-free: errors come fast)

HELP = {
    "dataset": "Data: hltm (generated latent tree, the default; no download).",
    "data_dir": "Directory (or gs:// bucket) holding downloaded datasets.",
    "encoder": "Encoder network; auto = the dataset's own (TreeNet for hltm).",
    "loss": "Contrastive loss: " + ", ".join(config.LOSS_NAMES) + ".",
    "negatives": "auto | explicit (H sampled negatives per anchor) | batch (SimCLR 2N-2).",
    "temperature": "tau of the soft-triplet, InfoNCE, NT-Xent and cov losses (> 0).",
    "margin": "r0 of the soft-triplet loss (>= 0); required with --loss=tri, only there.",
    "beta": "Generalised-loss weight of the positive term (nce, ntxent, cov; > -1).",
    "num_negatives": "H, explicit negatives per anchor.",
    "batch_size": "Global batch size (pairs per step).",
    "epochs": "Training epochs.",
    "steps_per_epoch": "Steps per epoch; 0 = the dataset's natural epoch.",
    "optimizer": "sgd | adam | adamw.",
    "learning_rate": "Base learning rate (> 0).",
    "momentum": "SGD momentum in [0, 1).",
    "weight_decay": "Decoupled weight decay (>= 0).",
    "seed": "Random seed: tree polarities, initialisation and data order.",
    "steps_per_execution": "Train steps per tf.function call (cuts host overhead).",
    "jit_compile": "Compile the train step with XLA.",
    "model_dir": "Output directory: flags.txt, metrics.jsonl, logs/, saved_model/.",
    "verbose": "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.",
    "checkpoint_every": "Epochs between checkpoints in model_dir/checkpoints (and after the "
                        "last epoch); a re-run resumes from the newest readable one.",
    "keep_checkpoints": "Checkpoints kept (>= 2: a corrupt newest one falls back to the "
                        "previous).",
    "deterministic": "Deterministic TF ops (bit-identical resume on CPU); "
                     "--nodeterministic may be faster on GPU.",
    "hltm_depth": "HLTM depth L (>= 1).",
    "hltm_children": "HLTM children per latent (>= 2).",
    "hltm_hid": "Hidden units per latent group of the tree network (>= 1).",
    "hltm_delta_lower": "Lower bound of |polarity| in [0, 1].",
    "hltm_delta_upper": "Upper bound of |polarity| in [0, 1].",
    "hltm_samples_per_epoch": "Fresh HLTM samples per training epoch.",
    "hltm_eval_samples": "Held-out HLTM samples for the correlation metric.",
}


def define_flags():
    """One absl flag per TrainConfig field, typed by the field's default."""
    definers = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                float: flags.DEFINE_float, str: flags.DEFINE_string}
    for field in dataclasses.fields(config.TrainConfig):
        definers[type(field.default)](field.name, field.default,
                                      HELP.get(field.name, field.name))


EXIT_BAD_INPUT = 2     # a flag, config or file is wrong; nothing was written
EXIT_NON_FINITE = 3    # the loss became NaN/Inf; the last good checkpoint is kept


def fail(message, status=EXIT_BAD_INPUT):
    sys.stderr.write(f"train.py: error: {message}\n")
    sys.exit(status)


def _flagfile_holding(name, argv):
    """The --flagfile among argv whose lines set --name (for naming the culprit file)."""
    for arg in argv:
        if arg.startswith("--flagfile="):
            path = arg.split("=", 1)[1]
            try:
                with open(path) as f:
                    if any(line.strip().lstrip("-").split("=")[0] in (name, "no" + name)
                           for line in f):
                        return path
            except OSError:
                pass
    return None


def parse_flags(argv):
    """Parses argv; any flag error is one line on stderr and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, ValueError) as e:  # absl raises ValueError for --noflag=value
        message = str(e).splitlines()[0].replace("ERROR:: ", "")
        if isinstance(e, flags.UnrecognizedFlagError):
            path = _flagfile_holding(e.flagname, argv[1:])
            message = (f"--{e.flagname}: unknown flag" + (f" in flagfile {path}" if path else "")
                       + "; see --helpfull for the flags of train.py")
        fail(message)


def config_from_flags():
    return config.TrainConfig(**{f.name: getattr(flags.FLAGS, f.name)
                                 for f in dataclasses.fields(config.TrainConfig)})


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    cfg = config_from_flags()
    try:
        config.validate(cfg)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from dualssl_tf import checkpointing, trainer  # TensorFlow only for valid settings
        try:
            result = trainer.run(cfg)
        except checkpointing.NonFiniteLossError as e:
            fail(str(e), EXIT_NON_FINITE)
    except config.ConfigError as e:
        fail(str(e))
    if result["finished"]:
        print(result["summary"])
        return
    if result["summary"]:
        print("\n" + result["summary"])
    print(f"\nRun written to {cfg.model_dir}")


if __name__ == "__main__":
    define_flags()
    logging.set_verbosity(logging.WARNING)  # keep TF's SavedModel INFO lines off the console
    app.run(main, flags_parser=parse_flags)
