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

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import cli  # noqa: E402

TOOL = "train.py"
from dualssl_tf import config  # noqa: E402  (TensorFlow-free: errors come fast)

HELP = {
    "dataset": "Data: hltm (generated latent tree, the default; no download), "
               "translation1d (the 1-D translation toy of Figure 3), generated_images "
               "(generated shapes; no download), folder (--data_dir of class sub-folders) "
               "or a TensorFlow Datasets name (stl10, cifar10, cifar100).",
    "data_dir": "Directory (or gs:// bucket) holding downloaded datasets.",
    "encoder": "Encoder network; auto = the dataset's own (TreeNet for hltm, ResNet-18 "
               "for images); images: resnet18 | resnet50.",
    "loss": "Contrastive loss: " + ", ".join(config.LOSS_NAMES) + ".",
    "negatives": "auto | explicit (H sampled negatives per anchor) | batch (SimCLR 2N-2).",
    "temperature": "tau of the soft-triplet, InfoNCE, NT-Xent and cov losses (> 0).",
    "margin": "r0 of the soft-triplet loss (>= 0); required with --loss=tri, only there.",
    "beta": "Generalised-loss weight of the positive term (nce, ntxent, cov; > -1).",
    "num_negatives": "H, explicit negatives per anchor.",
    "batch_size": "Global batch size (pairs per step).",
    "epochs": "Training epochs.",
    "steps_per_epoch": "Steps per epoch; 0 = the dataset's natural epoch.",
    "optimizer": "sgd | adam | adamw | lars.",
    "learning_rate": "Base learning rate (> 0).",
    "momentum": "SGD momentum in [0, 1).",
    "weight_decay": "Weight decay (>= 0): decoupled for sgd/adam/adamw, added to the "
                    "gradient for lars; biases and BatchNorm are exempt.",
    "seed": "Random seed: tree polarities, initialisation and data order.",
    "steps_per_execution": "Train steps per tf.function call (cuts host overhead).",
    "jit_compile": "Compile the train step with XLA (one device; TPUs always use XLA).",
    "strategy": "tf.distribute strategy: default (one device) | mirrored (local GPUs) | "
                "multi_worker (machines listed in TF_CONFIG) | tpu (needs --tpu).",
    "tpu": "Cloud TPU name, grpc://HOST:8470 address or 'local' (TPU VM); --strategy=tpu.",
    "num_gpus": "GPUs for --strategy=mirrored; 0 = all visible GPUs.",
    "local_negatives": "In-batch negatives from the replica's own batch only (default: "
                       "the global batch, gathered across replicas).",
    "mixed_precision": "none | bfloat16 (TPU/Ampere) | float16 (dynamic loss scaling); "
                       "losses stay float32.",
    "model_dir": "Output directory: flags.txt, metrics.jsonl, logs/, saved_model/.",
    "verbose": "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.",
    "checkpoint_every": "Epochs between checkpoints in model_dir/checkpoints (and after the "
                        "last epoch); a re-run resumes from the newest readable one.",
    "keep_checkpoints": "Checkpoints kept (>= 2: a corrupt newest one falls back to the "
                        "previous).",
    "deterministic": "Deterministic TF ops (bit-identical resume on CPU); "
                     "--nodeterministic may be faster on GPU. With --jit_compile the XLA "
                     "step is used as compiled (Keras disables XLA under op determinism).",
    "hltm_depth": "HLTM depth L (>= 1).",
    "hltm_children": "HLTM children per latent (>= 2).",
    "hltm_hid": "Hidden units per latent group of the tree network (>= 1).",
    "hltm_delta_lower": "Lower bound of |polarity| in [0, 1].",
    "hltm_delta_upper": "Upper bound of |polarity| in [0, 1].",
    "hltm_samples_per_epoch": "Fresh HLTM samples per training epoch.",
    "hltm_eval_samples": "Held-out HLTM samples for the correlation metric.",
    "image_size": "Image side in pixels; 0 = the data set's own (96 stl10, 32 cifar, 32 "
                  "generated). Required for folders of mixed sizes.",
    "stem": "ResNet stem: cifar (3x3/1, no max-pool) | imagenet (7x7/2 + max-pool) | "
            "auto (imagenet from 96 px).",
    "width_multiplier": "ResNet width multiplier (> 0; 1 = 64..512 channels).",
    "sync_bn": "Cross-replica BatchNorm under a distribution strategy.",
    "proj_dim": "Projection head output size D.",
    "proj_hidden_dim": "Projection head hidden width.",
    "proj_layers": "Projection head Dense layers (0 = no head; 2 = Linear-BN-ReLU-Linear).",
    "probe": "Train an online linear probe on stop_gradient(representation) where the "
             "data has labels; reports probe_acc and probe_test_acc.",
    "color_jitter_strength": "SimCLR colour jitter strength s (1.0 stl10, 0.5 cifar; 0 off).",
    "blur": "SimCLR Gaussian blur with p 0.5 (used for stl10).",
    "shuffle_buffer": "Shuffle buffer of the image pipeline, in examples.",
    "skip_corrupt_images": "Folder data: leave out files that do not decode (counted) "
                           "instead of stopping.",
    "generated_examples": "Training examples of the generated image data set.",
    "generated_classes": "Shape classes of the generated image data set (2..6).",
    "generated_view_jitter": "Generated images: how far each view's position/scale/colour "
                             "moves from the example's own towards a fresh draw (0..1).",
    "lr_schedule": "constant | cosine (decay to 0 over the run, after the warmup).",
    "warmup_epochs": "Linear learning-rate warmup, in epochs.",
    "lr_scaling": "Batch-size scaling of --learning_rate: none | linear (lr*B/256) | "
                  "sqrt (lr*sqrt(B)).",
    "lars_eta": "LARS trust coefficient.",
    "translation1d_length": "Translation toy: circular signal length d (>= 4).",
    "translation1d_filters": "Translation toy: filters of the one-layer conv encoder.",
    "translation1d_kernel": "Translation toy: conv kernel size (1..length).",
    "translation1d_pooling": "Translation toy: pooling over positions, max or avg.",
    "translation1d_bias": "Translation toy: conv bias (a threshold; without it no filter "
                          "can fire for '11' alone).",
    "analysis_every": "Log ||OP_l||_F, ||W_l|| and the alignment of W_l with OP_l's top "
                      "eigenvector every k epochs (hltm, translation1d); 0 = off.",
    "analysis_points": "Base points M (x 8 augmentations) for --analysis_every (>= 2).",
}


def define_flags():
    """One absl flag per TrainConfig field, typed by the field's default.

    A flag of the same name defined earlier in the process is replaced: the test suite loads
    several tools (which share names such as --model_dir) into one interpreter.
    """
    definers = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                float: flags.DEFINE_float, str: flags.DEFINE_string}
    for field in dataclasses.fields(config.TrainConfig):
        if field.name in flags.FLAGS:
            delattr(flags.FLAGS, field.name)
        definers[type(field.default)](field.name, field.default,
                                      HELP.get(field.name, field.name))


EXIT_BAD_INPUT = cli.EXIT_BAD_INPUT  # a flag, config or file is wrong; nothing written
EXIT_NON_FINITE = 3    # the loss became NaN/Inf; the last good checkpoint is kept


def fail(message, status=EXIT_BAD_INPUT):
    cli.fail(TOOL, message, status)


def parse_flags(argv):
    """Parses argv; any flag error is one line on stderr and exit status 2."""
    return cli.parse_flags(TOOL, argv)


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
    cli.run(main, TOOL)
