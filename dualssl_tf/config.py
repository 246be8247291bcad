"""The run configuration: option sections, their validation, and flagfiles.

A :class:`TrainConfig` groups every setting of a training run in sections:
``cfg.data``, ``cfg.method``, ``cfg.optim``, ``cfg.run``, ``cfg.analysis`` (defined here),
the selected methods' options (``cfg.contrastive``, from :mod:`dualssl_tf.methods`) and
the tasks' (``cfg.hltm``, ``cfg.images``, ``cfg.generated``, ``cfg.translation1d``, from
:mod:`dualssl_tf.tasks`). Each field is one command-line flag (``cfg.hltm.depth`` is
``--hltm_depth``); its help text and whether a resumed run may change it are carried by the
field itself (:func:`dualssl_tf.options.option`), and ``tools/train.py`` generates the
absl flags from them. A config is built from flag values: ``TrainConfig(hltm_depth=3)``.

:func:`validate` checks everything before any work starts and raises :class:`ConfigError`
naming the flag, which tools print as one line and exit with status 2. TensorFlow-free, so
bad flags fail in a fraction of a second.
"""

import dataclasses
import json
import os
import tempfile

from dualssl_tf import methods, tasks
from dualssl_tf.optim.rates import (LR_SCALINGS, LR_SCHEDULES, OPTIMIZERS,
                                    WEIGHT_DECAY_MODES, scale_learning_rate)
from dualssl_tf.options import (ConfigError, Section, check_types, choice, option,  # noqa: F401
                                require)

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")   # --strategy (run/distribute.py)
MIXED_PRECISION = ("none", "bfloat16", "float16")


@dataclasses.dataclass
class DataOptions(Section):
    """What is trained on (the task is chosen by ``dataset``; :mod:`dualssl_tf.tasks`)."""
    dataset: str = option("hltm", f"Data: {tasks.describe_datasets()}.")
    data_dir: str = option("", "Directory (or gs:// bucket) holding downloaded datasets.",
                           resumable=True)
    download: bool = option(True, "A TensorFlow Datasets data set not yet prepared in "
                            "--data_dir is downloaded and prepared on first use (tfds' own "
                            "download_and_prepare, with its progress bars); --nodownload "
                            "stops with the `tfds build` command instead. Never with "
                            "--strategy=tpu or a gs:// --data_dir: prepare those once with "
                            "`tfds build NAME --data_dir=gs://...`.", resumable=True)
    encoder: str = option("auto", "Encoder network; auto = the dataset's own (TreeNet for "
                          "hltm, ResNet-18 for images); images: resnet18 | resnet50 | "
                          "vit_tiny | vit_small | vit_base (Vision Transformers, "
                          "--patch_size).")


@dataclasses.dataclass
class MethodOptions(Section):
    """Which method is trained (:data:`dualssl_tf.methods.METHODS`) and its online probe."""
    method: str = option("contrastive", "Training method: " + ", ".join(methods.METHODS)
                         + " (its options: the flags of its section).")
    probe: bool = option(True, "Train an online linear probe on stop_gradient("
                         "representation) where the data has labels, with its own Adam "
                         "optimizer; reports probe_acc and probe_test_acc.")
    probe_learning_rate: float = option(1e-3, "Learning rate of the online probe's own "
                                        "Adam optimizer (no weight decay, no schedule).")

    def validate(self, cfg):
        choice(self.method, tuple(methods.METHODS), "method")
        unused = methods.unused_option(cfg)
        if unused:
            flag, value, owner = unused
            default = _FLAG_SECTION[flag][1].default
            raise ConfigError(flag, f"is an option of --method={owner}, not of --method="
                              f"{self.method}; got --{flag}={_format(value)}, allowed: its "
                              f"default {_format(default)} (drop the flag) or "
                              f"--method={owner}")
        require(self.probe_learning_rate > 0, "probe_learning_rate",
                f"must be > 0, got {self.probe_learning_rate}")


