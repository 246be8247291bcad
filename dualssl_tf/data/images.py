"""The image sources of a ``--dataset`` value: which kind of source it is and which splits
pretraining and probing use.

Three kinds of source, each an :class:`~dualssl_tf.data.sources.base.ImageSource` (a
finite collection of cheap *raw* elements plus a decoder), one module each under
:mod:`dualssl_tf.data.sources`: ``tfds`` (a TensorFlow Datasets image set prepared in
``data_dir``), ``folders`` (a directory of images, one sub-folder per class) and
``generated`` (:mod:`dualssl_tf.data.generated_images`, no download). The batches are made
by :mod:`dualssl_tf.data.pipeline`. Errors are :class:`~dualssl_tf.data.errors.DataError`
s naming the argument concerned.
"""

import tensorflow as tf

from dualssl_tf.data import holdout
from dualssl_tf.data.generated_images import GeneratedImages
from dualssl_tf.data.sources.folders import folder_holdout_sources, folder_source
from dualssl_tf.data.sources.generated import generated_source
from dualssl_tf.data.sources.tfds import tfds_source

# Pretraining split of a tfds data set when it is not "train" (STL-10's 100k unlabelled).
PRETRAIN_SPLITS = {"stl10": "train+unlabeled"}
# Splits used for probing: (train, test).
EVAL_SPLITS = {"default": ("train", "test")}


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
    Raises:
      DataError of the source: tfds ``name``, ``split`` or ``data_dir``; folders ``path``
      (the folder, ``data_dir`` here) or ``fraction`` (``holdout_fraction`` here).
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
