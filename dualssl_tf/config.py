"""Plain training configuration: one field per command-line flag, and its validation.

Tools parse absl flags into a :class:`TrainConfig`; library code only ever sees this object.
:func:`validate` checks everything before any work starts and raises :class:`ConfigError`
naming the flag, which tools print as one line and exit with status 2.
"""

import dataclasses
import json
import math
import os
import re
import tempfile

from dualssl_tf.models import stems

# Kept free of TensorFlow so tools can reject bad flags in a fraction of a second.
LOSS_NAMES = ("simp", "tri", "nce", "ntxent", "cov", "nce_batch")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")   # --strategy (distribute.py)
MIXED_PRECISION = ("none", "bfloat16", "float16")


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
    margin: float = -1.0             # -1 = not given; --loss=tri requires it
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
    # Scale-out (dualssl_tf/distribute.py).
    strategy: str = "default"        # default | mirrored | multi_worker | tpu
    tpu: str = ""
    num_gpus: int = 0                # mirrored: 0 = all local GPUs
    local_negatives: bool = False    # True: in-batch negatives from the local replica only
    mixed_precision: str = "none"    # none | bfloat16 | float16
    # Output.
    model_dir: str = ""
    verbose: int = 1
    # Fault tolerance (dualssl_tf/checkpointing.py).
    checkpoint_every: int = 1        # epochs between checkpoints (and always after the last)
    keep_checkpoints: int = 3        # >= 2, so a corrupt newest one has a fallback
    deterministic: bool = True       # tf.config.experimental.enable_op_determinism()
    # HLTM (DIGEST section 4).
    hltm_depth: int = 5
    hltm_children: int = 2
    hltm_hid: int = 10
    hltm_delta_lower: float = 0.8
    hltm_delta_upper: float = 1.0
    hltm_samples_per_epoch: int = 64000
    hltm_eval_samples: int = 64000
    # Image data sets (generated_images, folder, any tfds name; DIGEST section 6).
    image_size: int = 0              # 0 = the data set's own size (32 for generated)
    stem: str = "auto"               # cifar | imagenet | auto (imagenet from 96 px)
    width_multiplier: float = 1.0
    sync_bn: bool = False
    proj_dim: int = 128
    proj_hidden_dim: int = 512
    proj_layers: int = 2
    probe: bool = True               # online linear probe where the data has labels
    color_jitter_strength: float = 1.0
    blur: bool = False
    shuffle_buffer: int = 10000
    skip_corrupt_images: bool = False
    generated_examples: int = 10000
    generated_classes: int = 6
    generated_view_jitter: float = 0.5
    # Learning-rate schedule and LARS.
    lr_schedule: str = "constant"    # constant | cosine (after warmup)
    warmup_epochs: float = 0.0
    lr_scaling: str = "none"         # none | linear (lr B/256) | sqrt (lr sqrt(B))
    lars_eta: float = 0.001
    # 1-D translation toy (DIGEST section 5).
    translation1d_length: int = 12
    translation1d_filters: int = 8
    translation1d_kernel: int = 3
    translation1d_pooling: str = "max"   # max | avg over positions
    translation1d_bias: bool = True
    # Per-epoch covariance-operator analysis (dualssl_tf.analysis.callback).
    analysis_every: int = 0          # 0 = off
    analysis_points: int = 32        # M base points (x 8 augmentations) per analysis


OPTIMIZERS = ("sgd", "adam", "adamw", "lars")
NEGATIVES = ("auto", "batch", "explicit")
LR_SCHEDULES = ("constant", "cosine")
LR_SCALINGS = ("none", "linear", "sqrt")
# --dataset values with their own builder; any other valid name is a tfds data set.
IMAGE_DATASETS = ("generated_images", "folder")
# Non-image families (ARCHITECTURE.md); their own validation lives beside hltm's.
NON_IMAGE_DATASETS = ("hltm", "translation1d")
IMAGE_ENCODERS = ("auto", "resnet18", "resnet50")
# tfds names: lower-case identifier, optional /config and :version.
_TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.\-]+)?(:[0-9.*]+)?$")
# Native image side of the paper's data sets (used when --image_size=0).
NATIVE_IMAGE_SIZE = {"stl10": 96, "cifar10": 32, "cifar100": 32, "generated_images": 32}


