"""The image task (docs/theory.md section 6): SimCLR views of tfds data sets, image
folders or the generated shapes, a ResNet or ViT encoder, the method's projector and an
online probe."""

import contextlib
import functools
import json
import os

from dualssl_tf import cross_replica, methods, runfiles
from dualssl_tf.data import image_rules, images, pipeline
from dualssl_tf.data.errors import DataError
from dualssl_tf.data.generated_images import GeneratedImages
from dualssl_tf.data.sources import folders
from dualssl_tf.models import heads, resnet, stems
from dualssl_tf.monitors.collapse import EmbeddingSpread
from dualssl_tf.monitors.probes import KnnAccuracy, ProbeAccuracy
from dualssl_tf.monitors.views import ViewSummary
from dualssl_tf.options import ConfigError
from dualssl_tf.tasks.base import HeadSpec, Task
from dualssl_tf.tasks.images import (check_stem_size, check_vit_local_crops, is_vit,
                                     knn_monitor_ks, local_view_settings, view_settings)
from dualssl_tf.tasks.images import image_size as configured_image_size

# Images of a fixed batch for the embedding-spread (collapse) monitor.
SPREAD_SAMPLES = 256
ENCODER_DEPTH = {"auto": 18, "resnet18": 18, "resnet50": 50}
MAX_EVAL_BATCH = 256
# The flag behind each argument a data-layer DataError names (the data layer knows no
# flags): tfds_source's name / split / data_dir, a folder's path, a held-out fraction,
# pretrain_dataset's batch_size and views_on.
FLAG_OF_ARGUMENT = {"name": "dataset", "split": "dataset", "data_dir": "data_dir",
                    "path": "data_dir", "fraction": "holdout_fraction",
                    "batch_size": "batch_size", "views_on": "augment_on"}


@contextlib.contextmanager
def data_errors_as_flags():
    """A :class:`DataError` raised in the block becomes the ConfigError of the flag that
    supplied its argument (:data:`FLAG_OF_ARGUMENT`), same message: one line naming the
    flag, as the tools print it."""
    try:
        yield
    except DataError as e:
        raise ConfigError(FLAG_OF_ARGUMENT[e.argument], e.message) from None


def _image_size(cfg, source):
    """--image_size, else the data set's own size; checked against the stem (ResNet) or
    the patch size (ViT)."""
    size = configured_image_size(cfg)
    if not size:
        if source.image_shape is None:
            raise ConfigError("image_size", f"{source.name} has images of varying sizes; "
                              "set --image_size (e.g. 32 or 96)")
        size = int(source.image_shape[0])
    if is_vit(cfg.data.encoder):
        problem = stems.patch_size_problem(size, cfg.images.patch_size)
        if problem:
            raise ConfigError("patch_size", problem)
        check_vit_local_crops(cfg.images, size)
        return size
    check_stem_size(cfg.images.stem, size)
    return size


