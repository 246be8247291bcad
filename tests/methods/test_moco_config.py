"""MoCo v2 / v3 options (TensorFlow-free): the published and CPU flagfiles parse and validate
to their recipes, and bad values are refused as tools/train.py refuses every bad input: one
line naming the flag, exit status 2, nothing written (tests/test_bad_input.py's machinery)."""


import pytest

from dualssl_tf import config
from tests import test_bad_input as bad
from tests import train_tool


@pytest.fixture(scope="module")
def tool():
    return train_tool.load("train_tool_moco_cfg")


def _load(tool, tmp_path, *argv):
    return config.validate(train_tool.parse(tool, tmp_path / "run", *argv))


def test_published_configs(tool, tmp_path):
    v2 = _load(tool, tmp_path, "--flagfile=configs/mocov2_cifar10.cfg")
    assert (v2.method.method, v2.images.proj_hidden_dim, v2.images.proj_dim,
            v2.images.proj_bn) == ("mocov2", 2048, 256, False)
    o = v2.mocov2
    assert (o.queue_size, o.symmetric, o.temperature, o.base_momentum, o.final_momentum) == (
        32768, True, 0.2, 0.99, 0.999)
    assert (v2.optim.optimizer, v2.optim.learning_rate, v2.optim.batch_size,
            v2.optim.weight_decay, v2.optim.weight_decay_mode, v2.optim.epochs) == (
        "sgd", 0.3, 256, 1e-4, "coupled", 1000)
    v3 = _load(tool, tmp_path, "--flagfile=configs/mocov3_cifar10.cfg")
    assert (v3.method.method, v3.images.proj_hidden_dim, v3.images.proj_dim) == (
        "mocov3", 4096, 256)
    o = v3.mocov3
    assert (o.pred_hidden_dim, o.temperature, o.base_momentum, o.final_momentum) == (
        4096, 0.2, 0.99, 1.0)
    assert (v3.optim.optimizer, v3.optim.learning_rate, v3.optim.lars_eta,
            v3.optim.weight_decay) == ("lars", 0.3, 0.02, 1e-6)
    ref = _load(tool, tmp_path, "--flagfile=configs/generated_images.cfg")
    for name in ("mocov2", "mocov3"):
        g = _load(tool, tmp_path, f"--flagfile=configs/generated_images_{name}.cfg")
        assert g.method.method == name and g.data.dataset == "generated_images"
        # The same run as the contrastive CPU config, but the method.
        for attr in ("images", "generated", "optim"):
            assert getattr(g, attr) == getattr(ref, attr), attr


def test_paper_defaults(tool, tmp_path):
    """MoCo v2: K 65536, constant momentum 0.999, tau 0.2, one view order; MoCo v3's
    ResNet: predictor 4096, momentum 0.99 -> 1."""
    c = _load(tool, tmp_path, "--method=mocov2")
    assert (c.mocov2.queue_size, c.mocov2.base_momentum, c.mocov2.final_momentum,
            c.mocov2.temperature, c.mocov2.symmetric) == (65536, 0.999, 0.999, 0.2, False)
    c = _load(tool, tmp_path, "--method=mocov3")
    assert (c.mocov3.pred_hidden_dim, c.mocov3.base_momentum, c.mocov3.final_momentum,
            c.mocov3.temperature) == (4096, 0.99, 1.0, 0.2)


# (case id, extra argv, text that must appear in the one-line message), on
# tests/test_bad_input.py's valid tiny HLTM run (--batch_size=16).
CASES = [
    ("queue_not_multiple_of_batch", ["--method=mocov2", "--mocov2_queue_size=100"],
     "--mocov2_queue_size: 100 is not a multiple of the global batch --batch_size=16"),
    ("queue_zero", ["--method=mocov2", "--mocov2_queue_size=0"],
     "--mocov2_queue_size: must be >= 1"),
    ("mocov2_momentum_above_1", ["--method=mocov2", "--mocov2_base_momentum=1.5"],
     "--mocov2_base_momentum: must be in [0, 1], got 1.5"),
    ("mocov3_final_momentum_negative", ["--method=mocov3", "--mocov3_final_momentum=-0.1"],
     "--mocov3_final_momentum: must be in [0, 1]"),
    ("mocov2_temperature_zero", ["--method=mocov2", "--mocov2_temperature=0"],
     "--mocov2_temperature: must be > 0"),
    ("mocov3_temperature_negative", ["--method=mocov3", "--mocov3_temperature=-0.2"],
     "--mocov3_temperature: must be > 0"),
    ("mocov3_predictor_width_0", ["--method=mocov3", "--mocov3_pred_hidden_dim=0"],
     "--mocov3_pred_hidden_dim: must be >= 1"),
    ("projector_width_0", ["--method=mocov2", "--dataset=generated_images",
                           "--proj_hidden_dim=0"], "--proj_hidden_dim: must be >= 1"),
    ("mocov2_flag_with_mocov3", ["--method=mocov3", "--mocov2_queue_size=256"],
     "--mocov2_queue_size: is an option of --method=mocov2, not of --method=mocov3"),
    ("mocov3_flag_with_byol", ["--method=byol", "--mocov3_pred_hidden_dim=8"],
     "--mocov3_pred_hidden_dim: is an option of --method=mocov3"),
]
SUBPROCESS = ["queue_not_multiple_of_batch"]


@pytest.fixture(scope="module")
def bad_tool():
    return train_tool.load("train_tool")


@pytest.mark.parametrize("name,args,culprit", CASES, ids=[c[0] for c in CASES])
def test_bad_input_in_process(bad_tool, tmp_path, monkeypatch, capsys, name, args, culprit):
    argv = bad._argv(args, tmp_path)
    watched = bad._watched_dir(argv, tmp_path)
    before = bad._snapshot(watched)
    status, stderr = bad._run_in_process(bad_tool, argv, monkeypatch, capsys)
    bad._check(status, stderr, culprit, before, watched)


@pytest.mark.parametrize("name,args,culprit", [c for c in CASES if c[0] in SUBPROCESS],
                         ids=SUBPROCESS)
def test_bad_input_subprocess(tmp_path, name, args, culprit):
    bad.test_malformed_invocation_subprocess(tmp_path, name, args, culprit)
