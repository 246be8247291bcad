"""Images (docs/theory.md section 6): tfds data sets, image folders, generated shapes.

Options and their validation (TensorFlow-free); the data, the encoder (ResNet or ViT), the
projection head,
the online probe and the monitors are built in :mod:`dualssl_tf.tasks.images.task`.
"""

import dataclasses
import math
import os
import re

from dualssl_tf import methods
from dualssl_tf.data import image_rules
from dualssl_tf.data.holdout import own_split
from dualssl_tf.models import stems
from dualssl_tf.options import ConfigError, Section, choice, option, require
from dualssl_tf.tasks.base import TaskSpec

# --dataset values with their own source; any other tfds-shaped name is a tfds data set.
OWN_SOURCES = ("generated_images", "folder")
ENCODERS = ("auto", "resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base")
# --augment_on: where the SimCLR views are made (auto = device when a GPU/TPU is there).
AUGMENT_ON = ("auto", "host", "device")
# --augment_preset: the field's view recipes, what each sets when its flag is left empty:
# the crop's area range (torchvision's RandomResizedCrop scale), the blur probability of
# view 1 and view 2 (only with --blur or --blur_prob: the CIFAR recipes of all three drop
# the blur) and the solarisation probability of each view. SimCLR: Chen et al. 2020 and
# lightly's SimCLRTransform; BYOL: Grill et al. 2020, lightly's BYOLView1/2Transform and
# solo-learn's asymmetric augmentations; SimSiam: Chen & He 2021 (crop scale 0.2). All
# three flip with p 0.5 (--flip_prob). Their colour jitter, (0.4, 0.4, 0.4, 0.1) for
# SimSiam and (0.4, 0.4, 0.2, 0.1) for BYOL, is --color_jitter_strength=0.5 (saturation
# 0.4), left to that flag.
AUGMENT_PRESETS = {
    "simclr": {"crop_area": (0.08, 1.0), "blur_prob": (0.5, 0.5),
               "solarize_prob": (0.0, 0.0)},
    "byol": {"crop_area": (0.08, 1.0), "blur_prob": (1.0, 0.1),
             "solarize_prob": (0.0, 0.2)},
    "simsiam": {"crop_area": (0.2, 1.0), "blur_prob": (0.5, 0.5),
                "solarize_prob": (0.0, 0.0)},
    # DINO (Caron et al. 2021, main_dino.py DataAugmentationDINO): BYOL's global views
    # with the global crops at scale 0.4-1 (its default with local crops).
    "dino": {"crop_area": (0.4, 1.0), "blur_prob": (1.0, 0.1),
             "solarize_prob": (0.0, 0.2)},
}
# Multi-crop's local crops (DINO's DataAugmentationDINO): area 0.05-0.4, 96 px at 224
# (3/7 of the side), blur p 0.5 (with --blur), no solarisation; the colour jitter, flip
# and grayscale are the global views'.
LOCAL_CROP_AREA = (0.05, 0.4)
LOCAL_CROP_RATIO = 96 / 224
LOCAL_BLUR_PROB = 0.5
# The augmentation flags the generated shapes cannot take, with their defaults.
_VIEW_FLAGS = {"augment_preset": "simclr", "crop_area": "", "flip_prob": 0.5,
               "blur_prob": "", "solarize_prob": ""}
# tfds names: lower-case identifier, optional /config and :version.
_TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.\-]+)?(:[0-9.*]+)?$")
# Native image side of the paper's data sets (used when --image_size=0).
NATIVE_IMAGE_SIZE = {"stl10": 96, "cifar10": 32, "cifar100": 32, "generated_images": 32}


def is_image_dataset(name):
    """True for generated_images, folder and names shaped like tfds data sets
    (``name[/config][:version]``, lower case) that no other task serves; whether tfds
    knows the name is checked when the data is opened."""
    from dualssl_tf import tasks   # the registry imports this module: looked up per call
    others = {n for n in tasks.dataset_names() if n not in OWN_SOURCES}
    return name in OWN_SOURCES or (name not in others and bool(_TFDS_NAME.match(name)))


def is_vit(encoder):
    """Whether ``--encoder`` names a Vision Transformer (no stem; --patch_size)."""
    return encoder.startswith("vit_")


def image_size(cfg):
    """The image side a run uses: --image_size, else the data set's native size (0 when
    unknown before the data is opened, e.g. a folder or another tfds data set)."""
    return cfg.images.image_size or NATIVE_IMAGE_SIZE.get(cfg.data.dataset.split(":")[0], 0)


