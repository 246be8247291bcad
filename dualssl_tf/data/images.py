"""tf.data pipelines of images: two-view pretraining batches and (image, label) probing.

Three kinds of source, each an :class:`ImageSource` (a finite collection of cheap *raw*
elements plus a decoder):

* :func:`tfds_source`: any TensorFlow Datasets image data set by name (``stl10``,
  ``cifar10``, ``cifar100``, ...) already prepared in ``data_dir`` (a local path or a
  ``gs://`` bucket); never downloads. Raw elements are the encoded image bytes, so
  shuffling and skipping are cheap and decoding runs in the parallel map.
* :func:`folder_source`: a directory of images, one sub-folder per class (or a flat folder
  of unlabelled images); every file is checked once when the source is built.
* :func:`generated_source`: :mod:`dualssl_tf.data.generated_images` (no download).

:func:`pretrain_dataset` turns a source into endless batches
``{"view1", "view2": [B, S, S, 3] float32 in [0, 1], "label": [B] int32}`` (label -1 =
unlabelled; no ``label`` key when the source has no labels at all) with static shapes;
:func:`eval_dataset` into ``(image [B, S, S, 3], label [B])`` batches of un-augmented
images. Pretraining streams are deterministic given the seed: element ``i`` of the
(shuffled, repeated) stream is augmented with the stateless seed ``(seed, i)``, and
``start_step`` resumes the stream exactly where step ``start_step`` began.

With several input pipelines (hosts), :func:`pipeline_source` gives each host its own
disjoint share: tfds data sets by file when the split has enough files (each host opens
only its own), folders and generated images by element (file names / indices, so nothing
of the others' is read).
"""

import contextlib
import dataclasses
import functools
import os
import re
import sys
from typing import Any, Callable, Optional

import tensorflow as tf
from absl import logging

from dualssl_tf.data import augment, holdout
from dualssl_tf.data.generated_images import GeneratedImages
from dualssl_tf.data.image_rules import IMAGE_EXTENSIONS, check_device_views
from dualssl_tf.options import ConfigError
from dualssl_tf.stderr_capture import fd2_captured

UNLABELLED = -1
# Pretraining split of a tfds data set when it is not "train" (STL-10's 100k unlabelled).
PRETRAIN_SPLITS = {"stl10": "train+unlabeled"}
# Splits used for probing: (train, test).
EVAL_SPLITS = {"default": ("train", "test")}


@dataclasses.dataclass
class ImageSource:
    """A finite image collection.

    elements: finite tf.data of ``(raw, label int32)``; raw is cheap to read and shuffle
      (encoded bytes, a file path or an example index); label -1 = unlabelled.
    decode: ``raw -> image [H, W, 3] float32 in [0, 1]`` (the un-augmented image).
    num_examples: number of elements.
    num_classes: K (labels in [0, K)); 0 when the source has no labels.
    image_shape: (H, W, 3) when every image has it, else None.
    views: optional ``(raw, seed [2], size) -> (view1, view2)`` replacing
      decode + SimCLR augmentation (the generated images re-render their nuisance factors).
    local_views: with ``views``, optional ``(raw, seed [2], num, size, area_range) ->
      [num, size, size, 3]``: the source's own local crops (multi-crop).
    skipped: files left out because they could not be decoded.
    for_pipeline: optional ``input_context -> ImageSource``, this source's share for one
      input pipeline when the source can do better than element sharding (tfds: by
      file); see :func:`pipeline_source`.
    share: ``(input_pipeline_id, num_input_pipelines)`` when this is one pipeline's share
      of a larger source, else None.
    num_labelled: elements with a label >= 0 when known without a pass (progress bars
      of evaluation passes show their total from it), else None.
    holdout: on a folder's held-out part (:func:`folder_holdout_sources`), the record of
      which files were set aside; else None.
    labelled_classes: how many classes have a labelled element, when known without a
      pass (folders), else None.
    """
    name: str
    elements: Any
    decode: Callable
    num_examples: int
    num_classes: int
    image_shape: Optional[tuple] = None
    views: Optional[Callable] = None
    local_views: Optional[Callable] = None
    skipped: int = 0
    for_pipeline: Optional[Callable] = None
    share: Optional[tuple] = None
    num_labelled: Optional[int] = None
    holdout: Optional[dict] = None
    labelled_classes: Optional[int] = None


def _to_rgb(image):
    """uint8/float [H, W, C] with C in {1, 3, 4} -> float32 [H, W, 3] in [0, 1]."""
    image = augment.to_float(image)
    channels = image.shape[-1]
    if channels == 1:
        image = tf.tile(image, [1, 1, 3])
    elif channels == 4:
        image = image[..., :3]
    return image


