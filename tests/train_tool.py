"""tools/train.py loaded as a module (TensorFlow-free), for the tests that parse its flags."""

import importlib.util
import os

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(module_name):
    """The tool under ``module_name``, its flags defined (replacing same-named flags that
    other tools' tests defined in this process)."""
    spec = importlib.util.spec_from_file_location(
        module_name, os.path.join(ROOT, "tools", "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.define_flags()
    return module


def parse(tool, model_dir, *argv):
    """The TrainConfig ``tool`` (from :func:`load`) makes of the command line ``argv`` with
    ``--model_dir=model_dir``, not yet validated; flagfile paths are relative to the
    repository root, as nested --flagfile lines in configs/ are."""
    flags.FLAGS.unparse_flags()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        flags.FLAGS(["train.py", *argv, f"--model_dir={model_dir}"])
    finally:
        os.chdir(cwd)
    cfg = tool.config_from_flags()
    flags.FLAGS.unparse_flags()
    return cfg
