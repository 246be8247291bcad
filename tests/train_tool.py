"""tools/train.py loaded as a module (TensorFlow-free), for the tests that parse its flags."""

import importlib.util
import os

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
