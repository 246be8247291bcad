"""Labelled (x, label) train/test data for probing an export, by dataset name.

Sources, tried in this order:

* ``npz:PATH`` (or a path ending in ``.npz``): arrays ``x_train``, ``y_train``, ``x_test``,
  ``y_test`` (your own features or images; labels int in [0, C)).
* ``hltm``: fresh samples of the SavedModel's own tree (rebuilt from its model card's
  ``metadata.hltm`` polarities, else from its ``flags``); the label is the root latent.
* any other ``--dataset`` of :mod:`dualssl_tf.tasks` (image datasets, the 1-D translation
  toy): the task's ``eval_data`` for the SavedModel's model-card flags with
  ``dataset``/``data_dir`` overridden (no network is built).

Example:
  >>> train, test, c = probe_datasets("hltm", model_card=enc.model_card)
  >>> train, test, c = probe_datasets("npz:/data/feats.npz", batch_size=512)

Shapes: every source gives finite tf.data of ``(x [B, ...] float32 or uint8, label [B]
int64)`` batches; x has the export's input shape (``[B, H, W, 3]`` images, ``[B, children**depth]``
HLTM leaves, ``[B, d]`` for the 1-D toy).

The task source (:func:`_from_task`) is the only place that knows about
:mod:`dualssl_tf.tasks` and :mod:`dualssl_tf.config`.
"""

import os

import numpy as np
import tensorflow as tf

# Seeds of the HLTM probe samples: distinct from every training batch (seed, step) and from
# the correlation callback's held-out sample (offset 1_000_003).
HLTM_TRAIN_SEED_OFFSET = 2_000_003
HLTM_TEST_SEED_OFFSET = 2_000_004


def _batched(x, y, batch_size):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(2)


def _num_classes(*labels):
    labels = [np.asarray(y) for y in labels if len(y)]
    return int(max(int(y.max()) for y in labels)) + 1 if labels else 0


def _from_npz(path, batch_size):
    if not os.path.exists(path):
        raise ValueError(f"--dataset: {path} does not exist; give npz:PATH to an .npz with "
                         "x_train, y_train, x_test, y_test")
    with np.load(path) as data:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
        if missing:
            raise ValueError(f"--dataset: {path} lacks arrays {', '.join(missing)}; it needs "
                             "x_train, y_train, x_test, y_test")
        arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) == 0:
            raise ValueError(f"--dataset: the {split} split of {path} is empty")
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise ValueError(f"--dataset: {path} has {len(arrays[f'x_{split}'])} x_{split} "
                             f"but {len(arrays[f'y_{split}'])} y_{split}")
    x_train, x_test = (arrays[k] if arrays[k].dtype == np.uint8 else
                       arrays[k].astype(np.float32) for k in ("x_train", "x_test"))
    y_train, y_test = (arrays[k].reshape(-1).astype(np.int64) for k in ("y_train", "y_test"))
    return (_batched(x_train, y_train, batch_size), _batched(x_test, y_test, batch_size),
            _num_classes(y_train, y_test))


def hltm_tree(model_card):
    """The HLTM tree an export was trained on, from its model card."""
    from dualssl_tf.data.hltm import HLTM
    card = model_card or {}
    meta = (card.get("metadata") or {}).get("hltm")
    if meta:
        return HLTM.from_dict(meta)
    flags = card.get("flags") or {}
    if flags.get("dataset") == "hltm":
        return HLTM(flags["hltm_depth"], flags["hltm_children"], flags["hltm_delta_lower"],
                    flags["hltm_delta_upper"], seed=flags["seed"])
    what = ("has no model_card.json" if not card else
            "has a model_card.json with neither metadata.hltm nor hltm flags")
    raise ValueError(f"--dataset: hltm probing needs the tree the model was trained on, but "
                     f"the SavedModel {what}; export it with tools/export.py from its "
                     f"model_dir")


def _from_hltm(model_card, batch_size, num_train, num_test):
    tree = hltm_tree(model_card)
    seed = int((model_card.get("flags") or {}).get("seed", tree.seed))
    splits = []
    for n, offset in ((num_train, HLTM_TRAIN_SEED_OFFSET), (num_test, HLTM_TEST_SEED_OFFSET)):
        if n < 1:
            raise ValueError(f"--num_examples: the hltm split would be empty ({n} samples)")
        x, latents = tree.sample(n, seed=[seed, offset])
        splits.append(_batched(x, tf.cast(tf.reshape(latents[tree.depth], [-1]), tf.int64),
                               batch_size))
    return splits[0], splits[1], 2


def _from_task(dataset, data_dir, image_size, batch_size, model_card, download=True,
               skip_corrupt_images=False):
    """(train, test, num_classes) from the task's ``eval_data`` (no network is built), for
    the model card's flags with dataset / data_dir / image_size / batch_size overridden."""
    from dualssl_tf import config, tasks
    try:
        tasks.spec(dataset)
    except config.ConfigError:
        names = sorted(tasks.dataset_names())
        raise ValueError(f"--dataset: unknown dataset {dataset!r}; allowed: npz:PATH, "
                         f"{', '.join(names)} or a TensorFlow Datasets name") from None
    cfg = config.from_flag_strings({k: str(v) for k, v in
                                    ((model_card or {}).get("flags") or {}).items()})
    changes = dict(dataset=dataset, batch_size=batch_size, download=download)
    if data_dir:
        changes["data_dir"] = data_dir
    if image_size:
        changes["image_size"] = image_size
    if skip_corrupt_images:
        changes["skip_corrupt_images"] = True
    return tasks.eval_data(cfg.replace(**changes), batch_size,
                           metadata=(model_card or {}).get("metadata"))


def probe_datasets(dataset, data_dir="", image_size=None, batch_size=256, model_card=None,
                   num_train=10000, num_test=5000, download=True, skip_corrupt_images=False):
    """Finite (x, label) train and test datasets for probing.

    Args:
      dataset: ``npz:PATH``, ``hltm`` or another ``--dataset`` of :mod:`dualssl_tf.tasks`.
      data_dir: where downloaded datasets live (image datasets).
      image_size: optional image side for image datasets (None: the export's own).
      batch_size: examples per batch.
      model_card: the export's model card (flags and metadata rebuild its data).
      num_train, num_test: sample counts for generated data (hltm).
      download: a TensorFlow Datasets set not prepared in data_dir is downloaded and
        prepared first (``--download`` of tools/linear_eval.py).
      skip_corrupt_images: folder data: leave out files that do not decode (also on when
        the run was trained with it, from its model card).
    Returns:
      (train_ds, test_ds, num_classes): tf.data of (x [B, ...] float32 or uint8,
      label [B] int64) batches; num_classes may be None (then infer it from the labels).
    Raises:
      ValueError: one line naming --dataset for unknown names, missing files or empty splits.
    """
    if not dataset:
        raise ValueError("--dataset: is required (npz:PATH, hltm or a training dataset name)")
    if batch_size < 1:
        raise ValueError(f"--batch_size: must be >= 1, got {batch_size}")
    if dataset.startswith("npz:") or dataset.endswith(".npz"):
        return _from_npz(dataset[4:] if dataset.startswith("npz:") else dataset, batch_size)
    if dataset == "hltm":
        return _from_hltm(model_card or {}, batch_size, num_train, num_test)
    return _from_task(dataset, data_dir, image_size, batch_size, model_card, download,
                      skip_corrupt_images)