@dataclasses.dataclass
class OptimOptions(Section):
    """The method's optimizer, its schedule and the length of the run."""
    batch_size: int = option(128, "Global batch size (pairs per step).")
    epochs: int = option(50, "Training epochs.", resumable=True)
    steps_per_epoch: int = option(0, "Steps per epoch; 0 = the dataset's natural epoch.")
    optimizer: str = option("sgd", "sgd | adam | adamw | lars.")
    learning_rate: float = option(0.1, "Base learning rate (> 0).")
    momentum: float = option(0.0, "SGD momentum in [0, 1).")
    weight_decay: float = option(0.0, "Weight decay (>= 0), in the form --weight_decay_mode "
                                 "says; biases and BatchNorm are exempt.")
    weight_decay_end: float = option(-1.0, "Weight decay at the end of the run: the "
                                     "coefficient goes from --weight_decay to this by a "
                                     "per-step cosine (DINO's 0.04 -> 0.4 with adamw), in "
                                     "--weight_decay_mode's form; -1 = constant "
                                     "--weight_decay.")
    weight_decay_mode: str = option("decoupled", "Form of --weight_decay for sgd and adam: "
                                    "decoupled (Keras: w -= lr*wd*w each step) | coupled "
                                    "(PyTorch's SGD/Adam: wd*w added to the gradient, before "
                                    "momentum or Adam's moments). adamw is decoupled (coupled "
                                    "is refused); lars is always coupled and ignores it.")
    lr_schedule: str = option("constant", "constant | cosine (decay to 0 over the run, "
                              "after the warmup).")
    min_learning_rate: float = option(0.0, "The rate --lr_schedule=cosine decays to, "
                                      "absolute (not batch-scaled; DINO's min_lr, 1e-6 in "
                                      "its ViT recipes); 0 = decay to 0.")
    warmup_epochs: float = option(0.0, "Linear learning-rate warmup, in epochs.")
    lr_scaling: str = option("none", "Batch-size scaling of --learning_rate: none | linear "
                             "(lr*B/256) | sqrt (lr*sqrt(B)).")
    lars_eta: float = option(0.001, "LARS trust coefficient.")

    def validate(self, cfg):
        require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        require(self.epochs >= 0, "epochs", f"must be >= 0, got {self.epochs}")
        require(self.steps_per_epoch >= 0, "steps_per_epoch",
                f"must be >= 0 (0 = whole dataset), got {self.steps_per_epoch}")
        choice(self.optimizer, OPTIMIZERS, "optimizer")
        require(self.learning_rate > 0, "learning_rate",
                f"must be > 0, got {self.learning_rate}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        choice(self.lr_scaling, LR_SCALINGS, "lr_scaling")
        require(self.min_learning_rate >= 0, "min_learning_rate",
                f"must be >= 0, got {self.min_learning_rate}")
        require(self.min_learning_rate == 0 or self.lr_schedule == "cosine",
                "min_learning_rate", "is the end of --lr_schedule=cosine; set that, or "
                "leave --min_learning_rate at 0")
        peak = scale_learning_rate(self.learning_rate, self.batch_size, self.lr_scaling)
        require(self.min_learning_rate <= peak, "min_learning_rate",
                f"{self.min_learning_rate} is above the peak rate {peak:g} (--learning_rate "
                f"after --lr_scaling); lower it")
        require(0 <= self.warmup_epochs <= max(self.epochs, 0), "warmup_epochs",
                f"must be in [0, --epochs={self.epochs}], got {self.warmup_epochs}")
        require(self.lars_eta > 0, "lars_eta", f"must be > 0, got {self.lars_eta}")
        require(self.weight_decay >= 0, "weight_decay",
                f"must be >= 0, got {self.weight_decay}")
        require(self.weight_decay_end >= 0 or self.weight_decay_end == -1, "weight_decay_end",
                f"must be >= 0, or -1 (constant --weight_decay), got {self.weight_decay_end}")
        choice(self.weight_decay_mode, WEIGHT_DECAY_MODES, "weight_decay_mode")
        require(not (self.optimizer == "adamw" and self.weight_decay_mode == "coupled"),
                "weight_decay_mode", "coupled is not for --optimizer=adamw (AdamW's decay is "
                "decoupled by definition); for Adam with L2 in the gradient use "
                "--optimizer=adam")


@dataclasses.dataclass
class RunOptions(Section):
    """How the run executes: output, devices, precision, fault tolerance."""
    seed: int = option(1, "Random seed: tree polarities, initialisation and data order.")
    steps_per_execution: int = option(1, "Train steps per tf.function call (cuts host "
                                      "overhead).", resumable=True)
    jit_compile: bool = option(False, "Compile the train step with XLA (one device; TPUs "
                               "always use XLA).", resumable=True)
    strategy: str = option("default", "tf.distribute strategy: default (one device) | "
                           "mirrored (local GPUs) | multi_worker (machines listed in "
                           "TF_CONFIG) | tpu (needs --tpu).", resumable=True)
    tpu: str = option("", "Cloud TPU name, grpc://HOST:8470 address or 'local' (TPU VM); "
                      "--strategy=tpu.", resumable=True)
    num_gpus: int = option(0, "GPUs for --strategy=mirrored; 0 = all visible GPUs.",
                           resumable=True)
    sync_bn: bool = option(False, "Cross-replica BatchNorm under a distribution strategy "
                           "(always on with more than one replica).")
    # Not resumable: float16 adds loss-scale variables to the optimizer state.
    mixed_precision: str = option("none", "none | bfloat16 (TPU/Ampere) | float16 (dynamic "
                                  "loss scaling); losses stay float32.")
    model_dir: str = option("", "Output directory: flags.txt, metrics.jsonl, logs/, "
                            "saved_model/.", resumable=True)
    verbose: int = option(1, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per "
                          "epoch.", resumable=True)
    checkpoint_every: int = option(1, "Epochs between checkpoints in model_dir/checkpoints "
                                   "(and after the last epoch); a re-run resumes from the "
                                   "newest readable one.", resumable=True)
    keep_checkpoints: int = option(3, "Checkpoints kept (>= 2: a corrupt newest one falls "
                                   "back to the previous).", resumable=True)
    deterministic: bool = option(True, "Deterministic TF ops (bit-identical resume on the "
                                 "same machine); --nodeterministic may be faster on GPU. With "
                                 "--jit_compile the XLA step is used as compiled (Keras "
                                 "disables XLA under op determinism).", resumable=True)

    def validate(self, cfg):
        require(self.steps_per_execution >= 1, "steps_per_execution",
                f"must be >= 1, got {self.steps_per_execution}")
        require(self.verbose in (0, 1, 2), "verbose", f"must be 0, 1 or 2, got {self.verbose}")
        require(self.checkpoint_every >= 1, "checkpoint_every",
                f"must be >= 1 (epochs between checkpoints), got {self.checkpoint_every}")
        require(self.keep_checkpoints >= 2, "keep_checkpoints",
                f"must be >= 2 (a fallback if the newest is corrupt), got "
                f"{self.keep_checkpoints}")
        require(0 <= self.seed < 2 ** 32, "seed", f"must be in [0, 2**32), got {self.seed}")
        choice(self.strategy, STRATEGIES, "strategy")
        require(self.strategy != "tpu" or self.tpu, "tpu",
                "--strategy=tpu needs --tpu=NAME, --tpu=grpc://HOST:8470 or --tpu=local")
        require(self.strategy == "tpu" or not self.tpu, "tpu",
                f"--tpu is only used with --strategy=tpu (got --strategy={self.strategy})")
        require(self.num_gpus >= 0, "num_gpus", f"must be >= 0 (0 = all), got {self.num_gpus}")
        require(self.strategy == "mirrored" or not self.num_gpus, "num_gpus",
                f"is only used with --strategy=mirrored (got --strategy={self.strategy})")
        if self.strategy == "multi_worker":
            check_tf_config(os.environ.get("TF_CONFIG", ""))
        choice(self.mixed_precision, MIXED_PRECISION, "mixed_precision")
        if self.mixed_precision == "float16":
            check_float16 = getattr(cfg.method_options, "check_float16", None)
            if check_float16:
                check_float16()
        require(bool(self.model_dir), "model_dir",
                "is required: a directory for the run's outputs")
        _check_writable(self.model_dir)


@dataclasses.dataclass
class AnalysisOptions(Section):
    """Per-epoch covariance-operator analysis (:mod:`dualssl_tf.analysis.callback`)."""
    prefix = "analysis_"
    every: int = option(0, "Log the covariance operator OP_l every k epochs; 0 = off. hltm, "
                        "translation1d: ||OP_l||_F, ||W_l|| and the alignment of W_l with "
                        "OP_l's top eigenvector; images (matrix-free): ||OP_l vec W_l||, its "
                        "cosine with the loss gradient, lambda_max, trace, residue.",
                        resumable=True)
    points: int = option(32, "Base points M (x 8 augmentations; images: held-out images x 2 "
                         "views) for --analysis_every (>= 2).", resumable=True)
    layers: str = option("", "Images: comma-separated Dense/Conv layers the monitor analyses "
                         "(default: one conv per ResNet stage, layer<s>_0_conv1).",
                         resumable=True)
    budget: int = option(1, "Images: power-iteration steps and Hutchinson probes per layer "
                         "and analysed epoch (>= 1); an epoch costs layers x (2 + 3 budget) "
                         "+ 1 passes over the M x 2 sample (one more per layer for Theorem "
                         "4's product: ntxent, nce, cov, tri).", resumable=True)

    def validate(self, cfg):
        require(self.every >= 0, "analysis_every",
                f"must be >= 0 (0 = off, k = every k epochs), got {self.every}")
        require(self.points >= 2, "analysis_points",
                f"must be >= 2 (a covariance needs M >= 2 base points), got {self.points}")
        require(self.budget >= 1, "analysis_budget",
                f"must be >= 1 (power steps and trace probes per layer), got {self.budget}")
        for flag, value, default in (("analysis_layers", self.layers, ""),
                                     ("analysis_budget", self.budget, 1)):
            require(self.every > 0 or value == default, flag,
                    "has no effect without --analysis_every; set --analysis_every=1 or drop "
                    "it")


# Section attribute -> Section class, in flag order (flags.txt, --helpfull).
SECTIONS = {"data": DataOptions, "method": MethodOptions}
SECTIONS.update({spec.section: spec.options for spec in methods.METHODS.values()})
SECTIONS.update({"optim": OptimOptions, "run": RunOptions, "analysis": AnalysisOptions})
SECTIONS.update(tasks.option_sections())


def flag_fields():
    """[(flag name, section attribute, dataclasses.Field)] of every flag, in order."""
    out = []
    for attr, cls in SECTIONS.items():
        out.extend((flag, attr, field) for flag, field in cls.flag_fields())
    return out


_FLAG_SECTION = {flag: (attr, field) for flag, attr, field in flag_fields()}
assert len(_FLAG_SECTION) == len(flag_fields()), "two sections declare the same flag"
# Flags that may differ when a run in an existing --model_dir is resumed.
RESUMABLE_FLAGS = frozenset(flag for flag, _, field in flag_fields()
                            if field.metadata["resumable"])


class TrainConfig:
    """All settings of a training run, in sections (see the module docstring).

    Built from flag values (``TrainConfig(dataset="hltm", hltm_depth=3)``; unset flags
    take their defaults); read by section (``cfg.hltm.depth``, ``cfg.optim.batch_size``).
    Unknown flag names raise TypeError.
    """

    def __init__(self, **flags):
        unknown = sorted(set(flags) - set(_FLAG_SECTION))
        if unknown:
            raise TypeError(f"TrainConfig: unknown flags {', '.join(unknown)}")
        for attr, cls in SECTIONS.items():
            values = {field.name: flags[flag] for flag, field in cls.flag_fields()
                      if flag in flags}
            setattr(self, attr, cls(**values))

    def flags(self):
        """{flag name: value} of every flag, in order."""
        return {flag: getattr(getattr(self, attr), field.name)
                for flag, attr, field in flag_fields()}

    def replace(self, **flags):
        """A copy with some flags changed."""
        return TrainConfig(**{**self.flags(), **flags})

    @property
    def method_options(self):
        """The options section of the selected ``--method``."""
        return getattr(self, methods.spec(self.method.method).section)

    @property
    def task(self):
        """The :class:`~dualssl_tf.tasks.TaskSpec` of ``--dataset`` (ConfigError if none)."""
        return tasks.spec(self.data.dataset)

    def __eq__(self, other):
        return isinstance(other, TrainConfig) and self.flags() == other.flags()

    def __repr__(self):
        changed = {k: v for k, v in self.flags().items() if v != TrainConfig._DEFAULTS[k]}
        return f"TrainConfig({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


TrainConfig._DEFAULTS = {flag: field.default for flag, _, field in flag_fields()}


def validate(cfg):
    """Raises ConfigError for the first bad setting; returns cfg unchanged otherwise.

    Order: types, the method's options, optimisation, execution, analysis, the task's
    options (only the selected method's and task's sections are checked), then that a
    run already in ``--model_dir`` was made with the same flags.
    """
    for attr in SECTIONS:
        check_types(getattr(cfg, attr))
    cfg.method.validate(cfg)
    cfg.method_options.validate(cfg)
    cfg.data.validate(cfg)
    cfg.optim.validate(cfg)
    cfg.run.validate(cfg)
    cfg.analysis.validate(cfg)
    cfg.task.validate(cfg)
    check_resume_compatible(cfg)
    return cfg


def check_tf_config(raw):
    """Raises ConfigError(strategy) unless ``raw`` is a usable multi-worker TF_CONFIG."""
    fix = ('set it on every worker, e.g. TF_CONFIG=\'{"cluster": {"worker": '
           '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\'')
    require(bool(raw), "strategy", f"multi_worker needs the TF_CONFIG environment variable; "
            f"{fix}")
    try:
        spec = json.loads(raw)
        workers = spec["cluster"]["worker"]
        ok = (isinstance(workers, list) and len(workers) > 0
              and spec["task"]["type"] in ("worker", "chief")
              and 0 <= int(spec["task"]["index"]) < len(spec["cluster"][spec["task"]["type"]]))
    except (ValueError, KeyError, TypeError):
        ok = False
    require(ok, "strategy", f"TF_CONFIG is not a valid cluster spec ({raw!r}); {fix}")


def _check_writable(path):
    """The model dir, or its nearest existing parent, must be a writable directory.

    URLs (``gs://``, ...) need TensorFlow's file systems; the trainer checks them with
    ``dualssl_tf.runfiles.check_writable`` before writing anything.
    """
    if "://" in path:
        return
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    require(os.path.isdir(probe), "model_dir", f"{probe} exists and is not a directory")
    writable = os.access(probe, os.W_OK | os.X_OK)
    if writable:  # os.access says yes to root everywhere; a real probe file settles it
        try:
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError:
            writable = False
    require(writable, "model_dir",
            f"{probe} is not writable; choose a directory you can write to")


# -- flagfiles -------------------------------------------------------------------------------

def _format(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_flagfile(cfg):
    """Text of a flagfile that reproduces cfg (``--name=value`` lines)."""
    return "".join(f"--{name}={_format(value)}\n" for name, value in cfg.flags().items())


def parse_flagfile(text):
    """{name: value string} of the ``--name=value`` lines of a flagfile (comments and
    other lines are skipped)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("--") and "=" in line:
            name, value = line[2:].split("=", 1)
            values[name] = value
    return values


def read_flagfile(path, read_text=None):
    """{name: value string} of a flagfile; ``read_text(path) -> str`` reads URLs (gs://)."""
    if read_text is not None:
        return parse_flagfile(read_text(path))
    with open(path) as f:
        return parse_flagfile(f.read())


def from_flag_strings(values, unknown="ignore", source="flags.txt"):
    """TrainConfig from ``{name: value string}`` (a run's flags.txt), typed by the flags.

    ``unknown="ignore"`` skips names this version does not have (defaults apply);
    ``"error"`` raises ConfigError("model_dir") naming ``source``. A value that does not
    parse as its flag's type raises ConfigError("model_dir").
    """
    typed = {}
    for name, value in values.items():
        if name not in _FLAG_SECTION:
            if unknown == "error":
                raise ConfigError("model_dir", f"{source}: --{name} is not a flag of this "
                                  "version of tools/train.py")
            continue
        kind = type(_FLAG_SECTION[name][1].default)
        try:
            typed[name] = (value.lower() in ("1", "true", "yes") if kind is bool
                           else kind(value))
        except ValueError:
            raise ConfigError("model_dir", f"{source}: {value!r} is not a valid "
                              f"{kind.__name__} for --{name}") from None
    return TrainConfig(**typed)


def unrecorded_changes_note(cfg):
    """A one-line note on flags that a local ``--model_dir``'s flags.txt does not record
    (it predates them) and that ``cfg`` sets off their defaults, or "" when there are none.

    The run so far was made before such a flag existed, i.e. as with its default (a new
    flag's default keeps the old behaviour); resuming it with another value changes the
    run from here on (e.g. an old ``configs/byol_stl10.cfg`` run resumed with today's
    config, which sets ``--weight_decay_mode=coupled``), which
    :func:`check_resume_compatible` cannot see. A URL or a fresh ``--model_dir`` gives "".
    """
    path = os.path.join(cfg.run.model_dir, "flags.txt")
    if "://" in cfg.run.model_dir or not os.path.isfile(path):
        return ""
    try:
        recorded = read_flagfile(path)
    except (OSError, UnicodeDecodeError):
        return ""   # check_resume_compatible reports an unreadable flags.txt
    defaults = {name: field.default for name, _, field in flag_fields()}
    changed = [(name, value, defaults[name]) for name, value in cfg.flags().items()
               if name not in recorded and name not in RESUMABLE_FLAGS
               and value != defaults[name]]
    if not changed:
        return ""
    return (f"note: {path} predates " + ", ".join(f"--{f}" for f, _, _ in changed)
            + "; the run so far used " + ", ".join(f"--{f}={_format(d)}" for f, _, d in changed)
            + ", resumed with " + ", ".join(f"--{f}={_format(v)}" for f, v, _ in changed))


def check_resume_compatible(cfg, read_text=None, exists=None):
    """Refuses a --model_dir holding a run made with other (non-resumable) flags.

    A run directory records its flags in ``flags.txt``; continuing it with, say, another
    tree depth would restore mismatched weights or mix two experiments in metrics.jsonl.
    Only :data:`RESUMABLE_FLAGS` may change. Flags absent from an older flags.txt are not
    compared.

    Args:
      cfg: the TrainConfig.
      read_text, exists: ``path -> str`` and ``path -> bool`` for a URL ``--model_dir``
        (``dualssl_tf.runfiles.read_text`` / ``exists``; this module stays TensorFlow-free).
        Without them a URL model dir is not checked here; the trainer checks it.
    """
    model_dir = cfg.run.model_dir
    path = os.path.join(model_dir, "flags.txt")
    if "://" in model_dir:
        if read_text is None or (exists is not None and not exists(path)):
            return
    elif not os.path.isfile(path):
        return
    try:
        recorded = read_flagfile(path, read_text)
    except Exception as e:  # noqa: BLE001  OSError, UnicodeDecodeError, TF's OpError (URLs)
        raise ConfigError("model_dir", f"cannot read {path} ({e.__class__.__name__}); "
                          "use a new --model_dir") from None
    for name, value in cfg.flags().items():
        if name in RESUMABLE_FLAGS or name not in recorded:
            continue
        now = _format(value)
        require(recorded[name] == now, name,
                f"{model_dir} holds a run made with --{name}={recorded[name]}, not "
                f"{now}; pass --{name}={recorded[name]} to resume it, or use a new "
                "--model_dir")
