"""tools/cli.py's flag plumbing (issue 13, part 5): --helpfull exits 0, near-miss flags
get a "did you mean", and ~ is expanded in path flags and --flagfile. TensorFlow-free."""

import importlib.util
import os
import subprocess
import sys

import pytest
from absl import flags

from tools import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "train.py")


@pytest.fixture(scope="module")
def train_tool():
    spec = importlib.util.spec_from_file_location("train_tool_cli", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.define_flags()
    return module


def _parse(tool, argv, capsys):
    flags.FLAGS.unparse_flags()
    try:
        tool.parse_flags(["train.py", *argv])
        return 0, capsys.readouterr().err
    except SystemExit as e:
        return e.code, capsys.readouterr().err


@pytest.mark.parametrize("arg,hint", [("--epoch=3", "did you mean --epochs?"),
                                      ("--nodeterministc", "did you mean --nodeterministic?"),
                                      ("--batchsize=4", "did you mean --batch_size?")])
def test_near_miss_flag_suggests_the_flag(train_tool, capsys, arg, hint):
    status, err = _parse(train_tool, [arg], capsys)
    assert status == 2
    assert len(err.splitlines()) == 1 and hint in err, err


def test_far_miss_flag_suggests_nothing(train_tool, capsys):
    status, err = _parse(train_tool, ["--zzzqqq=1"], capsys)
    assert status == 2 and "did you mean" not in err


def test_tilde_expanded_in_path_flags_and_flagfile(train_tool, tmp_path, monkeypatch,
                                                   capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run.cfg").write_text("--data_dir=~/tensorflow_datasets\n")
    status, err = _parse(train_tool, ["--flagfile=~/run.cfg", "--model_dir=~/runs/a",
                                      "--dataset=stl10"], capsys)
    assert status == 0, err
    cfg = train_tool.config_from_flags()
    assert cfg.run.model_dir == str(tmp_path / "runs" / "a")
    assert cfg.data.data_dir == str(tmp_path / "tensorflow_datasets")
    assert cfg.data.dataset == "stl10"
    assert cli.expand_user("gs://bucket/~x") == "gs://bucket/~x"
    flags.FLAGS.unparse_flags()


def test_helpfull_exits_0():
    proc = subprocess.run([sys.executable, TOOL, "--helpfull"], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    assert "--epochs" in proc.stdout + proc.stderr
