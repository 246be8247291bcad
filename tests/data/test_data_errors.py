"""The data layer knows no flags (ARCHITECTURE.md, Layers; issue 23 part 3): no module
under dualssl_tf/data imports the option machinery or names ConfigError. Its errors are
DataErrors naming the raising function's argument; the images task maps each argument to
the flag that supplied it, with the same message (the tools' one line)."""

import ast
import os

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.config import ConfigError, TrainConfig
from dualssl_tf.data import images
from dualssl_tf.data.errors import DataError
from dualssl_tf.tasks.images import task as image_task
from tests.test_layers import PACKAGE

DATA = os.path.join(PACKAGE, "data")


def _data_sources():
    """{path relative to dualssl_tf/data: source text} of every module under it."""
    out = {}
    for directory, _, files in os.walk(DATA):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path) as f:
                    out[os.path.relpath(path, DATA)] = f.read()
    return out


def flag_uses(sources):
    """{module: [what]} of the modules whose source imports ``dualssl_tf.options`` (at any
    depth, function-level imports included) or absl's flags, or names ``ConfigError``."""
    out = {}
    for module, text in sources.items():
        found = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names
                             if a.name.startswith(("dualssl_tf.options", "absl.flags")))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = {a.name for a in node.names}
                if (node.module.startswith(("dualssl_tf.options", "absl.flags"))
                        or (node.module == "dualssl_tf" and "options" in names)
                        or (node.module == "absl" and "flags" in names)):
                    found.add(node.module)
            elif isinstance(node, ast.Name) and node.id == "ConfigError":
                found.add("ConfigError")
            elif isinstance(node, ast.Attribute) and node.attr == "ConfigError":
                found.add("ConfigError")
        if found:
            out[module] = sorted(found)
    return out


def data_error_arguments(sources):
    """The literal first arguments of every ``DataError(...)`` raised in ``sources``."""
    found = set()
    for text in sources.values():
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DataError"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                found.add(node.args[0].value)
    return found


def test_no_data_module_knows_the_flags():
    assert flag_uses(_data_sources()) == {}


def test_the_check_catches_options_absl_flags_and_config_error():
    assert flag_uses({
        "a.py": "from dualssl_tf.options import require\n",
        "b.py": "def f():\n    from dualssl_tf import options\n",
        "c.py": "import dualssl_tf.options as o\n",
        "d.py": "from absl import flags\n",
        "e.py": "def f():\n    raise options.ConfigError('x', 'y')\n",
        "f.py": "from absl import logging\nraise ValueError('ConfigError')\n",   # fine
    }) == {"a.py": ["dualssl_tf.options"], "b.py": ["dualssl_tf"],
           "c.py": ["dualssl_tf.options"], "d.py": ["absl"], "e.py": ["ConfigError"]}


def test_every_data_error_argument_has_its_flag_and_no_other():
    raised = data_error_arguments(_data_sources())
    # The arguments of today's data layer (tfds_source, folders, pretrain_dataset).
    assert raised == {"name", "split", "data_dir", "path", "fraction", "batch_size",
                      "views_on"}
    assert set(image_task.FLAG_OF_ARGUMENT) == raised


def test_data_error_names_the_argument():
    e = DataError("path", "/x is not a directory")
    assert isinstance(e, ValueError) and not isinstance(e, ConfigError)
    assert (e.argument, e.message, str(e)) == ("path", "/x is not a directory",
                                               "path: /x is not a directory")


def _png(path, value=0, size=(8, 8)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(np.full(size + (3,), value, np.uint8)))


def _cfg(**kw):
    return TrainConfig(**dict(dict(dataset="folder", image_size=8, stem="cifar",
                                   batch_size=4, download=False), **kw))


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "flat_holdout",
                                  "single_holdout", "unknown_tfds", "tfds_not_prepared"])
def test_the_task_maps_data_errors_to_their_flags(tmp_path, case):
    """The data layer's error, raised again as the ConfigError the tools print (exit 2):
    ``--<flag>: <the DataError's message>``."""
    root = str(tmp_path / "imgs")
    flat = [f"{root}/{i}.png" for i in range(3)]
    cases = {  # files, config changes, (the DataError's argument, the flag)
        "missing": ([], {}, ("path", "data_dir")),
        "empty": ([f"{root}/a/x.txt"], {}, ("path", "data_dir")),
        "corrupt": ([f"{root}/a/0.png", f"{root}/a/bad.png"], {}, ("path", "data_dir")),
        "flat_holdout": (flat, {"holdout_fraction": 0.2}, ("fraction", "holdout_fraction")),
        "single_holdout": ([f"{root}/a/0.png", f"{root}/b/0.png"],
                           {"holdout_fraction": 0.2}, ("fraction", "holdout_fraction")),
        "unknown_tfds": ([], {"dataset": "no_such_images"}, ("name", "dataset")),
        "tfds_not_prepared": ([], {"dataset": "cifar10", "data_dir": str(tmp_path)},
                              ("data_dir", "data_dir")),
    }
    files, changes, (argument, flag) = cases[case]
    for path in files:
        if path.endswith("bad.png") or path.endswith(".txt"):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(b"not an image")
        else:
            _png(path)
    cfg = _cfg(**dict(dict(data_dir=root), **changes))
    with pytest.raises(DataError) as raw:     # what the data layer says ...
        images.sources(cfg.data.dataset, cfg.data.data_dir,
                       holdout_fraction=cfg.images.holdout_fraction)
    assert raw.value.argument == argument
    with pytest.raises(ConfigError) as mapped:  # ... and what the tools print of it
        image_task.sources(cfg)
    assert (mapped.value.flag, str(mapped.value)) == (flag, f"--{flag}: {raw.value.message}")
    assert "\n" not in str(mapped.value)

