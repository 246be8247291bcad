"""Quiet tool start-up (issue 13, part 2; issue 20, part 2): TensorFlow's C++ start-up lines
are captured unless --tf_log or TF_CPP_MIN_LOG_LEVEL 0 / 1 asks for them, a bad input found
after TensorFlow is imported is exactly one line on stderr, and a broken TensorFlow
installation still shows its full message."""

import os
import subprocess
import sys
import textwrap

import pytest

from dualssl_tf import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = ROOT
    env.update(extra)
    return env


def _fake_tensorflow(tmp_path, body):
    """A stand-in `tensorflow` package that writes to file descriptor 2 like TF's C++."""
    pkg = tmp_path / "fake" / "tensorflow"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    return str(tmp_path / "fake")


IMPORT = ("import sys; from absl import flags; from tools import cli; "
          "flags.FLAGS(sys.argv[:1] + sys.argv[1:]); cli.import_tensorflow(); print('imported')")

OK_TF = """
    import os, types
    os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit\\n")
    config = types.SimpleNamespace(
        list_physical_devices=lambda: os.write(2, b"I0000 device init\\n") and [])
"""


# TF_CPP_MIN_LOG_LEVEL 2 and 3 are how people silence TensorFlow (issue 20, part 2): the
# start-up lines stay captured; unset or not a number is TensorFlow's default, also captured.
@pytest.mark.parametrize("level", [None, "2", "3", " 3", "quiet"])
def test_start_up_lines_are_captured(tmp_path, level):
    fake = _fake_tensorflow(tmp_path, OK_TF)
    extra = {} if level is None else {"TF_CPP_MIN_LOG_LEVEL": level}
    proc = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True,
                          env=_env(PYTHONPATH=f"{fake}{os.pathsep}{ROOT}", **extra), cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "imported"
    assert proc.stderr == ""


# --tf_log, or a level that asks for INFO (0) or WARNING (1) lines, shows them.
@pytest.mark.parametrize("how", ["--tf_log", "0", "1", "--tf_log with 3"])
def test_start_up_lines_shown_when_asked(tmp_path, how):
    fake = _fake_tensorflow(tmp_path, OK_TF)
    level = how.rsplit(" ", 1)[-1]
    extra = {} if how == "--tf_log" else {"TF_CPP_MIN_LOG_LEVEL": level}
    args = ["--tf_log"] if how.startswith("--tf_log") else []
    proc = subprocess.run([sys.executable, "-c", IMPORT, *args], capture_output=True,
                          text=True, env=_env(PYTHONPATH=f"{fake}{os.pathsep}{ROOT}", **extra),
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "cuInit" in proc.stderr and "device init" in proc.stderr


def test_a_failing_import_shows_its_full_message(tmp_path):
    fake = _fake_tensorflow(tmp_path, """
        import os
        os.write(2, b"native: libtensorflow_framework.so.2: cannot open shared object\\n")
        raise ImportError("DLL load failed")
    """)
    proc = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True,
                          env=_env(PYTHONPATH=f"{fake}{os.pathsep}{ROOT}"), cwd=ROOT,
                          timeout=60)
    assert proc.returncode != 0
    assert "libtensorflow_framework.so.2: cannot open shared object" in proc.stderr
    assert "ImportError: DLL load failed" in proc.stderr


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "contains no image files"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is not a directory")])
def test_folder_checked_before_tensorflow(tmp_path, make, message):
    cfg = config.TrainConfig(dataset="folder", data_dir=str(make(tmp_path)),
                             model_dir=str(tmp_path / "out"))
    with pytest.raises(config.ConfigError, match=message) as e:
        config.validate(cfg)
    assert e.value.flag == "data_dir"


def _unknown_tfds_set(tmp_path, level):
    # An unknown tfds name is only known to be unknown once tfds (and TensorFlow) loaded.
    extra = {} if level is None else {"TF_CPP_MIN_LOG_LEVEL": level}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train.py"),
         "--dataset=no_such_tfds_set", f"--data_dir={tmp_path / 'data'}",
         f"--model_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, env=_env(**extra), cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert os.listdir(tmp_path) == []   # nothing written
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("train.py: error: --dataset: unknown dataset"), lines[-1]
    return lines


# The real TensorFlow and tool; "3" printed 6 start-up lines before the error until issue 20.
@pytest.mark.parametrize("level", [None, "3"])
def test_bad_input_after_tensorflow_import_is_one_line(tmp_path, level):
    lines = _unknown_tfds_set(tmp_path, level)
    assert len(lines) == 1, lines


def test_bad_input_with_tf_log_level_1_shows_the_start_up_lines_before_its_line(tmp_path):
    lines = _unknown_tfds_set(tmp_path, "1")
    assert len(lines) > 1, lines
    assert not any(l.startswith("train.py:") for l in lines[:-1]), lines
