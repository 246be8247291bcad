"""The non-contrastive methods' options: flagfiles parse and validate, each method's
options only with that method (an option is "given" when it differs from its default),
and the contrastive-only task checks apply only to --method=contrastive. TensorFlow-free."""


import pytest

from dualssl_tf import config
from tests import train_tool


@pytest.fixture(scope="module")
def tool():
    """tools/train.py loaded as a module, its flags defined once in this process."""
    return train_tool.load("train_tool_byol_cfg")


def _load(tool, tmp_path, *argv):
    return train_tool.parse(tool, tmp_path / "run", *argv)


def test_published_configs(tool, tmp_path):
    c = config.validate(_load(tool, tmp_path, "--flagfile=configs/byol_cifar10.cfg"))
    assert (c.method.method, c.images.proj_hidden_dim, c.images.proj_dim) == ("byol", 4096, 256)
    assert (c.byol.pred_hidden_dim, c.byol.base_momentum, c.byol.final_momentum) == (
        4096, 0.99, 1.0)
    assert (c.optim.optimizer, c.optim.learning_rate, c.optim.batch_size,
            c.optim.weight_decay, c.optim.epochs) == ("lars", 1.0, 256, 1e-5, 1000)
    s = config.validate(_load(tool, tmp_path, "--flagfile=configs/byol_stl10.cfg"))
    assert (s.data.dataset, s.byol.base_momentum, s.byol.final_momentum) == (
        "stl10", 0.996, 0.996)
    assert (s.optim.optimizer, s.optim.learning_rate, s.optim.weight_decay) == (
        "sgd", 0.03, 4e-4)
    # torch.optim.SGD's weight decay in the configs that mirror PyTorch code (issue 20);
    # LARS is coupled whatever the mode.
    assert (s.optim.weight_decay_mode, c.optim.weight_decay_mode) == ("coupled", "decoupled")
    m = config.validate(_load(tool, tmp_path, "--flagfile=configs/simsiam_cifar10.cfg"))
    assert (m.method.method, m.images.proj_dim, m.simsiam.pred_hidden_dim) == (
        "simsiam", 2048, 512)
    assert (m.optim.optimizer, m.optim.learning_rate, m.optim.momentum) == ("sgd", 0.5, 0.9)
    assert (m.optim.weight_decay, m.optim.weight_decay_mode) == (1e-5, "coupled")
    # solo-learn's static_lr on SimSiam's predictor; its BYOL has no predictor multiplier.
    assert (m.simsiam.pred_fixed_lr, m.simsiam.pred_lr_mult) == (True, 1.0)
    assert (c.byol.pred_fixed_lr, c.byol.pred_lr_mult) == (False, 1.0)
    for name in ("byol", "simsiam"):
        g = config.validate(_load(tool, tmp_path,
                                  f"--flagfile=configs/generated_images_{name}.cfg"))
        ref = config.validate(_load(tool, tmp_path, "--flagfile=configs/generated_images.cfg"))
        assert g.method.method == name and g.data.dataset == "generated_images"
        # The same run as the contrastive CPU config, but the method.
        for attr in ("images", "generated", "optim"):
            assert getattr(g, attr) == getattr(ref, attr), attr
    # The predictor at 10x the rate (README: 3 seeds each, every seed better).
    assert config.validate(_load(tool, tmp_path,
                                 "--flagfile=configs/generated_images_byol.cfg")
                           ).byol.pred_lr_mult == 10.0
    assert config.validate(_load(tool, tmp_path,
                                 "--flagfile=configs/generated_images_simsiam.cfg")
                           ).simsiam.pred_lr_mult == 10.0


def test_the_hltm_config_takes_method_byol(tool, tmp_path):
    cfg = config.validate(_load(tool, tmp_path, "--flagfile=configs/hltm.cfg",
                                "--method=byol"))
    assert cfg.method.method == "byol" and cfg.byol.ema


def test_contrastive_options_are_refused_with_another_method(tool, tmp_path):
    # configs/generated_images.cfg sets --loss=ntxent and --temperature=0.5: a contrastive
    # run's flagfile. As a config (Python, flags.txt) that is refused ...
    cfg = _load(tool, tmp_path, "--flagfile=configs/generated_images.cfg", "--method=byol")
    with pytest.raises(config.ConfigError) as e:
        config.validate(cfg)
    assert e.value.flag == "loss"
    assert str(e.value).startswith("--loss: is an option of --method=contrastive, not of "
                                   "--method=byol; got --loss=ntxent, allowed: its default nce")
    # A flag given at its default value is the same config as no flag: accepted.
    config.validate(config.TrainConfig(method="byol", loss="nce", model_dir=str(tmp_path)))
    # ... but train.py resets the options that came from the flagfile, with a note ...
    argv = ["train.py", "--flagfile=configs/generated_images.cfg", "--method=byol"]
    fixed, note = tool.drop_other_methods_options(cfg, tool.command_line_flags(argv))
    assert note == ("note: --method=byol does not use the flagfile's --loss=ntxent, "
                    "--temperature=0.5; left at their defaults")
    assert (fixed.contrastive.loss, fixed.contrastive.temperature) == ("nce", 0.1)
    assert fixed.replace(loss="ntxent", temperature=0.5) == cfg
    config.validate(fixed)
    # ... and keeps the ones written on the command line, which validation refuses.
    bad = _load(tool, tmp_path, "--flagfile=configs/generated_images.cfg", "--method=byol",
                "--temperature=0.2")
    kept, note = tool.drop_other_methods_options(
        bad, tool.command_line_flags([*argv, "--temperature=0.2"]))
    assert note.endswith("--loss=ntxent; left at their defaults")
    with pytest.raises(config.ConfigError, match="^--temperature: is an option of "
                       "--method=contrastive"):
        config.validate(kept)


def test_command_line_flags(tool):
    assert tool.command_line_flags(
        ["train.py", "--flagfile=a.cfg", "--method=byol", "--noprobe", "-epochs=3",
         "--jit_compile", "rest"]) == {"method", "probe", "epochs", "jit_compile"}


@pytest.mark.parametrize("kw", [dict(dataset="generated_images"),
                                dict(dataset="translation1d"), dict(dataset="hltm")])
@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_contrastive_task_checks_only_for_contrastive(tmp_path, kw, method):
    # --negatives=explicit is refused for images and the toy, nce_batch+batch for hltm:
    # with another method the flag itself is the error (it belongs to contrastive).
    bad = {"generated_images": dict(negatives="explicit"),
           "translation1d": dict(negatives="explicit"),
           "hltm": dict(negatives="batch", loss="nce_batch")}[kw["dataset"]]
    with pytest.raises(config.ConfigError) as e:
        config.validate(config.TrainConfig(model_dir=str(tmp_path), **kw, **bad))
    assert e.value.flag == "negatives" and "is an option" not in str(e.value)
    with pytest.raises(config.ConfigError) as e:
        config.validate(config.TrainConfig(model_dir=str(tmp_path), method=method, **kw,
                                           **bad))
    assert "is an option of --method=contrastive" in str(e.value)
    config.validate(config.TrainConfig(model_dir=str(tmp_path), method=method, **kw))


def test_resume_refuses_another_method(tmp_path):
    cfg = config.TrainConfig(method="byol", model_dir=str(tmp_path))
    (tmp_path / "flags.txt").write_text(config.to_flagfile(cfg))
    with pytest.raises(config.ConfigError, match="--method: .* made with --method=byol"):
        config.validate(cfg.replace(method="simsiam"))
    with pytest.raises(config.ConfigError, match="--byol_base_momentum"):
        config.validate(cfg.replace(byol_base_momentum=0.99))