def is_image_dataset(name):
    """True for generated_images, folder and names shaped like tfds data sets
    (``name[/config][:version]``, lower case); whether tfds knows the name is checked when
    the data is opened."""
    return name in IMAGE_DATASETS or (name not in NON_IMAGE_DATASETS
                                      and bool(_TFDS_NAME.match(name)))
# Flags that may differ when a run in an existing --model_dir is resumed: they change how
# the run executes (devices, monitoring, fault handling) or how long it goes on, not what is
# trained. Every other flag must equal the value recorded in model_dir/flags.txt (see
# check_resume_compatible); mixed_precision is not here because float16 adds loss-scale
# variables to the optimizer state.
RESUMABLE_FLAGS = frozenset({"epochs", "verbose", "model_dir", "data_dir", "checkpoint_every",
                             "keep_checkpoints", "steps_per_execution", "jit_compile",
                             "deterministic", "strategy", "tpu", "num_gpus", "analysis_every",
                             "analysis_points", "skip_corrupt_images"})
MAX_HLTM_LEAVES = 2 ** 20  # c**L inputs; beyond this one batch no longer fits in memory


def _require(cond, flag, message):
    if not cond:
        raise ConfigError(flag, message)


def validate(cfg):
    """Raises ConfigError for the first bad setting; returns cfg unchanged otherwise."""
    _validate_types(cfg)
    _require(cfg.loss in LOSS_NAMES, "loss",
             f"got {cfg.loss!r}; allowed: {', '.join(LOSS_NAMES)}")
    _require(cfg.negatives in NEGATIVES, "negatives",
             f"got {cfg.negatives!r}; allowed: {', '.join(NEGATIVES)}")
    _require(cfg.temperature > 0, "temperature", f"must be > 0, got {cfg.temperature}")
    if cfg.loss == "tri":
        _require(cfg.margin != -1.0, "margin", "--loss=tri needs the margin r0 given "
                 "explicitly (>= 0), e.g. --margin=0.5")
        _require(cfg.margin >= 0, "margin", f"must be >= 0, got {cfg.margin}")
    else:
        _require(cfg.margin == -1.0, "margin", f"only --loss=tri uses a margin, got "
                 f"--margin={cfg.margin} with --loss={cfg.loss}; drop --margin")
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
    _require(cfg.lr_schedule in LR_SCHEDULES, "lr_schedule",
             f"got {cfg.lr_schedule!r}; allowed: {', '.join(LR_SCHEDULES)}")
    _require(cfg.lr_scaling in LR_SCALINGS, "lr_scaling",
             f"got {cfg.lr_scaling!r}; allowed: {', '.join(LR_SCALINGS)}")
    _require(0 <= cfg.warmup_epochs <= max(cfg.epochs, 0), "warmup_epochs",
             f"must be in [0, --epochs={cfg.epochs}], got {cfg.warmup_epochs}")
    _require(cfg.lars_eta > 0, "lars_eta", f"must be > 0, got {cfg.lars_eta}")
    _require(cfg.weight_decay >= 0, "weight_decay", f"must be >= 0, got {cfg.weight_decay}")
    _require(cfg.steps_per_execution >= 1, "steps_per_execution",
             f"must be >= 1, got {cfg.steps_per_execution}")
    _require(cfg.verbose in (0, 1, 2), "verbose", f"must be 0, 1 or 2, got {cfg.verbose}")
    _require(cfg.checkpoint_every >= 1, "checkpoint_every",
             f"must be >= 1 (epochs between checkpoints), got {cfg.checkpoint_every}")
    _require(cfg.keep_checkpoints >= 2, "keep_checkpoints",
             f"must be >= 2 (a fallback if the newest is corrupt), got {cfg.keep_checkpoints}")
    _require(0 <= cfg.seed < 2 ** 32, "seed", f"must be in [0, 2**32), got {cfg.seed}")
    _validate_distribution(cfg)
    _require(bool(cfg.model_dir), "model_dir", "is required: a directory for the run's outputs")
    _check_writable(cfg.model_dir)
    _require(cfg.analysis_every >= 0, "analysis_every",
             f"must be >= 0 (0 = off, k = every k epochs), got {cfg.analysis_every}")
    _require(cfg.analysis_points >= 2, "analysis_points",
             f"must be >= 2 (a covariance needs M >= 2 base points), got {cfg.analysis_points}")
    if cfg.dataset == "hltm":
        _validate_hltm(cfg)
    elif cfg.dataset == "translation1d":
        _validate_translation1d(cfg)
    elif is_image_dataset(cfg.dataset):
        _validate_images(cfg)
    else:
        raise ConfigError("dataset", f"unknown dataset {cfg.dataset!r}; allowed: hltm, "
                          "translation1d, generated_images, folder or a TensorFlow Datasets "
                          "name such as stl10, cifar10, cifar100")
    check_resume_compatible(cfg)
    return cfg


