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

from dualssl_tf.methods.options import ContrastiveOptions


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method: its options section and where its model class lives."""
    name: str
    section: str          # attribute of the TrainConfig holding its options
    options: type         # the options Section class
    model: str            # "module:Class" of the SSLMethod subclass

    def model_class(self):
        module, _, cls = self.model.partition(":")
        return getattr(importlib.import_module(module), cls)


METHODS = {
    "contrastive": MethodSpec("contrastive", "contrastive", ContrastiveOptions,
                              "dualssl_tf.methods.contrastive:ContrastiveMethod"),
}


def spec(name):
    """The MethodSpec of ``--method=name``; KeyError for unknown names."""
    return METHODS[name]


def build(cfg, task, gather_fn=None):
    """The method selected by ``cfg.method.method``, built on ``task``'s networks."""
    return spec(cfg.method.method).model_class().from_options(cfg, task, gather_fn=gather_fn)
