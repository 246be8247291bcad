"""TensorFlow Datasets image sets as :class:`ImageSource` s: any tfds image data set by
name (``stl10``, ``cifar10``, ``cifar100``, ...) prepared in ``data_dir`` (a local path or
a ``gs://`` bucket), or prepared on first use with ``download``. Raw elements are the
encoded image bytes, so shuffling and skipping are cheap and decoding runs in the parallel
map; with several input pipelines each reads its own files (:func:`tfds_source`).
"""

import functools

import tensorflow as tf
from absl import logging

from dualssl_tf.data.errors import DataError
from dualssl_tf.data.pipeline import shard_source
from dualssl_tf.data.sources.base import UNLABELLED, ImageSource, to_rgb

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
      same seeded order and keeps every P-th element
      (:func:`dualssl_tf.data.pipeline.shard_source`).

    One log line says which was used and why. Either way the stream of pipeline ``i`` is
    a deterministic function of (``seed``, ``i``): the file order is shuffled with
    ``seed`` and files are interleaved deterministically, so skipping elements resumes it
    exactly (see :func:`dualssl_tf.data.pipeline.pretrain_dataset`).

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
      DataError naming ``name`` (unknown, no images, a bad or empty split: ``split``) or
      ``data_dir`` (not prepared there), with the ``tfds build`` command.
    """
    import tensorflow_datasets as tfds  # only the tfds path pays for the import

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except ValueError:  # DatasetNotFoundError, or a malformed name
        raise DataError("name", f"unknown dataset {name!r}: not hltm, generated_images, "
                        "folder or a TensorFlow Datasets name") from None
    features = builder.info.features
    if "image" not in features or not hasattr(features["image"], "decode_example"):
        raise DataError("name", f"{name!r} has no 'image' feature; only image data sets "
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
    not-prepared data set a DataError (``data_dir``) saying how to prepare it once,
    instead: every worker would otherwise download into the same bucket. A failed
    download is a DataError naming ``name``.
    """
    import tensorflow_datasets as tfds

    if builder.is_prepared():
        return
    if not refused and str(data_dir).startswith("gs://"):
        refused = "into a gs:// --data_dir"
    if refused:
        raise DataError("data_dir", f"--dataset={name} is not prepared in --data_dir="
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
        raise DataError("name", f"downloading --dataset={name} into {where} failed "
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
        raise DataError("data_dir", f"--dataset={name} is not prepared in "
                        f"--data_dir={data_dir or '(tfds default)'} and downloads are off "
                        "(--nodownload); "
                        + _download_hint(name, data_dir, builder)) from None
    except ValueError as e:  # bad split expression
        raise DataError("split", f"{name!r} split {split!r}: {str(e).splitlines()[0]}"
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
        raise DataError("split", f"{name!r} split {split!r} is empty"
                        + (f" for input pipeline {index}" if by_file else ""))
    image_feature = features["image"]
    shape = tuple(image_feature.shape)
    label_fn = ((lambda e: tf.cast(e["label"], tf.int32)) if has_label
                else (lambda e: tf.constant(UNLABELLED, tf.int32)))
    source = ImageSource(
        name=full_name,
        elements=ds.map(lambda e: (e["image"], label_fn(e))),
        decode=lambda raw: to_rgb(image_feature.decode_example(raw)),
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

