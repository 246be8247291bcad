"""tf.data pipelines of an :class:`~dualssl_tf.data.sources.base.ImageSource`: two-view
pretraining batches and (image, label) probing batches, and each input pipeline's share.

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

import dataclasses

import tensorflow as tf

from dualssl_tf.data import augment
from dualssl_tf.data.errors import DataError
from dualssl_tf.data.image_rules import device_views_problem


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
      source: an ImageSource of the whole data set.
      input_context: ``tf.distribute.InputContext`` (or None = one pipeline).
    Returns:
      ``source`` itself for one pipeline, or when it already is this pipeline's share;
      else ``source.for_pipeline(input_context)`` when the source has one (tfds: disjoint
      subsets of the files, or its own fallback, see
      :func:`dualssl_tf.data.sources.tfds.tfds_source`), else
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
      source: an :class:`~dualssl_tf.data.sources.base.ImageSource`.
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
    Raises:
      DataError naming ``views_on`` (device views of a source with its own views) or
      ``batch_size`` (larger than the source).
    """
    if views_on not in ("host", "device"):
        raise ValueError(f"views_on must be host or device, got {views_on!r}")
    problem = device_views_problem(views_on, source.views is not None, source.name)
    if problem:
        raise DataError("views_on", problem)
    if batch_size > source.num_examples:
        raise DataError("batch_size", f"{batch_size} is larger than {source.name} "
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
        if views_on == "device":
            out = _device_image(source, raw, image_size, shape)
        else:
            out = _host_views(source, raw, tf.stack([tf.cast(seed, tf.int64), i]),
                              image_size, kwargs, local)
        if labelled:
            out["label"] = label
        return out

    ds = ds.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _device_image(source, raw, image_size, shape):
    """One element for device views: ``{"image": [H, W, 3] uint8}`` (``shape``), the
    un-augmented image (centre crop resized to ``image_size`` when the source's images
    vary in size)."""
    image = source.decode(raw)
    if source.image_shape is None:
        image = augment.center_resize(image, image_size)
    # uint8 on the wire: a quarter of float32's bytes to the device; uint8 ->
    # float -> uint8 is exact (k/255 * 255.5 truncates to k), so a source of
    # fixed-size images reaches the device bit for bit.
    return {"image": tf.ensure_shape(
        tf.image.convert_image_dtype(image, tf.uint8, saturate=True), shape)}


def _host_views(source, raw, pair_seed, image_size, kwargs, local):
    """One element's views made on the host, seeded by ``pair_seed`` [2] int64:
    ``{"view1", "view2": [S, S, 3] float32}`` (the source's own views, or
    :func:`augment.two_views` with ``kwargs``), with ``local`` ``"local_views"``
    [N, s, s, 3]."""
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
    return out


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
