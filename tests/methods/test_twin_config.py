"""Barlow Twins' and VICReg's flagfiles parse through tools/train.py and validate, with
solo-learn's CIFAR-10 numbers; the CPU variants are the contrastive CPU run but the method.
TensorFlow-free."""

import dataclasses

import pytest

from dualssl_tf import config
from tests import train_tool


@pytest.fixture(scope="module")
def tool():
    return train_tool.load("train_tool_twin_cfg")


def _load(tool, tmp_path, *argv):
    return config.validate(train_tool.parse(tool, tmp_path / "run", *argv))


def test_published_configs(tool, tmp_path):
    b = _load(tool, tmp_path, "--flagfile=configs/barlow_cifar10.cfg")
    assert b.method.method == "barlow" and b.data.dataset == "cifar10"
    assert (b.barlow.proj_hidden_dim, b.barlow.proj_dim, b.barlow.proj_layers,
            b.barlow.lambd, b.barlow.scale_loss) == (2048, 2048, 3, 0.0051, 0.1)
    assert (b.images.crop_area, b.images.solarize_prob, b.images.blur) == (
        "0.08,1.0", "0.0,0.2", False)
    v = _load(tool, tmp_path, "--flagfile=configs/vicreg_cifar10.cfg")
    assert v.method.method == "vicreg"
    # solo-learn's var_loss_weight 25 on the summed hinges = 50 on their mean.
    assert (v.vicreg.proj_hidden_dim, v.vicreg.proj_dim, v.vicreg.sim_coeff,
            v.vicreg.std_coeff, v.vicreg.cov_coeff) == (2048, 2048, 25.0, 50.0, 1.0)
    assert (v.images.crop_area, v.images.solarize_prob) == ("0.2,1.0", "0.1")
    for c in (b, v):
        assert (c.optim.optimizer, c.optim.learning_rate, c.optim.batch_size,
                c.optim.weight_decay, c.optim.lars_eta, c.optim.warmup_epochs,
                c.optim.epochs) == ("lars", 0.3, 256, 1e-4, 0.02, 10.0, 1000)
        assert c.images.color_jitter_strength == 0.5


@pytest.mark.parametrize("name", ["barlow", "vicreg"])
def test_cpu_configs_are_the_contrastive_run_but_the_method(tool, tmp_path, name):
    g = _load(tool, tmp_path, f"--flagfile=configs/generated_images_{name}.cfg")
    ref = _load(tool, tmp_path, "--flagfile=configs/generated_images.cfg")
    assert g.method.method == name and g.data.dataset == "generated_images"
    section = getattr(g, name)
    assert (section.proj_hidden_dim, section.proj_dim, section.proj_layers) == (256, 256, 3)
    assert g.generated == ref.generated and g.optim == ref.optim
    # The --proj_* head is not used by these methods (and left at its defaults).
    proj = {f.name for f in dataclasses.fields(g.images) if f.name.startswith("proj_")}
    assert {k: v for k, v in vars(g.images).items() if k not in proj} == {
        k: v for k, v in vars(ref.images).items() if k not in proj}