def _validate_types(cfg):
    """Every field has its default's type, floats are finite and ints fit in int32."""
    for field in dataclasses.fields(cfg):
        value, kind = getattr(cfg, field.name), type(field.default)
        if kind in (bool, str):
            ok = isinstance(value, kind)
        else:  # an int is a fine float; a bool is neither
            ok = isinstance(value, (int, kind)) and not isinstance(value, bool)
        _require(ok, field.name, f"must be a {kind.__name__}, got {value!r}")
        if kind is float:
            _require(math.isfinite(value), field.name, f"must be a finite number, got {value}")
        if kind is int:
            _require(abs(value) < 2 ** 31, field.name, f"must be below 2**31, got {value}")


def image_size(cfg):
    """The image side a run uses: --image_size, else the data set's native size (0 when
    unknown before the data is opened, e.g. a folder or another tfds data set)."""
    return cfg.image_size or NATIVE_IMAGE_SIZE.get(cfg.dataset.split(":")[0], 0)


def _validate_images(cfg):
    """Checks of the image path that need no data (the builder checks the rest)."""
    _require(cfg.dataset != "folder" or cfg.data_dir, "data_dir",
             "is required with --dataset=folder: a directory of images, one sub-folder "
             "per class")
    _require(cfg.encoder in IMAGE_ENCODERS, "encoder",
             f"got {cfg.encoder!r}; allowed for image data: {', '.join(IMAGE_ENCODERS)}")
    _require(cfg.stem in stems.STEMS, "stem",
             f"got {cfg.stem!r}; allowed: {', '.join(stems.STEMS)}")
    _require(cfg.image_size >= 0, "image_size", f"must be >= 0, got {cfg.image_size}")
    size = image_size(cfg)
    if size:
        stem = stems.resolve_stem(cfg.stem, size)
        low = stems.MIN_IMAGE_SIZE[stem]
        _require(size >= low, "image_size",
                 f"{size} px is too small for the {stem} stem (needs >= {low}); use "
                 "--stem=cifar or a larger --image_size")
    _require(cfg.width_multiplier > 0, "width_multiplier",
             f"must be > 0, got {cfg.width_multiplier}")
    for flag in ("proj_dim", "proj_hidden_dim"):
        _require(getattr(cfg, flag) >= 1, flag, f"must be >= 1, got {getattr(cfg, flag)}")
    _require(cfg.proj_layers >= 0, "proj_layers",
             f"must be >= 0 (0 = no head), got {cfg.proj_layers}")
    _require(cfg.color_jitter_strength >= 0, "color_jitter_strength",
             f"must be >= 0, got {cfg.color_jitter_strength}")
    _require(cfg.shuffle_buffer >= 1, "shuffle_buffer",
             f"must be >= 1, got {cfg.shuffle_buffer}")
    _require(cfg.negatives != "explicit", "negatives",
             "image data sets use in-batch negatives; use --negatives=batch or auto")
    if cfg.dataset == "generated_images":
        _require(2 <= cfg.generated_classes <= 6, "generated_classes",
                 f"must be in [2, 6], got {cfg.generated_classes}")
        _require(0 <= cfg.generated_view_jitter <= 1, "generated_view_jitter",
                 f"must be in [0, 1], got {cfg.generated_view_jitter}")
        _require(cfg.generated_examples >= cfg.batch_size, "batch_size",
                 f"{cfg.batch_size} is larger than the generated data set "
                 f"(--generated_examples={cfg.generated_examples}); lower --batch_size")