# --------------------------------------------------------------------------------------
# TensorFlow Datasets


# Download sizes of the paper's data sets (the tfds catalog), for when the builder's
# metadata does not carry them (it often does not before the data set is prepared).
DOWNLOAD_SIZES = {"stl10": "2.46 GiB", "cifar10": "162.17 MiB", "cifar100": "160.71 MiB"}


def _download_hint(name, data_dir, builder=None):
    """How to prepare a data set: ``tfds build NAME`` (``--data_dir`` only when not tfds'
    default), with the download size when known."""
    size = DOWNLOAD_SIZES.get(name.split(":")[0].split("/")[0], "")
    try:
        if builder is not None and int(builder.info.download_size):
            size = str(builder.info.download_size)
    except (AttributeError, TypeError, ValueError):
        pass
    size = f" ({size} download)" if size else ""
    where = f" --data_dir={data_dir}" if data_dir else ""
    return (f"download it once{size} with `tfds build {name}{where}` or pick another "
            "--dataset")


def tfds_source(name, split, data_dir="", shuffle_files=False, seed=0, input_context=None,
                download=False, download_refused=""):
    """An :class:`ImageSource` over a prepared tfds image-classification data set.

    With an ``input_context`` of P > 1 input pipelines the source is this pipeline's
    (host's) share only, so that each host reads 1/P of the data, not all of it:

    * **by file** when the split has at least P files: ``tfds.ReadConfig(input_context=...)``
      hands pipeline ``i`` the files ``i, i + P, i + 2P, ...`` of the split's file list
      (disjoint, union = the split) and the host never opens the others. ``num_examples``
      is this host's count, summed from the split's file instructions (metadata; nothing
      is counted), so hosts can differ by up to one file's worth.
    * **by element** otherwise (fewer files than pipelines, where tfds would leave hosts
      empty, or mocked data without a file list): every host reads the whole split in the
      same seeded order and keeps every P-th element (:func:`shard_source`).

    One log line says which was used and why. Either way the stream of pipeline ``i`` is
    a deterministic function of (``seed``, ``i``): the file order is shuffled with
    ``seed`` and files are interleaved deterministically, so skipping elements resumes it
    exactly (see :func:`pretrain_dataset`).

    Args:
      name: tfds name, optionally with config/version (``cifar10``, ``stl10:1.0.0``).
      split: tfds split expression, e.g. ``train``, ``test``, ``train+unlabeled``.
      data_dir: where the data set was prepared ("" = tfds' default); may be ``gs://``.
      shuffle_files: read the data set's files in a seeded random order.
      seed: file-order seed; must be the same on every host (the element-sharding
        fallback needs the same order everywhere).
      input_context: optional ``tf.distribute.InputContext``; None = the whole split.
      download: prepare the data set with tfds' ``download_and_prepare`` when it is not
        prepared in data_dir (see :func:`prepare_tfds`).
      download_refused: why downloading is not done here (e.g. ``"with --strategy=tpu"``);
        a not-prepared data set then fails with how to prepare it.
    Raises:
      ConfigError (a ValueError) naming --dataset or --data_dir, with the ``tfds build``
      command, when the name is unknown or the data set is not prepared in data_dir.
    """
    import tensorflow_datasets as tfds  # only the tfds path pays for the import

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except ValueError:  # DatasetNotFoundError, or a malformed name
        raise ConfigError("dataset", f"unknown dataset {name!r}: not hltm, generated_images, "
                          "folder or a TensorFlow Datasets name") from None
    features = builder.info.features
    if "image" not in features or not hasattr(features["image"], "decode_example"):
        raise ConfigError("dataset", f"{name!r} has no 'image' feature; only image data sets "
                          "can be used here")
    if download:
        prepare_tfds(builder, name, data_dir, download_refused)
    return _tfds_read(builder, name, split, data_dir, shuffle_files, seed, input_context)


