"""Features of a frozen export, and their .npz cache.

Features are extracted once per (SavedModel, dataset, split, output, pool) with the frozen
encoder in inference mode (BatchNorm moving statistics, no augmentation) and cached as .npz,
so the linear probe and kNN share one extraction.

Shapes: a dataset yields ``(x [B, *input_shape], label [B] or [B, 1])`` batches (or dicts
with ``image``/``x`` and ``label``); an output of the export is ``[B, ...]`` and becomes
``[B, F]`` by :func:`pool_features`; extraction returns ``(features [N, F] float32,
labels [N] int64)``.

Example:
  >>> enc = export.load_encoder("run/saved_model")
  >>> xtr, ytr = cached_features(enc, train_ds, "generated_images", "train")
"""

import hashlib
import io
import json
import os

import keras
import numpy as np
import tensorflow as tf

from dualssl_tf import runfiles


def split_element(element):
    """One dataset element -> ``(x, label)``.

    element: an ``(x, label, ...)`` tuple, or a dict with ``image`` (or ``x``, ``view1``) and
    ``label``; works on tensors and on ``element_spec`` alike.
    Raises ValueError (naming ``dataset``) for dicts without those keys.
    """
    if isinstance(element, dict):
        for key in ("image", "x", "view1"):
            if key in element:
                return element[key], element["label"]
        raise ValueError(f"dataset: dict batches need 'image' (or 'x') and 'label', got keys "
                         f"{sorted(element)}")
    x, y = element[0], element[1]
    return x, y


def to_float_input(x):
    """Encoder input: uint8 images [B, H, W, C] scaled to [0, 1]; anything else cast to
    float32 (values unchanged)."""
    if x.dtype == tf.uint8:
        x = tf.cast(x, tf.float32) / 255.0
    return tf.cast(x, tf.float32)


def pool_features(features, pool="auto"):
    """[B, ...] -> [B, F].

    'auto' averages the spatial dims of [B, H, W, C] maps (-> [B, C]) and flattens anything
    else; 'mean' averages all middle dims (-> [B, last]); 'flatten' keeps every value
    (-> [B, prod(...)]). [B, F] inputs are returned as they are.
    """
    rank = features.shape.rank
    if rank == 2:
        return features
    if pool == "mean" or (pool == "auto" and rank == 4):
        return tf.reduce_mean(features, axis=list(range(1, rank - 1)))
    if pool in ("flatten", "auto"):
        return tf.reshape(features, [tf.shape(features)[0], -1])
    raise ValueError(f"pool: expected auto, mean or flatten, got {pool!r}")


def check_dataset(encoder, ds, flag="dataset"):
    """Raises ValueError (one line naming ``flag``) if the batches do not fit the encoder.

    ds: tf.data of (x [B, ...], label [B]) batches; x must have the SavedModel's input shape.
    """
    x_spec, _ = split_element(ds.element_spec)
    got = tuple(x_spec.shape[1:].as_list())
    want = tuple(encoder.input_shape)
    if len(got) != len(want) or any(g is not None and g != w for g, w in zip(got, want)):
        what = ("image size or channels" if len(want) == 3 else "input shape")
        raise ValueError(f"--{flag}: {what} {got} does not match the SavedModel input {want} "
                         f"of {encoder.path}; choose the dataset/image size it was trained on")


def extract_features(encoder, ds, output="representation", pool="auto", verbose=1):
    """Runs the frozen encoder (inference endpoint) over a dataset.

    Args:
      encoder: :class:`dualssl_tf.evaluation.export.ExportedEncoder`.
      ds: finite tf.data of (x [B, *input_shape], label [B] or [B, 1]) batches; uint8 images
        are scaled to [0, 1]; examples with label < 0 (unlabelled) are dropped.
      output: which output of the signature to use (``representation``, ``projection`` or
        an intermediate name).
      pool: how outputs of rank > 2 become vectors (see :func:`pool_features`).
      verbose: 1 shows a progress bar.
    Returns:
      (features [N, F] float32, labels [N] int64).
    Raises:
      ValueError: unknown output, or an empty dataset.
    """
    if output not in encoder.output_keys:
        raise ValueError(f"output: {encoder.path} has outputs {', '.join(encoder.output_keys)}"
                         f", not {output!r}")
    check_dataset(encoder, ds)
    n_batches = int(ds.cardinality())
    bar = keras.utils.Progbar(n_batches if n_batches > 0 else None, verbose=verbose,
                              unit_name="batch")
    i = -1
    feats, labels = [], []
    for i, element in enumerate(ds):
        x, y = split_element(element)
        out = encoder(to_float_input(x), training=False)[output]
        y = np.reshape(np.asarray(y), [-1]).astype(np.int64)
        keep = y >= 0   # label -1 marks unlabelled images (e.g. STL-10 unlabeled)
        feats.append(pool_features(out, pool).numpy().astype(np.float32)[keep])
        labels.append(y[keep])
        bar.update(i + 1)
    if verbose and n_batches <= 0:  # a bar without a total is left on its line
        bar.update(i + 1, finalize=True)
    if sum(len(f) for f in feats) == 0:
        raise ValueError("dataset: the split is empty; nothing to extract features from")
    return np.concatenate(feats), np.concatenate(labels)