def sources(cfg, holdout_files=None):
    """``(pretrain, probe_train, probe_test, image_size)``: the run's image sources
    (probe_test may be None) and the side images are resized to. ``holdout_files``: the
    held-out file names a run recorded (its model card), used instead of recomputing
    ``--holdout_fraction``'s split.

    Raises ConfigError (one line naming the flag) for data that is missing, empty or
    unreadable, or an image size the stem cannot take.
    """
    generated = None
    if cfg.data.dataset == "generated_images":
        g = cfg.generated
        generated = GeneratedImages(image_size=cfg.images.image_size or 32,
                                    num_classes=g.classes, num_examples=g.examples,
                                    num_test=max(g.examples // 5, cfg.optim.batch_size),
                                    view_jitter=g.view_jitter, seed=cfg.run.seed)
    with data_errors_as_flags():
        pretrain, probe_train, probe_test = images.sources(
            cfg.data.dataset, cfg.data.data_dir, seed=cfg.run.seed,
            skip_corrupt=cfg.images.skip_corrupt_images, generated=generated,
            download=cfg.data.download,
            download_refused="with --strategy=tpu" if cfg.run.strategy == "tpu" else "",
            holdout_fraction=cfg.images.holdout_fraction,
            holdout_seed=cfg.images.holdout_seed, holdout_files=holdout_files)
    return pretrain, probe_train, probe_test, _image_size(cfg, pretrain)


def _eval_splits(cfg, probe_train, probe_test, size):
    batch = min(cfg.optim.batch_size, MAX_EVAL_BATCH)
    train = pipeline.eval_dataset(probe_train, batch, size)
    test = pipeline.eval_dataset(probe_test, batch, size) if probe_test is not None else None
    return train, test


def eval_data(cfg, batch_size=None, metadata=None):
    """``(train, test, num_classes)`` of un-augmented ``(x, label)`` batches of
    ``min(--batch_size, 256)`` images; no network is built. ValueError("--dataset: ...")
    when there is no labelled test split. ``metadata``: the run's recorded metadata (its
    model card's); a folder run's held-out files in it are the test split, exactly."""
    # (A folder with its own train/ + val/, e.g. another one, ignores the record.)
    recorded = (((metadata or {}).get("images") or {}).get("holdout") or {}).get("files")
    _, probe_train, probe_test, size = sources(cfg, holdout_files=recorded)
    train, test = _eval_splits(cfg, probe_train, probe_test, size)
    if train is None or test is None:
        missing = "labelled eval data" if train is None else "test split"
        hint = ("; give the folder train/ and val/ sub-folders, or train with "
                "--holdout_fraction (e.g. 0.1) to set a test split aside"
                if cfg.data.dataset == "folder" and train is not None else "")
        raise ValueError(f"--dataset: {cfg.data.dataset!r} has no {missing} to probe "
                         f"with{hint}")
    return train, test, probe_train.num_classes or None


def accelerator_visible(cfg):
    """Whether the run has a GPU or TPU to make views on (``--augment_on=auto``)."""
    import tensorflow as tf

    return cfg.run.strategy == "tpu" or bool(tf.config.list_logical_devices("GPU"))


def recorded_augment_on(model_dir):
    """``augment_on`` resolved by the run already in ``model_dir`` (its run.json), "host"
    for a run.json from before the option (it made its views on the host), None when
    there is no run there."""
    path = os.path.join(model_dir, "run.json") if model_dir else ""
    if not path or not runfiles.exists(path):
        return None
    try:
        meta = json.loads(runfiles.read_text(path))
    except (ValueError, OSError):
        return None
    return (meta.get("images") or {}).get("augment_on", "host")


def resolve_augment_on(cfg, source, accelerator=None):
    """``host`` or ``device``: where this run makes its views.

    ``--augment_on=host|device`` as given (device refused for a source that renders its own
    views: ConfigError). ``auto``: the value the run in ``--model_dir`` resolved (so a
    resumed run draws the same stream whatever machine it resumes on), else ``device``
    when a GPU is visible or ``--strategy=tpu`` (``accelerator``, default
    :func:`accelerator_visible`) and the source has no views of its own, else ``host``.
    """
    wanted = cfg.images.augment_on
    own_views = source.views is not None
    problem = image_rules.device_views_problem(wanted, own_views, source.name)
    if problem:
        raise ConfigError("augment_on", problem)
    if wanted != "auto":
        return wanted
    recorded = recorded_augment_on(cfg.run.model_dir)
    if recorded in ("host", "device"):
        return recorded
    if own_views:
        return "host"
    if accelerator is None:
        accelerator = accelerator_visible(cfg)
    return "device" if accelerator else "host"


def device_views(cfg, size):
    """The method's ``device_views`` hook of a run with ``--augment_on=device``:
    ``(images [B, H, W, 3] uint8, step, replica_id) -> (view1, view2)`` [B, size, size, 3]
    float32, seeded by ``--seed``, the step and the replica (device_augment); with
    ``--local_crops`` ``(view1, view2, local_views)``, local_views [B, N, s, s, 3]."""
    from dualssl_tf.data import device_augment

    settings = view_settings(cfg.images)
    local = local_view_settings(cfg.images, size)
    if local is not None:
        return functools.partial(_device_views, seed=cfg.run.seed, size=size,
                                 settings=dict(settings, local=local),
                                 fn=device_augment.device_multi_crop)
    return functools.partial(_device_views, seed=cfg.run.seed, size=size,
                             settings=settings, fn=device_augment.device_view_pairs)


def _device_views(images, step, replica_id, seed, size, settings, fn):
    return fn(images, seed, step, replica_id, size, **settings)


def build(cfg, start_step=0):
    """The Task of ``--dataset`` in generated_images | folder | a tfds name.

    Raises ConfigError (one line naming the flag) for data that is missing, empty or
    unreadable, a batch larger than the data set, or an image size the stem cannot take.
    """
    pretrain, probe_train, probe_test, size = sources(cfg)
    augment_on = resolve_augment_on(cfg, pretrain)
    views = device_views(cfg, size) if augment_on == "device" else None
    make_data = functools.partial(_data, pretrain, cfg, size, start_step, augment_on)

    o = cfg.images
    # Built inside the trainer's strategy scope: BatchNorm syncs across several replicas.
    sync_bn = cfg.run.sync_bn or cross_replica.use_sync_bn()
    encoder = _encoder(cfg, size, sync_bn)
    rep_dim = encoder.output_shape[-1]
    head_spec = HeadSpec(o.proj_hidden_dim, o.proj_dim, o.proj_layers, batch_norm=o.proj_bn)
    # The method's projector, made here, between the encoder and the probe: that order fixes
    # every network's initial values and the checkpoint's variable order.
    head = methods.build_head(cfg, rep_dim, head_spec, sync_bn)
    num_classes = probe_train.num_classes
    probe = None
    if cfg.method.probe and num_classes > 0 and pretrain.num_classes > 0:
        # Its BatchNorm synced too: else each replica standardises by its own batch.
        probe = heads.LinearProbe(num_classes, synchronized=sync_bn, name="probe")
        probe.build((None, rep_dim))
        if probe_train.labelled_classes == 1:
            folders.warn(f"{cfg.data.data_dir} has images of a single class: the online "
                         "probe's accuracy is 1.0 whatever the features (add a sub-folder "
                         "per class, or pass --noprobe)")

    eval_train, eval_test = _eval_splits(cfg, probe_train, probe_test, size)
    spread_x = next(iter(pipeline.eval_dataset(probe_test or probe_train, SPREAD_SAMPLES,
                                               size, labelled_only=False).take(1)))[0]
    cbs = [EmbeddingSpread(encoder, head, spread_x, norm_eps=1e-4)]
    if probe is not None and eval_test is not None:
        cbs.append(ProbeAccuracy(encoder, probe, eval_test))
    if o.knn_monitor and eval_test is not None and eval_train is not None and num_classes > 0:
        cbs.append(KnnAccuracy(encoder, eval_train, eval_test, num_classes,
                               k=knn_monitor_ks(o), max_bank=o.knn_monitor_bank))
    if cfg.run.model_dir:
        cbs.append(ViewSummary(os.path.join(cfg.run.model_dir, "logs", "views"),
                               make_data(cfg.optim.batch_size), views=views))
    return Task(
        make_data=make_data,
        steps_per_epoch=cfg.optim.steps_per_epoch or pretrain.num_examples // cfg.optim.batch_size,
        encoder=encoder,
        input_shape=(size, size, 3),
        head=head,
        head_spec=head_spec,
        probe=probe,
        callbacks=cbs,
        device_views=views,
        metadata={"images": {"dataset": cfg.data.dataset, "pretrain": pretrain.name,
                             "augment_on": augment_on,
                             "device_input_shape": (list(pipeline.device_input_shape(
                                 pretrain, size)) if views is not None else None),
                             "num_examples": pretrain.num_examples,
                             "num_classes": num_classes, "image_size": size,
                             **_input_rule(cfg, size),
                             "representation_dim": int(rep_dim),
                             "skipped_images": pretrain.skipped,
                             "holdout": getattr(probe_test, "holdout", None)}},
        summarize=summarize)


def _encoder(cfg, size, sync_bn):
    """``--encoder``: a ResNet (``--stem``, ``--width_multiplier``; BatchNorm synced with
    ``sync_bn``) or a ViT (``--patch_size``; LayerNorm only, nothing to sync)."""
    o = cfg.images
    if is_vit(cfg.data.encoder):
        from dualssl_tf.models import vit

        return vit.vit(cfg.data.encoder, image_size=size, patch_size=o.patch_size)
    return resnet.resnet(ENCODER_DEPTH[cfg.data.encoder], image_size=size, stem=o.stem,
                         width_multiplier=o.width_multiplier, sync_bn=sync_bn)


def _input_rule(cfg, size):
    """The run.json record of how the encoder takes its input: the ResNet's stem or the
    ViT's patch size."""
    if is_vit(cfg.data.encoder):
        return {"patch_size": cfg.images.patch_size or stems.default_patch_size(size)}
    return {"stem": stems.resolve_stem(cfg.images.stem, size)}


def _data(source, cfg, size, start_step, augment_on, batch_size, input_context=None):
    """Training batches of one input pipeline (:attr:`Task.make_data`): two views, or
    with ``augment_on="device"`` the uint8 images the train step makes them from.

    Each pipeline (host) reads only its own share of the examples
    (:func:`pipeline.pipeline_source`: tfds data sets by file, others by element) with its
    own seed; its replicas take consecutive batches, so ``start_step`` global steps are
    ``start_step * replicas_per_pipeline`` batches of this stream.
    """
    per_pipeline = 1
    o = cfg.images
    settings = view_settings(o)
    with data_errors_as_flags():   # a tfds pipeline's share is read here: its errors too
        if input_context is not None:
            per_pipeline = (input_context.num_replicas_in_sync
                            // input_context.num_input_pipelines)
            source = pipeline.pipeline_source(source, input_context)
        return pipeline.pretrain_dataset(
            source, batch_size, size,
            seed=cross_replica.replica_seed(cfg.run.seed, input_context),
            start_step=start_step * per_pipeline,
            color_jitter_strength=settings.pop("color_jitter_strength"),
            blur=settings.pop("blur"), shuffle_buffer=o.shuffle_buffer,
            with_labels=cfg.method.probe, views_on=augment_on, view_options=settings,
            local=local_view_settings(o, size))


def summarize(initial, final):
    """One line per health metric, the probe's and the kNN's accuracy: at initialisation
    and final."""
    rows = []
    for key in ("embed_std", "effective_rank", "contrastive_acc", "pos_cos", "probe_acc",
                "probe_test_acc", "knn_top1"):
        if key in final:
            start = initial.get(key)
            start = f"{start:.3f} -> " if isinstance(start, (int, float)) else ""
            rows.append(f"{key:<16} {start}{final[key]:.3f}")
    return "\n".join(rows)