def check_stem_size(stem, size):
    """ConfigError naming --image_size when ``size`` px is below what ``stem`` (``auto``
    resolved for that size) can take."""
    stem = stems.resolve_stem(stem, size)
    low = stems.MIN_IMAGE_SIZE[stem]
    require(size >= low, "image_size", f"{size} px is too small for the {stem} stem (needs "
            f">= {low}); use --stem=cifar or a larger --image_size")


def check_folder(path):
    """Before TensorFlow is imported: a local --data_dir of --dataset=folder exists, is a
    directory and holds at least one image file (the walk stops at the first). URLs are
    checked when the data is opened."""
    if not path or "://" in path:
        return
    require(os.path.exists(path), "data_dir", f"{path} does not exist")
    require(os.path.isdir(path), "data_dir", f"{path} is not a directory")
    for _, _, files in os.walk(path, followlinks=True):
        if any(image_rules.is_image_file(f) for f in files):
            return
    raise ConfigError("data_dir", f"{path} contains no image files "
                      f"({', '.join(image_rules.IMAGE_EXTENSIONS)})")


@dataclasses.dataclass
class ImageOptions(Section):
    """The encoder (ResNet or ViT), its projection head and the SimCLR augmentations."""
    image_size: int = option(0, "Image side in pixels; 0 = the data set's own (96 stl10, 32 "
                             "cifar, 32 generated). Required for folders of mixed sizes.")
    stem: str = option("auto", "ResNet stem: cifar (3x3/1, no max-pool) | imagenet (7x7/2 + "
                       "max-pool) | auto (imagenet from 96 px). A ViT has none (ignored).")
    width_multiplier: float = option(1.0, "ResNet width multiplier (> 0; 1 = 64..512 "
                                     "channels). A ViT's width is its size's (ignored).")
    patch_size: int = option(0, "ViT encoders: patch side P in pixels, dividing the image "
                             "size; 0 = the recipes' 4 up to 32 px, 8 up to 96 px, 16 above.")
    proj_dim: int = option(128, "Projection head output size D.")
    proj_hidden_dim: int = option(512, "Projection head hidden width.")
    proj_layers: int = option(2, "Projection head Dense layers (0 = no head; 2 = "
                              "Linear-BN-ReLU-Linear).")
    proj_bn: bool = option(True, "BatchNorm in the projection head's hidden layers "
                           "(--noproj_bn: Linear-ReLU-Linear, for the BYOL/SimSiam BatchNorm "
                           "study).")
    color_jitter_strength: float = option(1.0, "SimCLR colour jitter strength s (1.0 stl10, "
                                          "0.5 cifar; 0 off).")
    blur: bool = option(False, "Gaussian blur with the --augment_preset's probabilities "
                        "(simclr, simsiam: p 0.5 each view; byol: 1.0 / 0.1); used for "
                        "stl10, off in the presets' CIFAR recipes.")
    augment_preset: str = option("simclr", "View recipe: simclr | byol | simsiam; sets what "
                                 "--crop_area, --blur_prob and --solarize_prob leave "
                                 "empty (simclr: crop 0.08-1, blur 0.5 / 0.5, no "
                                 "solarisation; byol: crop 0.08-1, blur 1.0 / 0.1, "
                                 "solarisation 0 / 0.2; simsiam: crop 0.2-1, blur 0.5 / "
                                 "0.5). Colour jitter is --color_jitter_strength's.")
    crop_area: str = option("", "MIN,MAX: area fraction range of the random resized crop, "
                            "0 < MIN <= MAX <= 1 (e.g. 0.3,1 for small images); empty: "
                            "the --augment_preset's.")
    flip_prob: float = option(0.5, "Probability of the horizontal flip (0: none).")
    blur_prob: str = option("", "Gaussian blur probability, P for both views or P1,P2 per "
                            "view (BYOL: 1.0,0.1); turns the blur on without --blur; "
                            "empty: the --augment_preset's, with --blur.")
    solarize_prob: str = option("", "Solarisation probability (values >= 0.5 become 1 - x), "
                                "P for both views or P1,P2 per view (BYOL: 0,0.2); empty: "
                                "the --augment_preset's.")
    augment_on: str = option("auto", "Where the SimCLR views are made: host (tf.data on the "
                             "CPU, per image) | device (inside the compiled train step, "
                             "batched, on the GPU/TPU; the host only decodes and batches "
                             "uint8 images, resized to --image_size when they vary in size) "
                             "| auto (device when a GPU is visible or --strategy=tpu, else "
                             "host; the resolved value is kept in run.json and a resumed "
                             "run keeps it).")
    shuffle_buffer: int = option(10000, "Shuffle buffer of the image pipeline, in examples.")
    holdout_fraction: float = option(0.0, "Folder data without train/ and val/ (or test/) "
                                     "sub-folders: set aside this fraction of every class "
                                     "(seeded, stratified), never pretrained on, as the "
                                     "test split of the online probe and linear_eval.py; "
                                     "the model card records the files. 0 = none.")
    holdout_seed: int = option(0, "Seed of the --holdout_fraction split (independent of "
                               "--seed, so runs of several seeds hold out the same files).")
    skip_corrupt_images: bool = option(False, "Folder data: leave out files that do not "
                                       "decode (counted) instead of stopping.",
                                       resumable=True)
    knn_monitor: bool = option(True, "Online kNN monitor: knn_top1, the kNN top-1 of the "
                               "representation on the held-out images (the offline kNN's "
                               "temperature-weighted vote, T 0.07), at initialisation and "
                               "every epoch, when the data has labels and a test split; "
                               "--noknn_monitor: off.", resumable=True)
    knn_monitor_k: str = option("20", "k of the online kNN: K or K1,K2,... (each >= 1); the "
                                "first is knn_top1, with several each is also "
                                "knn_top1@K.", resumable=True)
    knn_monitor_bank: int = option(5000, "Most labelled training images in the online "
                                   "kNN's bank, the first in order (>= 1; its cost: a "
                                   "forward pass each per epoch).", resumable=True)
    local_crops: int = option(0, "Multi-crop: N local crops per image besides the two "
                              "global views (>= 0; DINO ImageNet 8, solo-learn CIFAR 6); "
                              "only for methods that take them (--method=dino).")
    local_crop_size: int = option(0, "Side of the local crops in pixels (0: 3/7 of "
                                  "--image_size, DINO's 96 at 224; solo-learn CIFAR 18).")
    local_crop_area: str = option("", "MIN,MAX: area fraction range of the local crops, "
                                  "0 < MIN <= MAX <= 1; empty: DINO's 0.05,0.4. (The global "
                                  "views' is --crop_area.)")

    def validate(self, cfg):
        """Checks that need no data (the task's build checks the rest)."""
        require(cfg.data.dataset != "folder" or cfg.data.data_dir, "data_dir",
                "is required with --dataset=folder: a directory of images, one sub-folder "
                "per class")
        if cfg.data.dataset == "folder":
            check_folder(cfg.data.data_dir)
        require(0 <= self.holdout_fraction < 1, "holdout_fraction",
                f"must be in [0, 1), got {self.holdout_fraction}")
        if self.holdout_fraction > 0:
            require(cfg.data.dataset == "folder", "holdout_fraction",
                    f"only for --dataset=folder; {cfg.data.dataset} has its own test split")
            require("://" in cfg.data.data_dir or not own_split(cfg.data.data_dir),
                    "holdout_fraction",
                    f"{cfg.data.data_dir} has its own held-out split (train/ and val/ or "
                    "test/ sub-folders); drop --holdout_fraction")
        require(cfg.data.encoder in ENCODERS, "encoder",
                f"got {cfg.data.encoder!r}; allowed for image data: {', '.join(ENCODERS)}")
        choice(self.stem, stems.STEMS, "stem")
        require(self.image_size >= 0, "image_size", f"must be >= 0, got {self.image_size}")
        size = image_size(cfg)
        require(self.patch_size >= 0, "patch_size", f"must be >= 0, got {self.patch_size}")
        if not is_vit(cfg.data.encoder):
            require(self.patch_size == 0, "patch_size", "only for --encoder=vit_tiny|"
                    f"vit_small|vit_base; drop it for --encoder={cfg.data.encoder}")
        elif size:
            problem = stems.patch_size_problem(size, self.patch_size)
            require(problem is None, "patch_size", problem)
        if size and not is_vit(cfg.data.encoder):
            check_stem_size(self.stem, size)
        require(self.width_multiplier > 0, "width_multiplier",
                f"must be > 0, got {self.width_multiplier}")
        for flag in ("proj_dim", "proj_hidden_dim"):
            require(getattr(self, flag) >= 1, flag, f"must be >= 1, got {getattr(self, flag)}")
        require(self.proj_layers >= 0, "proj_layers",
                f"must be >= 0 (0 = no head), got {self.proj_layers}")
        require(self.color_jitter_strength >= 0, "color_jitter_strength",
                f"must be >= 0, got {self.color_jitter_strength}")
        view_settings(self)  # the augmentation flags' ranges
        local_view_settings(self, size or 32)
        if size and is_vit(cfg.data.encoder):
            check_vit_local_crops(self, size)
        if self.local_crops > 0:
            require(methods.spec(cfg.method.method).multi_crop, "local_crops",
                    f"--method={cfg.method.method} uses the two global views only; set "
                    "--local_crops=0 or use a multi-crop method (--method=dino)")
        if cfg.data.dataset == "generated_images":
            for flag, default in _VIEW_FLAGS.items():
                require(getattr(self, flag) == default, flag,
                        "--dataset=generated_images renders its own views (shapes re-drawn "
                        "per view) and takes no augmentation settings; drop it, or use "
                        "--dataset=folder or a tfds data set")
        choice(self.augment_on, AUGMENT_ON, "augment_on")
        problem = image_rules.device_views_problem(
            self.augment_on, cfg.data.dataset == "generated_images",
            "--dataset=generated_images (shapes re-drawn per view)")
        require(not problem, "augment_on", problem)
        require(self.shuffle_buffer >= 1, "shuffle_buffer",
                f"must be >= 1, got {self.shuffle_buffer}")
        knn_monitor_ks(self)
        require(self.knn_monitor_bank >= 1, "knn_monitor_bank",
                f"must be >= 1, got {self.knn_monitor_bank}")
        if cfg.method.method == "contrastive":  # the contrastive method's options only
            require(cfg.contrastive.negatives != "explicit", "negatives",
                    "image data sets use in-batch negatives; use --negatives=batch or auto")