# -- --download (issue 13, part 1) --------------------------------------------------------
def prepare_tfds(builder, name, data_dir="", refused=""):
    """Downloads and prepares a tfds data set that is not prepared in data_dir yet, with
    tfds' own machinery (``download_and_prepare``, the builder's download config and its
    progress bars); nothing happens when it is prepared.

    ``refused`` (e.g. ``"with --strategy=tpu"``; a gs:// data_dir always refuses) makes a
    not-prepared data set a ConfigError saying how to prepare it once, instead: every
    worker would otherwise download into the same bucket.
    """
    import tensorflow_datasets as tfds

    if builder.is_prepared():
        return
    if not refused and str(data_dir).startswith("gs://"):
        refused = "into a gs:// --data_dir"
    if refused:
        raise ConfigError("data_dir", f"--dataset={name} is not prepared in --data_dir="
                          f"{data_dir or '(tfds default)'} and is not downloaded {refused}; "
                          f"prepare it once with `tfds build {name} --data_dir="
                          f"{data_dir if '://' in data_dir else 'gs://BUCKET/tensorflow_datasets'}`"
                          " and pass that --data_dir")
    where = data_dir or "tfds' default ~/tensorflow_datasets"
    print(f"Downloading and preparing {name} into {where} (first use; --nodownload "
          "stops instead) ...", flush=True)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
    except Exception as e:  # noqa: BLE001  network, disk, checksum errors
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise ConfigError("dataset", f"downloading --dataset={name} into {where} failed "
                          f"({e.__class__.__name__}: {first}); "
                          + _download_hint(name, data_dir, builder)) from None


def _tfds_read(builder, name, split, data_dir, shuffle_files, seed, input_context):
    """tfds_source once the builder is known (also the source's ``for_pipeline``)."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    has_label = "label" in features and hasattr(features["label"], "num_classes")
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    index = input_context.input_pipeline_id if input_context is not None else 0
    files = _file_instructions(builder, split) if pipelines > 1 else None
    by_file = files is not None and len(files) >= pipelines
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False,
                                  input_context=input_context if by_file else None)
    try:
        ds = builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                read_config=read_config,
                                decoders={"image": tfds.decode.SkipDecoding()})
    except AssertionError:  # tfds' "could not find data in ..." when not prepared
        raise ConfigError("data_dir", f"--dataset={name} is not prepared in "
                          f"--data_dir={data_dir or '(tfds default)'} and downloads are off "
                          "(--nodownload); "
                          + _download_hint(name, data_dir, builder)) from None
    except ValueError as e:  # bad split expression
        raise ConfigError("dataset", f"{name!r} split {split!r}: {str(e).splitlines()[0]}"
                          ) from None

    full_name = f"{name}/{split}"
    if by_file:
        # tfds shards the file-instruction list itself (`Dataset.shard(P, i)` over it).
        mine = files[index::pipelines]
        num = sum(int(f.take) for f in mine)
        full_name += f"[files {index}/{pipelines}]"
        logging.info("%s/%s: input pipeline %d of %d reads by file: %d of the split's %d "
                     "files, %d examples", name, split, index, pipelines, len(mine),
                     len(files), num)
    else:
        num = _num_examples(builder, split, ds)
    if num == 0:
        raise ConfigError("dataset", f"{name!r} split {split!r} is empty"
                          + (f" for input pipeline {index}" if by_file else ""))
    image_feature = features["image"]
    shape = tuple(image_feature.shape)
    label_fn = ((lambda e: tf.cast(e["label"], tf.int32)) if has_label
                else (lambda e: tf.constant(UNLABELLED, tf.int32)))
    source = ImageSource(
        name=full_name,
        elements=ds.map(lambda e: (e["image"], label_fn(e))),
        decode=lambda raw: _to_rgb(image_feature.decode_example(raw)),
        num_examples=num,
        num_classes=int(features["label"].num_classes) if has_label else 0,
        num_labelled=num if has_label and "unlabel" not in split else None,
        image_shape=shape[:2] + (3,) if None not in shape[:2] else None,
        share=(index, pipelines) if by_file else None,
        for_pipeline=None if pipelines > 1 else functools.partial(
            _tfds_read, builder, name, split, data_dir, shuffle_files, seed))
    if pipelines > 1 and not by_file:
        why = (f"the split has {len(files)} files for {pipelines} input pipelines"
               if files is not None else "the split's file list is unknown (mocked data?)")
        logging.warning("%s/%s: input pipeline %d of %d shards by element (reads every "
                        "record, keeps 1/%d): %s", name, split, index, pipelines, pipelines,
                        why)
        source = shard_source(source, pipelines, index)
    return source


def _file_instructions(builder, split):
    """The split's files in tfds' read order (FileInstruction: filename, skip, take), or
    None when unknown (mocked data sets have no file list)."""
    try:
        files = list(builder.info.splits[split].file_instructions)
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    return files or None


def _num_examples(builder, split, ds):
    """Examples in a split: from the data set's metadata, else counted (mocked data)."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError):
        pass
    card = int(ds.cardinality())
    if card >= 0:
        return card
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


# --------------------------------------------------------------------------------------
# Image folders


