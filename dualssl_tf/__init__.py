"""dualssl_tf: self-supervised learning with dual deep networks, and the analysis of
Tian, Yu, Chen and Ganguli (2020), in TensorFlow / Keras 3.

The public API, ``import dualssl_tf as dt``::

    methods     dt.SSLMethod, dt.ContrastiveMethod, dt.MoCoV2Method, dt.MoCoV3Method,
                dt.BarlowTwinsMethod, dt.VICRegMethod, dt.DINOMethod, dt.METHODS
    losses      dt.losses (the paper's losses as pure functions), dt.loss_fn(name, ...),
                dt.decorrelation_losses (Barlow Twins, VICReg)
    data        dt.view_pairs (SimCLR pairs of your own tf.data images)
    networks    dt.resnet, dt.projection_head, dt.LinearProbe, dt.TreeNet
    optimizers  dt.LARS, dt.build_optimizer
    tasks       dt.tasks (hltm, translation1d, images), dt.TrainConfig, dt.train
    export      dt.export_encoder, dt.load_encoder
    evaluation  dt.extract_features, dt.linear_probe, dt.knn_probe, dt.finetune

Names are imported on first use, so ``import dualssl_tf`` itself does not load TensorFlow
(the tools check their flags before it loads).
"""

import importlib

__version__ = "0.1.0"

# public name -> "module:attribute" ("module:" for a module itself)
_API = {
    "SSLMethod": "dualssl_tf.methods.base:SSLMethod",
    "ContrastiveMethod": "dualssl_tf.methods.contrastive:ContrastiveMethod",
    "MoCoV2Method": "dualssl_tf.methods.moco:MoCoV2Method",
    "MoCoV3Method": "dualssl_tf.methods.moco:MoCoV3Method",
    "DINOMethod": "dualssl_tf.methods.dino:DINOMethod",
    "METHODS": "dualssl_tf.methods:METHODS",
    "BarlowTwinsMethod": "dualssl_tf.methods.barlow:BarlowTwinsMethod",
    "VICRegMethod": "dualssl_tf.methods.vicreg:VICRegMethod",
    "decorrelation_losses": "dualssl_tf.decorrelation_losses:",
    "losses": "dualssl_tf.losses:",
    "loss_fn": "dualssl_tf.methods.contrastive:loss_fn",
    "view_pairs": "dualssl_tf.data.augment:view_pairs",
    "resnet": "dualssl_tf.models.resnet:resnet",
    "projection_head": "dualssl_tf.models.heads:projection_head",
    "LinearProbe": "dualssl_tf.models.heads:LinearProbe",
    "TreeNet": "dualssl_tf.models.tree_net:TreeNet",
    "LARS": "dualssl_tf.optim.lars:LARS",
    "build_optimizer": "dualssl_tf.optim.schedules:build_optimizer",
    "tasks": "dualssl_tf.tasks:",
    "TrainConfig": "dualssl_tf.config:TrainConfig",
    "train": "dualssl_tf.training:train",
    "export_encoder": "dualssl_tf.evaluation.export:export_encoder",
    "load_encoder": "dualssl_tf.evaluation.export:load_encoder",
    "extract_features": "dualssl_tf.evaluation.features:extract_features",
    "linear_probe": "dualssl_tf.evaluation.linear:linear_probe",
    "knn_probe": "dualssl_tf.evaluation.knn:knn_probe",
    "finetune": "dualssl_tf.evaluation.finetune:finetune",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'dualssl_tf' has no attribute {name!r}")
    module, _, attr = _API[name].partition(":")
    value = importlib.import_module(module)
    value = getattr(value, attr) if attr else value
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