def knn_monitor_ks(o):
    """``--knn_monitor_k`` of an :class:`ImageOptions` as a list of ints >= 1 (repeats
    once); ConfigError naming the flag otherwise."""
    fix = (f"expected K or K1,K2,... with each K an integer >= 1 (e.g. 20,200); got "
           f"{o.knn_monitor_k!r}")
    try:
        ks = [int(v) for v in o.knn_monitor_k.split(",")]
    except ValueError:
        raise ConfigError("knn_monitor_k", fix) from None
    require(ks and min(ks) >= 1, "knn_monitor_k", fix)
    return list(dict.fromkeys(ks))


def _probabilities(text, flag):
    """``P`` or ``P1,P2`` -> (view 1, view 2) probabilities, each in [0, 1]."""
    fix = (f"expected a probability in [0, 1], or one per view as P1,P2 (e.g. 1.0,0.1); "
           f"got {text!r}")
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(flag, fix) from None
    require(len(values) in (1, 2) and all(0 <= v <= 1 for v in values), flag, fix)
    return (values[0], values[-1])


def _area_range(text, flag, example):
    """``MIN,MAX`` of ``--flag`` -> (min, max) area fractions, 0 < min <= max <= 1."""
    fix = (f"expected MIN,MAX area fractions with 0 < MIN <= MAX <= 1 (e.g. {example}); "
           f"got {text!r}")
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(flag, fix) from None
    require(len(values) == 2 and all(math.isfinite(v) for v in values)
            and 0 < values[0] <= values[1] <= 1, flag, fix)
    return tuple(values)