def _list_images(path):
    """Sorted image files under path (recursively). -> list of str."""
    found = []
    for root, _, files in tf.io.gfile.walk(path):
        found.extend(os.path.join(root, f) for f in files
                     if f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


def _decode_file(path):
    return _to_rgb(tf.io.decode_image(tf.io.read_file(path), channels=3,
                                      expand_animations=False))


def warn(message):
    """One line on stderr, prefixed with the running tool's name (train.py, linear_eval.py);
    each message once per process (a folder may be listed more than once)."""
    if message in _WARNED:
        return
    _WARNED.add(message)
    tool = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") \
        else "dualssl_tf"
    sys.stderr.write(f"{tool}: warning: {message}\n")
    sys.stderr.flush()


_WARNED = set()
# A line of TensorFlow's C++ logging ("E0000 00:00:1733.. 123 jpeg_mem.cc:331] Premature
# end of JPEG data"): what its image decoders print for a bad file.
_LIBJPEG_LINE = re.compile(rb"^(Improper call to JPEG library|Corrupt JPEG data|Premature "
                           rb"end of JPEG|Not a JPEG file|Bogus |Unsupported JPEG|Invalid "
                           rb"JPEG|Wrong JPEG|Huffman table)")
_TF_LOG_LINE = re.compile(rb"^[IWEF]\d{4} \d+:\d+:\d+\.\d+ +\d+ [\w./-]+:\d+\] ")


def _tf_log_shown():
    """The user asked for TensorFlow's C++ logging, as for the tools' start-up lines
    (tools/cli.py): TF_CPP_MIN_LOG_LEVEL=0 or 1, or a tool's --tf_log (DUALSSL_TF_LOG=1)."""
    return (os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2").strip() in ("0", "1")
            or os.environ.get("DUALSSL_TF_LOG") == "1")


@contextlib.contextmanager
def _decoder_log_captured():
    """File descriptor 2 goes to a temporary file while the block runs; afterwards the
    captured text is written back to stderr without the image decoders' lines about bad
    files, which the caller reports in its own words: TensorFlow's C++ log lines
    (``E0000 ... jpeg_mem.cc:331] Premature end of JPEG data``) and libjpeg's own
    (``Improper call to JPEG library in state 201``)."""
    if _tf_log_shown():
        yield
        return
    captured = None
    try:
        with fd2_captured() as captured:
            yield
    finally:
        rest = [l for l in (captured.text if captured else b"").splitlines(keepends=True)
                if not (_TF_LOG_LINE.match(l) or _LIBJPEG_LINE.match(l))]
        if rest:
            sys.stderr.write(b"".join(rest).decode("utf-8", "replace"))
            sys.stderr.flush()


def _readable(paths):
    """Indices of the files that read and decode (one parallel pass, errors dropped;
    the decoders' own log lines about bad files captured)."""
    ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
    ds = ds.map(lambda i, p: (i, tf.shape(tf.io.decode_image(
        tf.io.read_file(p), channels=3, expand_animations=False))),
        num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors().filter(lambda i, s: tf.reduce_all(s[:2] > 0))
    with _decoder_log_captured():
        return {int(i) for i, _ in ds.as_numpy_iterator()}


def _check_class_folders(path, classes, counts):
    """Warns (one line) about class folders without a supported image file, naming what
    they hold."""
    empty = []
    for cls, n in zip(classes, counts):
        if n:
            continue
        other = sorted({os.path.splitext(f)[1].lower() or f
                        for _, _, files in tf.io.gfile.walk(os.path.join(path, cls))
                        for f in files})
        empty.append(f"{cls}/ ({'only ' + ', '.join(other) if other else 'empty'})")
    if empty:
        warn(f"{len(empty)} class folder{'s' if len(empty) > 1 else ''} of {path} "
             f"hold{'' if len(empty) > 1 else 's'} no image file of a supported type "
             f"({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}; "
             + ("they still count as classes" if len(empty) > 1 else "it still counts as a "
                "class") + " (labels follow the sorted folder names): add images or remove "
             + ("them" if len(empty) > 1 else "it"))


def _folder_listing(path, skip_corrupt=False, verify=True):
    """``(files, labels, num_classes, skipped)`` of an image folder (see
    :func:`folder_source`); ``num_classes`` is 0 when no file has a class."""
    if not path:
        raise ConfigError("data_dir", "is required with --dataset=folder: a directory of "
                          "images (one sub-folder per class)")
    if not tf.io.gfile.isdir(path):
        raise ConfigError("data_dir", f"{path} is not a directory")
    classes = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(path)
                     if tf.io.gfile.isdir(os.path.join(path, d)))
    files, labels, counts = [], [], []
    for label, cls in enumerate(classes):
        found = _list_images(os.path.join(path, cls))
        files += found
        labels += [label] * len(found)
        counts.append(len(found))
    top = sorted(os.path.join(path, f) for f in tf.io.gfile.listdir(path)
                 if f.lower().endswith(IMAGE_EXTENSIONS)
                 and not tf.io.gfile.isdir(os.path.join(path, f)))
    files += top
    labels += [UNLABELLED] * len(top)
    if not files:
        raise ConfigError("data_dir", f"{path} contains no image files "
                          f"({', '.join(IMAGE_EXTENSIONS)})")
    skipped = 0
    if verify:
        good = _readable(files)
        bad = [f for i, f in enumerate(files) if i not in good]
        if bad and not skip_corrupt:
            raise ConfigError("data_dir", f"{len(bad)} of {len(files)} image files cannot be "
                              f"decoded, e.g. {bad[0]}; fix or remove them, or pass "
                              "--skip_corrupt_images to leave them out")
        files = [f for i, f in enumerate(files) if i in good]
        labels = [l for i, l in enumerate(labels) if i in good]
        skipped = len(bad)
        if not files:
            raise ConfigError("data_dir", f"none of the image files in {path} can be decoded")
        if bad:
            warn(f"--skip_corrupt_images: left out {len(bad)} of {len(bad) + len(files)} "
                 f"image files of {path} that cannot be decoded, e.g. {bad[0]}")
        counts = [sum(1 for l in labels if l == i) for i in range(len(classes))]
    if classes:
        _check_class_folders(path, classes, counts)
    used = sorted(set(labels) - {UNLABELLED})
    return files, labels, (len(classes) if used else 0), skipped


def _folder_image_source(name, files, labels, num_classes, skipped=0):
    return ImageSource(
        name=name,
        elements=tf.data.Dataset.from_tensor_slices(
            (tf.constant(files, tf.string), tf.constant(labels, tf.int32))),
        decode=_decode_file,
        num_examples=len(files),
        num_classes=num_classes,
        num_labelled=sum(label != UNLABELLED for label in labels),
        image_shape=None,
        skipped=skipped,
        labelled_classes=len(set(labels) - {UNLABELLED}))


def folder_source(path, skip_corrupt=False, verify=True):
    """An :class:`ImageSource` over a directory of image files.

    Layout: ``path/<class>/**/*.jpg`` (labels = class folders in sorted order), or image
    files directly in ``path`` (unlabelled, for pretraining only). Files directly in
    ``path`` next to class folders are kept as unlabelled (-1). Extensions:
    IMAGE_EXTENSIONS (jpeg, png, bmp, gif; case-insensitive).

    Args:
      path: local directory or ``gs://`` prefix.
      skip_corrupt: leave out files that do not decode (counted in ``skipped``) instead
        of failing.
      verify: decode every file once now (one parallel pass) so that a bad file fails
        here, by name, rather than in the middle of training.
    Raises:
      ConfigError naming --data_dir: missing path, no images, unreadable files.
    """
    files, labels, num_classes, skipped = _folder_listing(path, skip_corrupt, verify)
    return _folder_image_source(f"folder:{path}", files, labels, num_classes, skipped)


def folder_holdout_sources(path, fraction=0.0, seed=0, recorded=None, skip_corrupt=False,
                           verify=True):
    """``(train, held_out)`` ImageSources of one image folder split in two (issue 13).

    ``held_out`` is a seeded, stratified ``fraction`` of every class
    (:func:`holdout.stratified_holdout`; unlabelled files stay in ``train``), or, with
    ``recorded`` (the file names, relative to ``path``, that a run set aside: its model
    card's ``holdout.files``), exactly those files. ``train`` is every other file: what
    is pretrained on and what a probe is fitted to. ``held_out.holdout`` is the record
    ``{"fraction", "seed", "num_files", "files"}`` (sorted relative names) for the run's
    metadata.

    Raises:
      ConfigError naming --data_dir (the listing's errors; recorded files missing from the
      folder) or --holdout_fraction (nothing to hold out).
    """
    files, labels, num_classes, skipped = _folder_listing(path, skip_corrupt, verify)
    prefix = os.path.join(path, "")
    names = [f[len(prefix):] if f.startswith(prefix) else f for f in files]
    if recorded is not None:
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in recorded if n not in index]
        if missing:
            raise ConfigError("data_dir", f"{len(missing)} of the {len(recorded)} held-out "
                              f"files the run recorded are not in {path} (e.g. {missing[0]}); "
                              "evaluate on the folder the run was trained on")
        held = sorted(index[n] for n in recorded)
    else:
        if not num_classes:
            raise ConfigError("holdout_fraction", f"{path} has no class sub-folders (its "
                              "images are unlabelled): there is nothing to hold out for "
                              "probing; drop --holdout_fraction")
        held = [int(i) for i in holdout.stratified_holdout(labels, fraction, seed)]
        if not held:
            raise ConfigError("holdout_fraction", f"{fraction} sets aside no image of {path}: "
                              "every class has fewer than 2 labelled images")
    is_held = set(held)
    keep = [i for i in range(len(files)) if i not in is_held]
    train = _folder_image_source(
        f"folder:{path} (without {len(held)} held out)", [files[i] for i in keep],
        [labels[i] for i in keep], num_classes, skipped)
    test = _folder_image_source(f"folder:{path} (held out)", [files[i] for i in held],
                                [labels[i] for i in held], num_classes)
    test.holdout = {"fraction": fraction, "seed": seed,
                    "num_files": len(held), "files": sorted(names[i] for i in held)}
    return train, test


