"""The image flagfiles parse through tools/train.py's flags and pass config.validate."""

import importlib.util
import os

import pytest
from absl import flags

from dualssl_tf import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location(
        "train_tool_cfg", os.path.join(ROOT, "tools", "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.define_flags()  # replaces same-named flags other tools' tests defined
    return module


def _load(tool, name, tmp_path):
    flags.FLAGS.unparse_flags()
    cwd = os.getcwd()
    os.chdir(ROOT)  # nested --flagfile paths are relative to the repository root
    try:
        flags.FLAGS(["train.py", f"--flagfile=configs/{name}.cfg",
                     f"--model_dir={tmp_path / name}"])
    finally:
        os.chdir(cwd)
    cfg = tool.config_from_flags()
    flags.FLAGS.unparse_flags()
    return config.validate(cfg)


def test_paper_settings(tool, tmp_path):
    stl = _load(tool, "stl10", tmp_path)
    assert (stl.dataset, stl.image_size, stl.stem, stl.encoder) == ("stl10", 96, "cifar",
                                                                    "resnet18")
    assert (stl.loss, stl.temperature, stl.batch_size) == ("ntxent", 0.5, 128)
    assert stl.color_jitter_strength == 1.0 and stl.blur
    assert (stl.proj_hidden_dim, stl.proj_dim, stl.proj_layers) == (512, 128, 2)
    c10 = _load(tool, "cifar10", tmp_path)
    assert (c10.dataset, c10.image_size, c10.color_jitter_strength, c10.blur) == (
        "cifar10", 32, 0.5, False)
    c100 = _load(tool, "cifar100", tmp_path)
    assert c100.dataset == "cifar100" and c100.color_jitter_strength == 0.5
    assert c100.model_dir.endswith("cifar100")


def test_theorem4_run(tool, tmp_path):
    cov = _load(tool, "stl10_cov", tmp_path)
    assert (cov.loss, cov.optimizer, cov.learning_rate, cov.weight_decay, cov.epochs) == (
        "cov", "adam", 0.001, 0.0, 500)
    assert cov.dataset == "stl10" and cov.blur


def test_generated_images_config(tool, tmp_path):
    gen = _load(tool, "generated_images", tmp_path)
    assert gen.dataset == "generated_images" and gen.probe
    assert gen.image_size <= 32 and gen.width_multiplier <= 0.25
