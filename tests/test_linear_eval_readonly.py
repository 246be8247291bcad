"""tools/linear_eval.py on a read-only run directory (issue 27): the feature cache falls
back to ~/.cache, an unwritable output directory is one line naming --output_dir, and the
flags its messages suggest exist.

The directory is made read-only at the tf.io.gfile layer by tests/readonly_tool.py
(chmod does not stop root; a read-only mount needs privileges).
"""

import json
import os
import subprocess
import sys

import pytest

from tests.test_tools_probe import ROOT, TF_NOISE
from tests.tiny_runs import train

HELPER = os.path.join(ROOT, "tests", "readonly_tool.py")
TOOL = os.path.join(ROOT, "tools", "linear_eval.py")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("readonly") / "run"
    train(run, epochs=1)
    return run


def _readonly_tool(readonly, home, *args):
    env = dict(os.environ, HOME=str(home), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, HELPER, str(readonly), TOOL, *args],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not TF_NOISE.match(l)]
    return proc, lines


def test_read_only_run(run_dir, tmp_path):
    args = [f"--saved_model={run_dir}/saved_model", "--num_train=300", "--num_test=100",
            "--verbose=0"]
    before = sorted(os.listdir(run_dir))
    # Without --output_dir, linear_eval.json would go into the run: one line, exit 2.
    proc, lines = _readonly_tool(run_dir, tmp_path, *args)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(
        f"linear_eval.py: error: --output_dir: linear_eval.json goes beside the SavedModel, "
        f"in {run_dir}, which is not writable (PermissionDeniedError: {run_dir}/.write-probe-")
    assert lines[0].endswith("; pass a writable --output_dir")
    # With it, the features are cached in ~/.cache instead of the run's feature_cache/.
    out = tmp_path / "out"
    proc, lines = _readonly_tool(run_dir, tmp_path, *args, f"--output_dir={out}")
    assert proc.returncode == 0 and lines == [], proc.stderr[-2000:]
    assert sorted(os.listdir(run_dir)) == before
    cache = tmp_path / ".cache" / "dualssl_tf" / "feature_cache"
    assert sorted(n.split("-")[3] for n in os.listdir(cache)) == ["test", "train"]
    result = json.loads((out / "linear_eval.json").read_text())
    assert 0.5 < result["linear"]["top1"] <= 1.0


def test_feature_cache_falls_back_then_names_cache_dir(tmp_path, monkeypatch):
    """In-process: a cache location that cannot be written is skipped for the next one
    (default: beside the SavedModel, then ~/.cache); --cache_dir has no fallback."""
    import numpy as np
    import tensorflow as tf
    from dualssl_tf import runfiles
    from dualssl_tf.evaluation import features

    readonly = str(tmp_path / "run")
    real = runfiles.makedirs

    def makedirs(path):
        if str(path).startswith(readonly):
            raise tf.errors.PermissionDeniedError(None, None, f"{path}; Permission denied")
        real(path)
    monkeypatch.setattr(runfiles, "makedirs", makedirs)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(features, "_fingerprint", lambda path: "fp")
    feats = (np.ones((3, 2), np.float32), np.arange(3))
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: feats)
    encoder = type("Encoder", (), {"path": f"{readonly}/saved_model"})()
    x, y = features.cached_features(encoder, None, "hltm", "train")
    assert (x == feats[0]).all() and (y == feats[1]).all()
    (cached,) = os.listdir(tmp_path / "home" / ".cache" / "dualssl_tf" / "feature_cache")
    assert cached.startswith("saved_model-hltm-train-representation-")
    with pytest.raises(ValueError, match=rf"^--cache_dir: cannot write the feature cache in "
                       rf"{readonly}/cache \(PermissionDeniedError: {readonly}/cache; "
                       r"Permission denied\); pass a writable --cache_dir$"):
        features.cached_features(encoder, None, "hltm", "test", cache_dir=f"{readonly}/cache")


def test_flags_named_by_its_messages_exist():
    """Every --flag the data code's messages suggest to linear_eval users is one of its
    flags (it once suggested --skip_corrupt_images without having it)."""
    proc = subprocess.run([sys.executable, TOOL, "--helpfull"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    assert "--[no]skip_corrupt_images" in proc.stdout and "--cache_dir" in proc.stdout