# --------------------------------------------------------------------------------------
# Generated images


def generated_source(data, split="train"):
    """An :class:`ImageSource` over a :class:`GeneratedImages` split (no files)."""
    indices = data.indices(split)
    return ImageSource(
        name=f"generated_images/{split}",
        elements=indices.map(lambda i: (i, data.label(i))),
        decode=lambda i: data.example(i)[0],
        num_examples=data.num_examples[split],
        num_classes=data.num_classes,
        num_labelled=data.num_examples[split],
        image_shape=(data.image_size, data.image_size, 3),
        views=lambda i, seed, size: data.views(i, seed),
        local_views=data.local_views)


# --------------------------------------------------------------------------------------
# Pipelines


def shard_source(source, num_shards, index):
    """Every ``num_shards``-th element of a source, from ``index`` (one input pipeline).

    Element sharding: the shard is taken of the *raw* elements, before ``decode``. For
    folder sources those are file names, so a host opens only its own image files; for
    generated sources they are example indices (nothing is read). For tfds sources the raw
    elements are records read from the data set's files, so every host reads the whole
    split; :func:`pipeline_source` shards those by file instead when it can.
    """
    if num_shards == 1:
        return source
    return dataclasses.replace(
        source, name=f"{source.name}[shard {index}/{num_shards}]",
        elements=source.elements.shard(num_shards, index),
        num_examples=len(range(index, source.num_examples, num_shards)),
        for_pipeline=None, share=(index, num_shards), num_labelled=None)