def _validate_translation1d(cfg):
    _require(cfg.translation1d_length >= 4, "translation1d_length",
             f"must be >= 4 to hold the object '101', got {cfg.translation1d_length}")
    _require(cfg.translation1d_filters >= 1, "translation1d_filters",
             f"must be >= 1, got {cfg.translation1d_filters}")
    _require(1 <= cfg.translation1d_kernel <= cfg.translation1d_length, "translation1d_kernel",
             f"must be in [1, --translation1d_length={cfg.translation1d_length}], "
             f"got {cfg.translation1d_kernel}")
    _require(cfg.translation1d_pooling in ("max", "avg"), "translation1d_pooling",
             f"got {cfg.translation1d_pooling!r}; allowed: max, avg")
    _require(cfg.negatives != "explicit", "negatives",
             "translation1d has no explicit negatives; use --negatives=auto or batch")


def _validate_distribution(cfg):
    _require(cfg.strategy in STRATEGIES, "strategy",
             f"got {cfg.strategy!r}; allowed: {', '.join(STRATEGIES)}")
    _require(cfg.strategy != "tpu" or cfg.tpu, "tpu",
             "--strategy=tpu needs --tpu=NAME, --tpu=grpc://HOST:8470 or --tpu=local")
    _require(cfg.strategy == "tpu" or not cfg.tpu, "tpu",
             f"--tpu is only used with --strategy=tpu (got --strategy={cfg.strategy})")
    _require(cfg.num_gpus >= 0, "num_gpus", f"must be >= 0 (0 = all), got {cfg.num_gpus}")
    _require(cfg.strategy == "mirrored" or not cfg.num_gpus, "num_gpus",
             f"is only used with --strategy=mirrored (got --strategy={cfg.strategy})")
    if cfg.strategy == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG", ""))
    _require(cfg.mixed_precision in MIXED_PRECISION, "mixed_precision",
             f"got {cfg.mixed_precision!r}; allowed: {', '.join(MIXED_PRECISION)}")
    if cfg.mixed_precision == "float16":
        _check_float16(cfg)


# ln(65504): e^x overflows float16 (max 65504) above this.
FLOAT16_MAX_EXP = math.log(65504.0)


def max_loss_exponent(loss, temperature, margin=0.0):
    """Largest exponent e^x the loss forms for unit embeddings (distances in [0, 2]).

    nce/ntxent: logsumexp of -r/tau; cov: sigmoid(-r/tau); tri: (r+ - r- + r0)/tau; simp and
    nce_batch (batch means divided by the width) form no large exponent: 0.
    """
    if loss in ("nce", "ntxent", "cov"):
        return 2.0 / temperature
    if loss == "tri":
        return (2.0 + margin) / temperature
    return 0.0


def _check_float16(cfg):
    """float16 (max 65504) cannot hold e^x for x > 11.09.

    DualModel computes losses in float32, so this is a conservative guard: it keeps every
    exponent the loss forms representable in the float16 compute dtype (and thus the
    loss-scaled values of any float16 loss code path); bfloat16 has float32's range and
    has no such limit.
    """
    x = max_loss_exponent(cfg.loss, cfg.temperature, cfg.margin)
    if x > FLOAT16_MAX_EXP:
        need = (2.0 + (cfg.margin if cfg.loss == "tri" else 0.0)) / FLOAT16_MAX_EXP
        raise ConfigError("mixed_precision",
                          f"float16 overflows with --loss={cfg.loss} at --temperature="
                          f"{cfg.temperature} (e^{x:.1f} > 65504); use "
                          f"--mixed_precision=bfloat16 or --temperature >= {math.ceil(need * 1000) / 1000}")


