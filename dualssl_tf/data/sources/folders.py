"""Image folders as :class:`ImageSource` s: a directory of images, one sub-folder per class
(or a flat folder of unlabelled images), every file checked once when the source is built
(a bad file fails here, by name, not in the middle of training); and a folder split in two
by a seeded, stratified held-out fraction (:func:`folder_holdout_sources`). Raw elements
are file names, so an input pipeline opens only its own files.
"""

import contextlib
import os
import re
import sys

import tensorflow as tf

from dualssl_tf.data import holdout
from dualssl_tf.data.errors import DataError
from dualssl_tf.data.image_rules import IMAGE_EXTENSIONS
from dualssl_tf.data.sources.base import UNLABELLED, ImageSource, to_rgb
from dualssl_tf.stderr_capture import fd2_captured

def _list_images(path):
    """Sorted image files under path (recursively). -> list of str."""
    found = []
    for root, _, files in tf.io.gfile.walk(path):
        found.extend(os.path.join(root, f) for f in files
                     if f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


def _decode_file(path):
    return to_rgb(tf.io.decode_image(tf.io.read_file(path), channels=3,
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
        raise DataError("path", "is required with --dataset=folder: a directory of "
                        "images (one sub-folder per class)")
    if not tf.io.gfile.isdir(path):
        raise DataError("path", f"{path} is not a directory")
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
        raise DataError("path", f"{path} contains no image files "
                        f"({', '.join(IMAGE_EXTENSIONS)})")
    skipped = 0
    if verify:
        good = _readable(files)
        bad = [f for i, f in enumerate(files) if i not in good]
        if bad and not skip_corrupt:
            raise DataError("path", f"{len(bad)} of {len(files)} image files cannot be "
                            f"decoded, e.g. {bad[0]}; fix or remove them, or pass "
                            "--skip_corrupt_images to leave them out")
        files = [f for i, f in enumerate(files) if i in good]
        labels = [l for i, l in enumerate(labels) if i in good]
        skipped = len(bad)
        if not files:
            raise DataError("path", f"none of the image files in {path} can be decoded")
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
      DataError naming ``path``: missing, not a directory, no images, unreadable files.
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
      DataError naming ``path`` (the listing's errors; recorded files missing from the
      folder) or ``fraction`` (nothing to hold out).
    """
    files, labels, num_classes, skipped = _folder_listing(path, skip_corrupt, verify)
    prefix = os.path.join(path, "")
    names = [f[len(prefix):] if f.startswith(prefix) else f for f in files]
    if recorded is not None:
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in recorded if n not in index]
        if missing:
            raise DataError("path", f"{len(missing)} of the {len(recorded)} held-out "
                            f"files the run recorded are not in {path} (e.g. {missing[0]}); "
                            "evaluate on the folder the run was trained on")
        held = sorted(index[n] for n in recorded)
    else:
        if not num_classes:
            raise DataError("fraction", f"{path} has no class sub-folders (its "
                            "images are unlabelled): there is nothing to hold out for "
                            "probing; drop --holdout_fraction")
        held = [int(i) for i in holdout.stratified_holdout(labels, fraction, seed)]
        if not held:
            raise DataError("fraction", f"{fraction} sets aside no image of {path}: "
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