def _fingerprint(path):
    """Changes whenever the SavedModel is re-exported, so stale caches are never used."""
    try:
        return tf.saved_model.experimental.read_fingerprint(path).singleprint()
    except Exception:  # older SavedModels have no fingerprint.pb
        pb = os.path.join(path, "saved_model.pb")
        return str(runfiles.mtime(pb)) if runfiles.exists(pb) else "none"


def _default_cache_dirs(saved_model):
    """Where the cache goes without --cache_dir, in order: ``feature_cache/`` beside a local
    SavedModel, then the user's ``~/.cache/dualssl_tf/feature_cache`` (a read-only run
    directory, a remote SavedModel)."""
    user = os.path.join(os.path.expanduser("~"), ".cache", "dualssl_tf", "feature_cache")
    if "://" in saved_model:
        return [user]
    return [os.path.join(os.path.dirname(os.path.abspath(saved_model)), "feature_cache"), user]


def feature_cache_path(saved_model, dataset, split, output="representation", pool="auto",
                       cache_dir=None):
    """Path of the .npz cache for one (SavedModel, dataset, split, output).

    Defaults to ``<dir of the SavedModel>/feature_cache/`` (``~/.cache/dualssl_tf/
    feature_cache/`` for remote SavedModels); the name carries the SavedModel name and a hash
    of its absolute path and content fingerprint, dataset, split, output and pool.
    """
    remote = "://" in saved_model
    if not remote:
        saved_model = os.path.abspath(saved_model)
    key = json.dumps([saved_model, _fingerprint(saved_model), str(dataset), str(split),
                      output, pool])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    if not cache_dir:
        cache_dir = _default_cache_dirs(saved_model)[0]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(dataset))
    return os.path.join(cache_dir, f"{os.path.basename(saved_model)}-{safe}-{split}-"
                                   f"{output}-{digest}.npz")


def cached_features(encoder, ds, dataset, split, output="representation", pool="auto",
                    cache_dir=None, verbose=1):
    """:func:`extract_features` with an .npz cache (see :func:`feature_cache_path`).

    ``dataset`` and ``split`` name the data for the cache key (the tf.data itself cannot be
    hashed); callers must pass names that identify it, including any setting that changes
    the examples. Without ``cache_dir``, a SavedModel whose directory cannot be written (a
    read-only run) has its cache in ``~/.cache/dualssl_tf/feature_cache``. Returns
    (features [N, F] float32, labels [N] int64).

    Raises:
      ValueError naming --cache_dir when no cache location can be written.
    """
    dirs = [cache_dir] if cache_dir else _default_cache_dirs(encoder.path)
    paths = [feature_cache_path(encoder.path, dataset, split, output, pool, d) for d in dirs]
    for path in paths:
        if runfiles.exists(path):
            with np.load(io.BytesIO(runfiles.read_bytes(path))) as data:
                return data["features"], data["labels"]
    feats, labels = extract_features(encoder, ds, output, pool, verbose)
    buffer = io.BytesIO()
    np.savez(buffer, features=feats, labels=labels)
    for i, path in enumerate(paths):
        try:
            runfiles.makedirs(os.path.dirname(path))
            # Temp + rename (any tf.io.gfile path): readers never see a half-written cache.
            runfiles.write_bytes_atomic(path, buffer.getvalue())
            break
        except (tf.errors.OpError, OSError) as e:
            if i == len(paths) - 1:
                reason = (str(e).strip().splitlines() or [""])[0][:200]
                raise ValueError(f"--cache_dir: cannot write the feature cache in "
                                 f"{os.path.dirname(path)} ({type(e).__name__}: {reason}); "
                                 "pass a writable --cache_dir") from None
    return feats, labels