def check_tf_config(raw):
    """Raises ConfigError(strategy) unless ``raw`` is a usable multi-worker TF_CONFIG."""
    fix = ('set it on every worker, e.g. TF_CONFIG=\'{"cluster": {"worker": '
           '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\'')
    _require(bool(raw), "strategy", f"multi_worker needs the TF_CONFIG environment variable; "
             f"{fix}")
    try:
        spec = json.loads(raw)
        workers = spec["cluster"]["worker"]
        ok = (isinstance(workers, list) and len(workers) > 0
              and spec["task"]["type"] in ("worker", "chief")
              and 0 <= int(spec["task"]["index"]) < len(spec["cluster"][spec["task"]["type"]]))
    except (ValueError, KeyError, TypeError):
        ok = False
    _require(ok, "strategy", f"TF_CONFIG is not a valid cluster spec ({raw!r}); {fix}")


def _validate_hltm(cfg):
    _require(cfg.hltm_depth >= 1, "hltm_depth", f"must be >= 1, got {cfg.hltm_depth}")
    _require(cfg.hltm_children >= 2, "hltm_children", f"must be >= 2, got {cfg.hltm_children}")
    _require(cfg.hltm_hid >= 1, "hltm_hid", f"must be >= 1, got {cfg.hltm_hid}")
    for flag in ("hltm_delta_lower", "hltm_delta_upper"):
        value = getattr(cfg, flag)
        _require(0.0 <= value <= 1.0, flag, f"must be in [0, 1], got {value}")
    _require(cfg.hltm_children ** cfg.hltm_depth <= MAX_HLTM_LEAVES, "hltm_depth",
             f"--hltm_children={cfg.hltm_children} ** --hltm_depth={cfg.hltm_depth} leaves "
             f"exceed {MAX_HLTM_LEAVES}; use a smaller tree")
    _require(cfg.encoder == "auto", "encoder",
             f"hltm trains its tree network; use --encoder=auto, got {cfg.encoder!r}")
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
    _require(os.path.isdir(probe), "model_dir", f"{probe} exists and is not a directory")
    writable = os.access(probe, os.W_OK | os.X_OK)
    if writable:  # os.access says yes to root everywhere; a real probe file settles it
        try:
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError:
            writable = False
    _require(writable, "model_dir",
             f"{probe} is not writable; choose a directory you can write to")


def _format(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_flagfile(cfg):
    """Text of a flagfile that reproduces cfg (``--name=value`` lines)."""
    lines = [f"--{field.name}={_format(getattr(cfg, field.name))}"
             for field in dataclasses.fields(cfg)]
    return "\n".join(lines) + "\n"


def parse_flagfile(text):
    """{name: value string} of the text of a flagfile written by :func:`to_flagfile`."""
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
    path = os.path.join(cfg.model_dir, "flags.txt")
    if "://" in cfg.model_dir:
        if read_text is None or (exists is not None and not exists(path)):
            return
    elif not os.path.isfile(path):
        return
    try:
        recorded = read_flagfile(path, read_text)
    except Exception as e:  # noqa: BLE001  OSError, UnicodeDecodeError, TF's OpError (URLs)
        raise ConfigError("model_dir", f"cannot read {path} ({e.__class__.__name__}); "
                          "use a new --model_dir") from None
    for field in dataclasses.fields(cfg):
        name = field.name
        if name in RESUMABLE_FLAGS or name not in recorded:
            continue
        now = _format(getattr(cfg, name))
        _require(recorded[name] == now, name,
                 f"{cfg.model_dir} holds a run made with --{name}={recorded[name]}, not "
                 f"{now}; pass --{name}={recorded[name]} to resume it, or use a new "
                 "--model_dir")