def pipeline_source(source, input_context):
    """The share of ``source`` that one input pipeline (host) reads.

    Args:
      source: an :class:`ImageSource` of the whole data set.
      input_context: ``tf.distribute.InputContext`` (or None = one pipeline).
    Returns:
      ``source`` itself for one pipeline, or when it already is this pipeline's share;
      else ``source.for_pipeline(input_context)`` when the source has one (tfds: disjoint
      subsets of the files, or its own fallback, see :func:`tfds_source`), else
      :func:`shard_source` (folder and generated sources: their raw elements are file
      names / indices, so element sharding already reads nothing of the other hosts').
      The pipelines' shares are disjoint and cover the source; ``num_examples`` is the
      share's own count.
    Raises:
      ValueError when ``source`` is already another pipeline's share.
    """
    if input_context is None or input_context.num_input_pipelines == 1:
        return source
    wanted = (input_context.input_pipeline_id, input_context.num_input_pipelines)
    if source.share == wanted:
        return source
    if source.share is not None:  # sharding a share again would lose examples
        raise ValueError(f"{source.name} is already input pipeline {source.share[0]} of "
                         f"{source.share[1]}'s share; pass the whole source")
    if source.for_pipeline is not None:
        return source.for_pipeline(input_context)
    return shard_source(source, input_context.num_input_pipelines,
                        input_context.input_pipeline_id)


def shuffled_passes(elements, num_examples, buffer_size, seed, first=0):
    """Endless passes over ``elements``, each shuffled by its own seed, from element ``first``.

    Pass ``p`` is ``elements.shuffle(buffer_size)`` with seeds drawn statelessly from
    ``(seed, p)``, so element ``i`` of the stream depends only on ``(seed, i)``: not on how
    many iterators the dataset had before. (``shuffle(reshuffle_each_iteration=True)
    .repeat()`` keeps its reshuffle state in the dataset object, so a second iterator of
    the same dataset, such as ViewSummary's peek at the first batch, gives training
    another order than a resumed run, which does not peek, gets.) Starting at ``first``
    opens pass ``first // num_examples`` and skips the rest of the elements before it,
    which are raw (nothing is decoded for them).
    """
    first_pass, offset = divmod(int(first), int(num_examples))

    def one_pass(p):
        seeds = tf.random.stateless_uniform([2], tf.stack([tf.cast(seed, tf.int64), p]),
                                            minval=None, maxval=None, dtype=tf.int64)
        return _shuffle_with_seeds(elements, buffer_size, seeds)

    ds = tf.data.Dataset.counter(start=first_pass).flat_map(one_pass)
    return ds.skip(offset) if offset else ds