def local_view_settings(o, size):
    """The local crops of an :class:`ImageOptions` for views of side ``size``: None
    without them (``--local_crops=0``), else ``{"num": N, "size": s, "kwargs": ...}``,
    the kwargs of ``augment.local_views`` / ``device_augment.local_views_from_pair_seeds``
    (TensorFlow-free; ConfigError naming the flag for a value out of range)."""
    require(o.local_crops >= 0, "local_crops", f"must be >= 0, got {o.local_crops}")
    require(o.local_crop_size >= 0, "local_crop_size",
            f"must be >= 0 (0: 3/7 of --image_size), got {o.local_crop_size}")
    area = (_area_range(o.local_crop_area, "local_crop_area", "0.05,0.4")
            if o.local_crop_area else LOCAL_CROP_AREA)
    if o.local_crops == 0:
        return None
    side = o.local_crop_size or max(1, round(size * LOCAL_CROP_RATIO))
    globals_ = view_settings(o)
    return {"num": int(o.local_crops), "size": int(side),
            "kwargs": {"color_jitter_strength": globals_["color_jitter_strength"],
                       "blur": globals_["blur"], "blur_prob": LOCAL_BLUR_PROB,
                       "area_range": area, "flip_prob": o.flip_prob,
                       "solarize_prob": 0.0}}


