"""The image experiment (DIGEST section 6): SimCLR views of tfds data sets, image folders or
the generated shapes, a ResNet encoder, a projection head and an online linear probe."""

import functools
import os

from dualssl_tf import callbacks, config, distribute
from dualssl_tf.config import ConfigError
from dualssl_tf.data import images
from dualssl_tf.data.generated_images import GeneratedImages
from dualssl_tf.experiments import Experiment
from dualssl_tf.models import heads, resnet, stems

# Images of a fixed batch for the embedding-spread (collapse) monitor.
SPREAD_SAMPLES = 256
ENCODER_DEPTH = {"auto": 18, "resnet18": 18, "resnet50": 50}


def _image_size(cfg, source):
    """--image_size, else the data set's own size; checked against the stem."""
    size = config.image_size(cfg)
    if not size:
        if source.image_shape is None:
            raise ConfigError("image_size", f"{source.name} has images of varying sizes; "
                              "set --image_size (e.g. 32 or 96)")
        size = int(source.image_shape[0])
    stem = stems.resolve_stem(cfg.stem, size)
    if size < stems.MIN_IMAGE_SIZE[stem]:
        raise ConfigError("image_size", f"{size} px is too small for the {stem} stem (needs "
                          f">= {stems.MIN_IMAGE_SIZE[stem]}); use --stem=cifar or a larger "
                          "--image_size")
    return size


def build(cfg, start_step=0):
    """Experiment for ``cfg.dataset`` in generated_images | folder | a tfds name.

    Raises ConfigError (one line naming the flag) for data that is missing, empty or
    unreadable, a batch larger than the data set, or an image size the stem cannot take.
    """
    generated = None
    if cfg.dataset == "generated_images":
        generated = GeneratedImages(image_size=cfg.image_size or 32,
                                    num_classes=cfg.generated_classes,
                                    num_examples=cfg.generated_examples,
                                    num_test=max(cfg.generated_examples // 5, cfg.batch_size),
                                    view_jitter=cfg.generated_view_jitter, seed=cfg.seed)
    pretrain, probe_train, probe_test = images.sources(
        cfg.dataset, cfg.data_dir, seed=cfg.seed, skip_corrupt=cfg.skip_corrupt_images,
        generated=generated)
    size = _image_size(cfg, pretrain)
    train_data = _train_data(pretrain, cfg, size, start_step, cfg.batch_size)

    # Built inside the trainer's strategy scope: BatchNorm syncs across several replicas.
    sync_bn = cfg.sync_bn or distribute.use_sync_bn()
    encoder = resnet.resnet(ENCODER_DEPTH[cfg.encoder], image_size=size, stem=cfg.stem,
                            width_multiplier=cfg.width_multiplier, sync_bn=sync_bn)
    rep_dim = encoder.output_shape[-1]
    head = heads.projection_head(rep_dim, cfg.proj_hidden_dim, cfg.proj_dim,
                                 cfg.proj_layers, sync_bn)
    num_classes = probe_train.num_classes
    probe = None
    if cfg.probe and num_classes > 0 and pretrain.num_classes > 0:
        probe = heads.LinearProbe(num_classes, name="probe")
        probe.build((None, rep_dim))

    eval_batch = min(cfg.batch_size, 256)
    eval_train = images.eval_dataset(probe_train, eval_batch, size)
    eval_test = (images.eval_dataset(probe_test, eval_batch, size)
                 if probe_test is not None else None)
    cbs = []
    spread_x = next(iter(images.eval_dataset(probe_test or probe_train, SPREAD_SAMPLES, size,
                                             labelled_only=False).take(1)))[0]
    cbs.append(callbacks.EmbeddingSpread(encoder, head, spread_x, norm_eps=1e-4))
    if probe is not None and eval_test is not None:
        cbs.append(callbacks.ProbeAccuracy(encoder, probe, eval_test))
    if cfg.model_dir:
        cbs.append(callbacks.ViewSummary(os.path.join(cfg.model_dir, "logs", "views"),
                                         train_data))

    return Experiment(
        train_data=train_data,
        steps_per_epoch=cfg.steps_per_epoch or pretrain.num_examples // cfg.batch_size,
        encoder=encoder,
        head=head,
        probe=probe,
        callbacks=cbs,
        input_shape=(size, size, 3),
        norm_eps=1e-4,
        metadata={"images": {"dataset": cfg.dataset, "pretrain": pretrain.name,
                             "num_examples": pretrain.num_examples,
                             "num_classes": num_classes, "image_size": size,
                             "stem": stems.resolve_stem(cfg.stem, size),
                             "representation_dim": int(rep_dim),
                             "skipped_images": pretrain.skipped}},
        summarize=summarize,
        eval_data=(eval_train, eval_test),
        make_train_data=functools.partial(_replica_data, pretrain, cfg, size, start_step))


def _train_data(source, cfg, size, start_step, batch_size, seed=None):
    return images.pretrain_dataset(
        source, batch_size, size, seed=cfg.seed if seed is None else seed,
        start_step=start_step, color_jitter_strength=cfg.color_jitter_strength,
        blur=cfg.blur, shuffle_buffer=cfg.shuffle_buffer, with_labels=cfg.probe)


def _replica_data(source, cfg, size, start_step, batch_size, input_context):
    """Per-replica batches of one input pipeline (Experiment.make_train_data).

    Each pipeline (host) reads only its own share of the examples
    (:func:`images.pipeline_source`: tfds data sets by file, others by element) with its
    own seed; its replicas take consecutive batches, so ``start_step`` global steps are
    ``start_step * replicas_per_pipeline`` batches of this stream.
    """
    per_pipeline = input_context.num_replicas_in_sync // input_context.num_input_pipelines
    shard = images.pipeline_source(source, input_context)
    return _train_data(shard, cfg, size, start_step * per_pipeline, batch_size,
                       seed=distribute.replica_seed(cfg.seed, input_context))


def summarize(initial, final):
    """One line per health metric and the probe accuracy: at initialisation and final."""
    rows = []
    for key in ("embed_std", "contrastive_acc", "probe_acc", "probe_test_acc"):
        if key in final:
            start = initial.get(key)
            start = f"{start:.3f} -> " if isinstance(start, (int, float)) else ""
            rows.append(f"{key:<16} {start}{final[key]:.3f}")
    return "\n".join(rows)