def _shuffle_with_seeds(ds, buffer_size, seeds):
    """``ds.shuffle(buffer_size, reshuffle_each_iteration=False)`` with the kernel's two
    seeds given as tensors: the op ``Dataset.shuffle`` builds, without its Python seed
    handling, which cannot take a tensor seed when the global seed is 0 (it tests
    ``(global, op) == (0, 0)`` in Python)."""
    specs = tf.nest.flatten(ds.element_spec)
    variant = tf.raw_ops.ShuffleDatasetV3(
        input_dataset=tf.data.experimental.to_variant(ds),
        buffer_size=tf.constant(buffer_size, tf.int64), seed=seeds[0], seed2=seeds[1],
        seed_generator=tf.raw_ops.DummySeedGenerator(), reshuffle_each_iteration=False,
        output_types=[s.dtype for s in specs], output_shapes=[s.shape for s in specs])
    return tf.data.experimental.from_variant(variant, ds.element_spec)


def device_input_shape(source, image_size):
    """(H, W, 3) of the images :func:`pretrain_dataset` batches for device views: the
    source's own size when all its images share one (CIFAR, STL-10: the views then crop
    the very images the host path crops), else ``image_size`` square (centre crop of the
    shorter side resized to it, as the eval transform: folders of mixed sizes)."""
    if source.image_shape is not None:
        return tuple(int(d) for d in source.image_shape[:2]) + (3,)
    return (int(image_size), int(image_size), 3)