def check_vit_local_crops(o, size):
    """ConfigError naming --local_crop_size when a ViT encoder would get local crops of a
    side its patch does not divide (the ViT takes any side its patch divides, the position
    embeddings made for --image_size resampled to the crops' grid; models/vit.py)."""
    local = local_view_settings(o, size)
    patch = o.patch_size or stems.default_patch_size(size)
    if local is not None and local["size"] % patch:
        side = local["size"]
        near = sorted({max(patch, side // patch * patch), (side // patch + 1) * patch})
        raise ConfigError("local_crop_size",
                          f"a ViT of patch {patch} takes sides that {patch} divides, got "
                          f"local crops of {side} px"
                          f"{'' if o.local_crop_size else ' (the default, 3/7 of --image_size)'}"
                          f"; set --local_crop_size to a multiple of {patch} (e.g. "
                          f"{' or '.join(map(str, near))})")


def view_settings(o):
    """The augmentation of an :class:`ImageOptions`: the kwargs of ``augment.two_views``
    and ``device_augment.device_view_pairs`` (TensorFlow-free; raises ConfigError naming
    the flag for a value out of range).

    ``--augment_preset`` gives the crop area and the per-view blur and solarisation
    probabilities that their flags leave empty; the preset's blur is on only with
    ``--blur``, an explicit ``--blur_prob`` turns it on. The defaults (simclr, no flags)
    give SimCLR's views as before the flags existed: area (0.08, 1), flip 0.5, blur 0.5
    with ``--blur``, no solarisation.
    """
    choice(o.augment_preset, tuple(AUGMENT_PRESETS), "augment_preset")
    preset = AUGMENT_PRESETS[o.augment_preset]
    require(0 <= o.flip_prob <= 1, "flip_prob", f"must be in [0, 1], got {o.flip_prob}")
    area = _area_range(o.crop_area, "crop_area", "0.3,1") if o.crop_area else preset["crop_area"]
    blur_prob = (_probabilities(o.blur_prob, "blur_prob") if o.blur_prob
                 else preset["blur_prob"])
    solarize = (_probabilities(o.solarize_prob, "solarize_prob") if o.solarize_prob
                else preset["solarize_prob"])
    return {"color_jitter_strength": o.color_jitter_strength,
            "blur": bool(o.blur_prob) or o.blur, "blur_prob": blur_prob,
            "area_range": area, "flip_prob": o.flip_prob, "solarize_prob": solarize}


@dataclasses.dataclass
class GeneratedOptions(Section):
    """The generated shapes data set (``--dataset=generated_images``; no download)."""
    prefix = "generated_"
    examples: int = option(10000, "Training examples of the generated image data set.")
    classes: int = option(6, "Shape classes of the generated image data set (2..6).")
    view_jitter: float = option(0.5, "Generated images: how far each view's position/scale/"
                                "colour moves from the example's own towards a fresh draw "
                                "(0..1).")

    def validate(self, cfg):
        require(2 <= self.classes <= 6, "generated_classes",
                f"must be in [2, 6], got {self.classes}")
        require(0 <= self.view_jitter <= 1, "generated_view_jitter",
                f"must be in [0, 1], got {self.view_jitter}")
        require(self.examples >= cfg.optim.batch_size, "batch_size",
                f"{cfg.optim.batch_size} is larger than the generated data set "
                f"(--generated_examples={self.examples}); lower --batch_size")


def _validate(cfg):
    cfg.images.validate(cfg)
    if cfg.data.dataset == "generated_images":
        cfg.generated.validate(cfg)


SPEC = TaskSpec("images", {"images": ImageOptions, "generated": GeneratedOptions},
                serves=is_image_dataset, validate=_validate,
                module="dualssl_tf.tasks.images.task",
                datasets=(("generated_images", "generated shapes; no download"),
                          ("folder", "--data_dir of class sub-folders")),
                also="a TensorFlow Datasets name (stl10, cifar10, cifar100)",
                analysis="dualssl_tf.tasks.images.analysis")
