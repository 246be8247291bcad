"""What is trained: self-supervised methods on one base class, selected by ``--method``.

:class:`~dualssl_tf.methods.base.SSLMethod` (a ``keras.Model``) owns the training step
(views -> forward -> loss -> scale -> apply -> after-apply hook -> metrics) and the online
probe with its own optimizer; a method fills in the forward pass and the loss. Adding a
method is one module with its ``SSLMethod`` subclass, one options section in
:mod:`dualssl_tf.methods.options` and one line in :data:`METHODS`.

This module is TensorFlow-free; a method's module is imported only when it is built.
"""

import dataclasses
import importlib

from dualssl_tf.methods.options import (BarlowOptions, BYOLOptions, ContrastiveOptions,
                                        DINOOptions, MoCoV2Options, MoCoV3Options,
                                        SimSiamOptions, VICRegOptions)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method: its options section and where its model class lives."""
    name: str
    section: str          # attribute of the TrainConfig holding its options
    options: type         # the options Section class
    model: str            # "module:Class" of the SSLMethod subclass
    # Whether the method takes multi-crop batches (``local_views``, --local_crops > 0);
    # the others are refused the flag.
    multi_crop: bool = False

    def model_class(self):
        module, _, cls = self.model.partition(":")
        return getattr(importlib.import_module(module), cls)


METHODS = {
    "contrastive": MethodSpec("contrastive", "contrastive", ContrastiveOptions,
                              "dualssl_tf.methods.contrastive:ContrastiveMethod"),
    "byol": MethodSpec("byol", "byol", BYOLOptions, "dualssl_tf.methods.byol:BYOLMethod"),
    "simsiam": MethodSpec("simsiam", "simsiam", SimSiamOptions,
                          "dualssl_tf.methods.byol:SimSiamMethod"),
    "mocov2": MethodSpec("mocov2", "mocov2", MoCoV2Options,
                         "dualssl_tf.methods.moco:MoCoV2Method"),
    "mocov3": MethodSpec("mocov3", "mocov3", MoCoV3Options,
                         "dualssl_tf.methods.moco:MoCoV3Method"),
    "barlow": MethodSpec("barlow", "barlow", BarlowOptions,
                         "dualssl_tf.methods.barlow:BarlowTwinsMethod"),
    "vicreg": MethodSpec("vicreg", "vicreg", VICRegOptions,
                         "dualssl_tf.methods.vicreg:VICRegMethod"),
    "dino": MethodSpec("dino", "dino", DINOOptions, "dualssl_tf.methods.dino:DINOMethod",
                       multi_crop=True),
}


def spec(name):
    """The MethodSpec of ``--method=name``; KeyError for unknown names."""
    return METHODS[name]


def other_methods_options(cfg):
    """``[(flag, value, owner)]``: every option of a method other than ``--method`` that is
    not at its default.

    An option is "given" when its value differs from its default: the config is a set of
    values (a flagfile, flags.txt or ``TrainConfig(...)``), which does not say where a value
    came from, so a flag passed with its default value is indistinguishable from an absent
    one and is accepted. (tools/train.py knows more: options that came from a --flagfile
    rather than the command line are reset to their defaults there, with a note, so
    ``--flagfile=configs/generated_images.cfg --method=byol`` runs.)
    """
    found = []
    for spec_ in METHODS.values():
        if spec_.name == cfg.method.method:
            continue
        section = getattr(cfg, spec_.section)
        for flag, field in spec_.options.flag_fields():
            value = getattr(section, field.name)
            if value != field.default:
                found.append((flag, value, spec_.name))
    return found


def unused_option(cfg):
    """The first of :func:`other_methods_options`, or None."""
    found = other_methods_options(cfg)
    return found[0] if found else None


def build_head(cfg, rep_dim, head_spec, sync_bn):
    """The projector of ``cfg.method.method`` (its ``SSLMethod.build_head``) on a
    representation of ``rep_dim``: a keras.Model ``[B, rep_dim] -> [B, D]`` or None. A task
    calls it right after making its encoder and stores the result as ``Task.head``."""
    return spec(cfg.method.method).model_class().build_head(cfg, rep_dim, head_spec, sync_bn)


def build(cfg, task, gather_fn=None):
    """The method selected by ``cfg.method.method``, built on ``task``'s networks (with the
    task's ``device_views``, if any: views made in the step, --augment_on=device)."""
    model = spec(cfg.method.method).model_class().from_options(cfg, task, gather_fn=gather_fn)
    model.device_views = getattr(task, "device_views", None)
    return model
