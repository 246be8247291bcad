"""Plain training configuration: one field per command-line flag, and its validation.

Tools parse absl flags into a :class:`TrainConfig`; library code only ever sees this object.
:func:`validate` checks everything before any work starts and raises :class:`ConfigError`
naming the flag, which tools print as one line and exit with status 2.
"""

import dataclasses
import os

# Kept free of TensorFlow so tools can reject bad flags in a fraction of a second.
LOSS_NAMES = ("simp", "tri", "nce", "ntxent", "cov", "nce_batch")


class ConfigError(ValueError):
    """A bad setting; ``flag`` names it, the message says what is allowed."""

    def __init__(self, flag, message):
        super().__init__(f"--{flag}: {message}")
        self.flag = flag


@dataclasses.dataclass
class TrainConfig:
    """All settings of a training run (see tools/train.py for the flag help)."""
    # What to train on and with.
    dataset: str = "hltm"
    data_dir: str = ""
    encoder: str = "auto"
    # Objective.
    loss: str = "nce"
    negatives: str = "auto"          # auto | batch | explicit
    temperature: float = 0.1
    margin: float = 0.0
    beta: float = 0.0
    num_negatives: int = 1
    # Optimisation.
    batch_size: int = 128
    epochs: int = 50
    steps_per_epoch: int = 0         # 0 = the dataset's natural epoch
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 1
    steps_per_execution: int = 1
    jit_compile: bool = False
    # Output.
    model_dir: str = ""
    verbose: int = 1
    # HLTM (DIGEST section 4).
    hltm_depth: int = 5
    hltm_children: int = 2
    hltm_hid: int = 10
    hltm_delta_lower: float = 0.8
    hltm_delta_upper: float = 1.0
    hltm_samples_per_epoch: int = 64000
    hltm_eval_samples: int = 64000


OPTIMIZERS = ("sgd", "adam", "adamw")
NEGATIVES = ("auto", "batch", "explicit")


def _require(cond, flag, message):
    if not cond:
        raise ConfigError(flag, message)


def validate(cfg):
    """Raises ConfigError for the first bad setting; returns cfg unchanged otherwise."""
    _require(cfg.loss in LOSS_NAMES, "loss",
             f"got {cfg.loss!r}; allowed: {', '.join(LOSS_NAMES)}")
    _require(cfg.negatives in NEGATIVES, "negatives",
             f"got {cfg.negatives!r}; allowed: {', '.join(NEGATIVES)}")
    _require(cfg.temperature > 0, "temperature", f"must be > 0, got {cfg.temperature}")
    _require(cfg.margin >= 0, "margin", f"must be >= 0, got {cfg.margin}")
    _require(cfg.beta > -1, "beta", f"must be > -1 (the loss divides by 1 + beta), got {cfg.beta}")
    _require(cfg.beta == 0 or cfg.loss in ("nce", "ntxent", "cov"), "beta",
             f"the generalised loss exists for nce, ntxent and cov, not {cfg.loss!r}; "
             "set --beta=0 or change --loss")
    _require(cfg.num_negatives >= 1, "num_negatives", f"must be >= 1, got {cfg.num_negatives}")
    _require(cfg.batch_size > 0, "batch_size", f"must be > 0, got {cfg.batch_size}")
    _require(cfg.epochs >= 0, "epochs", f"must be >= 0, got {cfg.epochs}")
    _require(cfg.steps_per_epoch >= 0, "steps_per_epoch",
             f"must be >= 0 (0 = whole dataset), got {cfg.steps_per_epoch}")
    _require(cfg.optimizer in OPTIMIZERS, "optimizer",
             f"got {cfg.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    _require(cfg.learning_rate > 0, "learning_rate", f"must be > 0, got {cfg.learning_rate}")
    _require(0 <= cfg.momentum < 1, "momentum", f"must be in [0, 1), got {cfg.momentum}")
    _require(cfg.weight_decay >= 0, "weight_decay", f"must be >= 0, got {cfg.weight_decay}")
    _require(cfg.steps_per_execution >= 1, "steps_per_execution",
             f"must be >= 1, got {cfg.steps_per_execution}")
    _require(bool(cfg.model_dir), "model_dir", "is required: a directory for the run's outputs")
    _check_writable(cfg.model_dir)
    if cfg.dataset == "hltm":
        _validate_hltm(cfg)
    return cfg


def _validate_hltm(cfg):
    _require(cfg.hltm_depth >= 1, "hltm_depth", f"must be >= 1, got {cfg.hltm_depth}")
    _require(cfg.hltm_children >= 2, "hltm_children", f"must be >= 2, got {cfg.hltm_children}")
    _require(cfg.hltm_hid >= 1, "hltm_hid", f"must be >= 1, got {cfg.hltm_hid}")
    for flag in ("hltm_delta_lower", "hltm_delta_upper"):
        value = getattr(cfg, flag)
        _require(0.0 <= value <= 1.0, flag, f"must be in [0, 1], got {value}")
    _require(cfg.hltm_delta_lower <= cfg.hltm_delta_upper, "hltm_delta_lower",
             f"must be <= --hltm_delta_upper ({cfg.hltm_delta_upper}), "
             f"got {cfg.hltm_delta_lower}")
    _require(cfg.hltm_samples_per_epoch >= cfg.batch_size, "hltm_samples_per_epoch",
             f"must be >= --batch_size ({cfg.batch_size}), got {cfg.hltm_samples_per_epoch}")
    _require(cfg.hltm_eval_samples >= 2, "hltm_eval_samples",
             f"must be >= 2, got {cfg.hltm_eval_samples}")
    _require(cfg.negatives != "batch" or cfg.loss != "nce_batch", "negatives",
             "nce_batch is the official code's explicit-negative form; use --negatives=explicit")


def _check_writable(path):
    """The model dir, or its nearest existing parent, must be a writable directory."""
    if "://" in path:  # gs:// and other remote file systems are checked when written
        return
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    _require(os.path.isdir(probe), "model_dir", f"{probe} exists and is not a directory")
    _require(os.access(probe, os.W_OK | os.X_OK), "model_dir",
             f"{probe} is not writable; choose a directory you can write to")


def to_flagfile(cfg):
    """Text of a flagfile that reproduces cfg (``--name=value`` lines)."""
    lines = []
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if isinstance(value, bool):
            value = "true" if value else "false"
        lines.append(f"--{field.name}={value}")
    return "\n".join(lines) + "\n"