def pretrain_dataset(source, batch_size, image_size, seed=0, start_step=0,
                     color_jitter_strength=1.0, blur=False, shuffle_buffer=10000,
                     with_labels=True, views_on="host", view_options=None, local=None):
    """Endless two-view training batches of a source (and multi-crop's local crops).

    Args:
      source: an :class:`ImageSource`.
      batch_size: B (per step, global); batches are ``drop_remainder`` (static shapes).
      image_size: S, side of the views.
      seed: shuffle and augmentation seed; the stream is a deterministic function of it.
      start_step: first step of the stream (resume): skips ``start_step * B`` raw elements.
      color_jitter_strength, blur: SimCLR augmentation settings (see
        :func:`augment.simclr_view`); unused by sources with their own ``views``.
      shuffle_buffer: shuffle buffer size, in raw elements (capped at the source size).
      with_labels: add ``label`` [B] int32 (-1 = unlabelled) when the source has labels.
      views_on: ``host`` (views made here) or ``device``: batches of the un-augmented
        images, ``image`` [B, H, W, 3] uint8 (:func:`device_input_shape`), whose views
        the train step makes (:mod:`dualssl_tf.data.device_augment`); the order of the
        examples is the host path's.
      view_options: further kwargs of :func:`augment.two_views` (``area_range``,
        ``flip_prob``, per-view ``blur_prob`` and ``solarize_prob``); None: SimCLR's.
      local: multi-crop's local crops, ``{"num": N, "size": s, "kwargs": ...}``
        (:func:`augment.local_views`; ``tasks.images.local_view_settings``), or None. On
        the host they are ``local_views`` [B, N, s, s, 3]; with ``views_on="device"`` the
        train step makes them.
    Returns:
      tf.data.Dataset of dicts ``view1``, ``view2`` [B, S, S, 3] float32 in [0, 1] (or
      ``image`` with ``views_on="device"``), with ``local`` ``local_views``
      [B, N, s, s, 3], and optionally ``label`` [B] int32.
    """
    if views_on not in ("host", "device"):
        raise ValueError(f"views_on must be host or device, got {views_on!r}")
    check_device_views(views_on, source.views is not None, source.name)
    if batch_size > source.num_examples:
        raise ConfigError("batch_size", f"{batch_size} is larger than {source.name} "
                          f"({source.num_examples} examples); lower --batch_size")
    labelled = with_labels and source.num_classes > 0
    first = int(start_step) * int(batch_size)
    ds = shuffled_passes(source.elements, source.num_examples,
                         min(shuffle_buffer, source.num_examples), seed, first)
    ds = tf.data.Dataset.zip(tf.data.Dataset.counter(start=first), ds)
    kwargs = dict(view_options or {}, color_jitter_strength=color_jitter_strength, blur=blur)

    shape = device_input_shape(source, image_size)

    def make(i, element):
        raw, label = element
        pair_seed = tf.stack([tf.cast(seed, tf.int64), i])
        if views_on == "device":
            image = source.decode(raw)
            if source.image_shape is None:
                image = augment.center_resize(image, image_size)
            # uint8 on the wire: a quarter of float32's bytes to the device; uint8 ->
            # float -> uint8 is exact (k/255 * 255.5 truncates to k), so a source of
            # fixed-size images reaches the device bit for bit.
            out = {"image": tf.ensure_shape(
                tf.image.convert_image_dtype(image, tf.uint8, saturate=True), shape)}
            if labelled:
                out["label"] = label
            return out
        if source.views is not None:
            v1, v2 = source.views(raw, pair_seed, image_size)
        else:
            image = source.decode(raw)
            v1, v2 = augment.two_views(image, pair_seed, image_size, **kwargs)
        out = {"view1": v1, "view2": v2}
        if local is not None and source.views is not None:
            out["local_views"] = source.local_views(raw, pair_seed, local["num"],
                                                    local["size"],
                                                    local["kwargs"]["area_range"])
        elif local is not None:
            out["local_views"] = augment.local_views(image, pair_seed, local["size"],
                                                     local["num"], **local["kwargs"])
        if labelled:
            out["label"] = label
        return out

    ds = ds.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(source, batch_size, image_size, drop_remainder=False,
                 labelled_only=True):
    """One pass of un-augmented ``(image [B, S, S, 3] float32, label [B] int32)`` batches.

    Images are resized (shorter side to S) and centre-cropped when not already S x S.
    ``labelled_only`` drops unlabelled (-1) examples.
    """
    ds = source.elements
    if labelled_only:
        ds = ds.filter(lambda raw, label: label >= 0)
    ds = ds.map(lambda raw, label: (augment.center_resize(source.decode(raw), image_size),
                                    label),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    n = source.num_examples if not labelled_only else source.num_labelled
    if int(ds.cardinality()) < 0 and n is not None:  # the filter hid a known length
        batches = n // batch_size if drop_remainder else -(-n // batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds.prefetch(tf.data.AUTOTUNE)


def pretrain_split(name):
    """The tfds split used for pretraining on data set ``name``."""
    return PRETRAIN_SPLITS.get(name.split(":")[0].split("/")[0], "train")


def sources(dataset, data_dir="", image_size=32, seed=0, skip_corrupt=False,
            generated=None, download=False, download_refused="", holdout_fraction=0.0,
            holdout_seed=0, holdout_files=None):
    """Pretraining source and probing (train, test) sources for a ``--dataset`` value.

    Args:
      dataset: ``generated_images``, ``folder`` or a tfds name.
      data_dir: tfds directory or image folder.
      image_size: side of generated images.
      seed: data seed.
      skip_corrupt: folder only, see :func:`folder_source`.
      generated: optional :class:`GeneratedImages` (default: one built from image_size
        and seed).
      download, download_refused: tfds only, see :func:`tfds_source`.
      holdout_fraction, holdout_seed, holdout_files: a folder without its own split only:
        the held-out part of :func:`folder_holdout_sources` (``holdout_files``, the names
        a run recorded, take precedence over the fraction); ignored by a folder with
        ``train/`` and ``test/`` or ``val/``.
    Returns:
      (pretrain, probe_train, probe_test) ImageSources; probe_test may be None (a folder
      without ``train/`` and ``test/`` sub-folders and no held-out fraction).
    """
    if dataset == "generated_images":
        data = generated or GeneratedImages(image_size=image_size, seed=seed)
        return (generated_source(data, "train"), generated_source(data, "train"),
                generated_source(data, "test"))
    if dataset == "folder":
        own = holdout.own_split(data_dir, tf.io.gfile.isdir)
        if own:  # DIR/train/ with DIR/test/ or (the ImageNet layout) DIR/val/
            train = folder_source(own[0], skip_corrupt)
            return train, train, folder_source(own[1], skip_corrupt)
        if holdout_files is not None or holdout_fraction > 0:
            train, test = folder_holdout_sources(data_dir, holdout_fraction, holdout_seed,
                                                 holdout_files, skip_corrupt)
            return train, train, test
        src = folder_source(data_dir, skip_corrupt)
        return src, src, None
    pretrain = tfds_source(dataset, pretrain_split(dataset), data_dir, shuffle_files=True,
                           seed=seed, download=download, download_refused=download_refused)
    train_split, test_split = EVAL_SPLITS.get(dataset, EVAL_SPLITS["default"])
    return (pretrain, tfds_source(dataset, train_split, data_dir),
            tfds_source(dataset, test_split, data_dir))
