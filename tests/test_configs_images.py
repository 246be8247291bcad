"""The image flagfiles parse through tools/train.py's flags and pass config.validate."""


import pytest

from dualssl_tf import config
from dualssl_tf.tasks.images import local_view_settings, view_settings
from tests import train_tool


@pytest.fixture(scope="module")
def tool():
    """tools/train.py loaded as a module, its flags defined once in this process."""
    return train_tool.load("train_tool_cfg")


def _load(tool, name, tmp_path):
    return config.validate(train_tool.parse(tool, tmp_path / name,
                                            f"--flagfile=configs/{name}.cfg"))


def test_paper_settings(tool, tmp_path):
    stl = _load(tool, "stl10", tmp_path)
    assert (stl.data.dataset, stl.images.image_size, stl.images.stem,
            stl.data.encoder) == ("stl10", 96, "cifar", "resnet18")
    assert (stl.contrastive.loss, stl.contrastive.temperature,
            stl.optim.batch_size) == ("ntxent", 0.5, 128)
    assert stl.images.color_jitter_strength == 1.0 and stl.images.blur
    assert (stl.images.proj_hidden_dim, stl.images.proj_dim,
            stl.images.proj_layers) == (512, 128, 2)
    c10 = _load(tool, "cifar10", tmp_path)
    assert (c10.data.dataset, c10.images.image_size, c10.images.color_jitter_strength,
            c10.images.blur) == ("cifar10", 32, 0.5, False)
    c100 = _load(tool, "cifar100", tmp_path)
    assert c100.data.dataset == "cifar100" and c100.images.color_jitter_strength == 0.5
    assert c100.run.model_dir.endswith("cifar100")


def test_theorem4_run(tool, tmp_path):
    cov = _load(tool, "stl10_cov", tmp_path)
    assert (cov.contrastive.loss, cov.optim.optimizer, cov.optim.learning_rate,
            cov.optim.weight_decay, cov.optim.epochs) == ("cov", "adam", 0.001, 0.0, 500)
    assert cov.data.dataset == "stl10" and cov.images.blur


def test_generated_images_config(tool, tmp_path):
    gen = _load(tool, "generated_images", tmp_path)
    assert gen.data.dataset == "generated_images" and gen.method.probe
    assert gen.images.image_size <= 32 and gen.images.width_multiplier <= 0.25


# DINO (issue 24): configs/dino_cifar10.cfg is solo-learn's ResNet-18 CIFAR-10 run.
def test_dino_cifar10_is_solo_learns_recipe(tool, tmp_path):
    c = _load(tool, "dino_cifar10", tmp_path)
    d = c.dino
    assert c.method.method == "dino" and c.data.dataset == "cifar10"
    assert (d.out_dim, d.hidden_dim, d.bottleneck_dim, d.head_layers, d.head_bn,
            d.norm_last_layer) == (4096, 2048, 256, 3, False, True)
    assert (d.student_temp, d.teacher_temp, d.warmup_teacher_temp_epochs,
            d.center_momentum) == (0.1, 0.07, 0, 0.9)
    assert (d.base_momentum, d.final_momentum, d.freeze_last_layer) == (0.9995, 1.0, 1)
    assert (c.optim.optimizer, c.optim.learning_rate, c.optim.batch_size,
            c.optim.weight_decay, c.optim.lars_eta, c.optim.epochs) == (
        "lars", 0.3, 256, 1e-6, 0.02, 1000)
    views = view_settings(c.images)
    assert views["solarize_prob"] == (0.0, 0.2) and not views["blur"]
    assert local_view_settings(c.images, 32) is None


# configs/dino_cifar10_vit.cfg: Gani et al.'s DINO/ViT CIFAR-10 recipe (patch 4, multi-crop).
def test_dino_cifar10_vit_is_gani_et_als_recipe(tool, tmp_path):
    c = _load(tool, "dino_cifar10_vit", tmp_path)
    d, o = c.dino, c.optim
    assert (c.data.encoder, c.images.patch_size, c.images.image_size) == ("vit_tiny", 4, 32)
    assert (d.out_dim, d.hidden_dim, d.bottleneck_dim, d.head_layers, d.head_bn,
            d.norm_last_layer) == (1024, 512, 256, 3, False, True)
    assert (d.student_temp, d.warmup_teacher_temp, d.teacher_temp,
            d.warmup_teacher_temp_epochs, d.center_momentum) == (0.1, 0.04, 0.07, 10, 0.9)
    assert (d.base_momentum, d.final_momentum, d.freeze_last_layer, d.clip_grad) == (
        0.996, 1.0, 1, 3.0)
    assert (o.optimizer, o.batch_size, o.learning_rate * o.batch_size / 256, o.weight_decay,
            o.weight_decay_end, o.warmup_epochs, o.epochs) == (
        "adamw", 512, 1e-4, 0.04, 0.4, 30, 200)
    # Their cosine ends at min_lr 1e-6: so does the trainer's optimizer (97 steps an epoch,
    # 50000 / 512), read at the run's last step and at its peak (float32 schedule: terms of
    # size 1e-4 rounded to ~1e-11).
    from dualssl_tf.run import trainer
    opt = trainer.build_optimizer(c, steps_per_epoch=97)
    opt.iterations.assign(200 * 97)
    assert float(opt.learning_rate) == pytest.approx(1e-6, abs=1e-10)
    opt.iterations.assign(30 * 97)
    assert float(opt.learning_rate) == pytest.approx(1e-4, rel=1e-5)
    views = view_settings(c.images)
    assert views["area_range"] == (0.7, 1.0) and views["blur"]
    assert (views["blur_prob"], views["solarize_prob"]) == ((1.0, 0.1), (0.0, 0.2))
    local = local_view_settings(c.images, 32)
    assert (local["num"], local["size"], local["kwargs"]["area_range"]) == (8, 16, (0.2, 0.5))


def test_issue_24_commands_with_a_vit(tool, tmp_path):
    def parse(*argv):
        return config.validate(train_tool.parse(tool, tmp_path / "run", *argv))

    moco = parse("--flagfile=configs/mocov3_cifar10.cfg", "--encoder=vit_small")
    assert (moco.method.method, moco.data.encoder) == ("mocov3", "vit_small")
    dino = parse("--flagfile=configs/generated_images_dino.cfg", "--encoder=vit_tiny",
                 "--local_crops=2", "--local_crop_size=8")     # 8 px crops of the 16 px ViT
    assert local_view_settings(dino.images, 16)["size"] == 8
    # SimCLR's CPU config with --method=dino keeps SimCLR's --loss: refused, naming it.
    with pytest.raises(config.ConfigError, match="--loss: is an option of --method=contrast"):
        parse("--flagfile=configs/generated_images.cfg", "--encoder=vit_tiny", "--method=dino")


def test_generated_images_dino_is_the_tuned_cpu_recipe(tool, tmp_path):
    # The settings under which DINO learns the shapes in 4 epochs (docs/methods.md#dino).
    g = _load(tool, "generated_images_dino", tmp_path)
    d = g.dino
    assert g.method.method == "dino" and g.optim.epochs == 4
    assert (d.out_dim, d.hidden_dim, d.bottleneck_dim, d.head_layers, d.head_bn,
            d.norm_last_layer) == (256, 128, 64, 3, True, False)
    assert (d.teacher_temp, d.warmup_teacher_temp_epochs, d.base_momentum,
            d.freeze_last_layer) == (0.02, 0, 0.99, 0)
    assert (g.optim.optimizer, g.optim.learning_rate) == ("adam", 0.002)
    assert local_view_settings(g.images, 16) is None   # local crops hurt here
