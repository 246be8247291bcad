"""config.validate checks of the image flags (TensorFlow-free)."""


import pytest

from dualssl_tf import config
from dualssl_tf import tasks as _tasks  # noqa: F401
import dualssl_tf.tasks.images as images_task
from dualssl_tf.config import ConfigError, TrainConfig


def _cfg(tmp_path, **kw):
    base = dict(dataset="generated_images", model_dir=str(tmp_path / "run"), loss="ntxent",
                batch_size=64)
    base.update(kw)
    return TrainConfig(**base)


def test_valid_image_configs(tmp_path):
    for ds in ("generated_images", "stl10", "cifar10", "cifar100", "mnist",
               "imagenet2012/subset:5.0.0"):
        config.validate(_cfg(tmp_path, dataset=ds))
    (tmp_path / "cls").mkdir()   # the folder must hold an image file (checked before TF)
    (tmp_path / "cls" / "a.png").write_bytes(b"")
    config.validate(_cfg(tmp_path, dataset="folder", data_dir=str(tmp_path), image_size=64))
    config.validate(_cfg(tmp_path, optimizer="lars", lr_schedule="cosine", warmup_epochs=10,
                         epochs=100, lr_scaling="sqrt"))


@pytest.mark.parametrize("kw,flag,text", [
    (dict(dataset="CIFAR-10"), "dataset", "unknown dataset 'CIFAR-10'"),
    (dict(dataset="folder"), "data_dir", "is required with --dataset=folder"),
    (dict(dataset="cifar10", stem="imagenet"), "image_size",
     "32 px is too small for the imagenet stem"),
    (dict(image_size=4, stem="cifar"), "image_size", "too small for the cifar stem"),
    (dict(stem="tiny"), "stem", "allowed: cifar, imagenet, auto"),
    (dict(encoder="vit"), "encoder", "resnet18, resnet50"),
    (dict(batch_size=512, generated_examples=256), "batch_size",
     "512 is larger than the generated data set"),
    (dict(width_multiplier=0.0), "width_multiplier", "> 0"),
    (dict(proj_layers=-1), "proj_layers", ">= 0"),
    (dict(color_jitter_strength=-0.1), "color_jitter_strength", ">= 0"),
    (dict(optimizer="rmsprop"), "optimizer", "lars"),
    (dict(lr_schedule="step"), "lr_schedule", "constant, cosine"),
    (dict(lr_scaling="log"), "lr_scaling", "none, linear, sqrt"),
    (dict(warmup_epochs=20, epochs=10), "warmup_epochs", "[0, --epochs=10]"),
    (dict(negatives="explicit"), "negatives", "in-batch negatives"),
    (dict(generated_classes=7), "generated_classes", "[2, 6]"),
    (dict(holdout_fraction=1.0), "holdout_fraction", "[0, 1), got 1.0"),
    (dict(holdout_fraction=0.1, dataset="cifar10"), "holdout_fraction",
     "only for --dataset=folder; cifar10 has its own test split"),
])
def test_bad_image_settings(tmp_path, kw, flag, text):
    with pytest.raises(ConfigError) as err:
        config.validate(_cfg(tmp_path, **kw))
    assert err.value.flag == flag and text in str(err.value)
    assert "\n" not in str(err.value)


def test_holdout_fraction_refused_for_a_folder_with_its_own_split(tmp_path):
    for part in ("train", "val"):
        (tmp_path / part / "cls").mkdir(parents=True)
        (tmp_path / part / "cls" / "a.png").write_bytes(b"")
    config.validate(_cfg(tmp_path, dataset="folder", data_dir=str(tmp_path / "train"),
                         image_size=32, holdout_fraction=0.2))
    with pytest.raises(ConfigError, match="^--holdout_fraction: .* has its own held-out "
                                          "split .*; drop --holdout_fraction$"):
        config.validate(_cfg(tmp_path, dataset="folder", data_dir=str(tmp_path),
                             image_size=32, holdout_fraction=0.2))


def test_native_image_size_and_stem_auto(tmp_path):
    assert images_task.image_size(_cfg(tmp_path, dataset="stl10")) == 96
    assert images_task.image_size(_cfg(tmp_path, dataset="cifar100")) == 32
    assert images_task.image_size(_cfg(tmp_path, dataset="stl10", image_size=64)) == 64
    assert images_task.image_size(_cfg(tmp_path, dataset="folder", data_dir="x")) == 0
    # stl10 at 96 px with stem=auto picks the ImageNet stem, which 96 px satisfies.
    config.validate(_cfg(tmp_path, dataset="stl10", stem="auto"))


def test_hltm_is_not_an_image_dataset():
    assert not images_task.is_image_dataset("hltm")
    assert images_task.is_image_dataset("cifar10") and images_task.is_image_dataset("folder")


def test_every_field_has_a_flag_help():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "train.py")
    spec = importlib.util.spec_from_file_location("train_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    from dualssl_tf import config
    tool.define_flags()
    from absl import flags
    missing = [name for name, _, field in config.flag_fields()
               if len(field.metadata["help"]) < 10
               or flags.FLAGS[name].help != field.metadata["help"]]
    assert missing == []
