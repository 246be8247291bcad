"""Run directories written before the redesign (tests/run/fixtures/v1_*: one epoch of a tiny
HLTM run and of a tiny translation-toy run, made by the previous layout's tools/train.py)
still load and resume: flags.txt parses, the checkpoint restores (the translation toy's
through the legacy path, since its online probe then shared the method's optimizer), and
training continues to the same contrastive numbers as a run started on this layout."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dualssl_tf import config
from dualssl_tf.run import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
PROBE_KEYS = {"probe_acc", "probe_loss"}


def _old_run(tmp_path, name):
    run = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, f"v1_{name}"), run)
    text = (run / "flags.txt").read_text()
    assert "--method=" not in text      # written before --method existed
    cfg = config.from_flag_strings(config.parse_flagfile(text))
    return run, cfg.replace(model_dir=str(run), epochs=2, verbose=0)


def _train(flagfile, model_dir):
    """tools/train.py in a subprocess: the environment the fixtures were made in (the
    tools turn oneDNN on; this test process imported TensorFlow without it)."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"),
                          f"--flagfile={flagfile}", f"--model_dir={model_dir}", "--epochs=2",
                          "--verbose=0"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def _metrics(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.parametrize("name", ["hltm", "translation1d"])
def test_old_run_dir_resumes_to_the_new_layouts_numbers(tmp_path, name):
    run, cfg = _old_run(tmp_path, name)
    config.validate(cfg)                 # the old flags are compatible with the old run dir
    found = rundir.RunDir(str(run)).find_checkpoint()
    assert (found["epoch"], found["step"]) == (1, cfg.optim.steps_per_epoch)
    flagfile = tmp_path / "old_flags.txt"
    shutil.copy(run / "flags.txt", flagfile)
    assert "Resuming" in _train(flagfile, run).stdout
    _train(flagfile, tmp_path / "fresh")
    old, new = _metrics(run / "metrics.jsonl"), _metrics(tmp_path / "fresh" / "metrics.jsonl")
    assert [r["epoch"] for r in old] == [0, 1, 2]
    if name == "hltm":   # no probe: the same bytes as a run made entirely on this layout
        assert (run / "metrics.jsonl").read_bytes() == \
            (tmp_path / "fresh" / "metrics.jsonl").read_bytes()
    for a, b in zip(old, new):
        # The probe's numbers may differ (it has its own optimizer now); nothing else.
        assert {k: v for k, v in a.items() if k not in PROBE_KEYS} == \
            {k: v for k, v in b.items() if k not in PROBE_KEYS}
    from dualssl_tf.evaluation import export
    x = np.random.default_rng(0).random((4, *export.load_encoder(
        str(run / "saved_model")).input_shape)).astype(np.float32)
    got = export.load_encoder(str(run / "saved_model"))(x)["representation"].numpy()
    want = export.load_encoder(str(tmp_path / "fresh" / "saved_model"))(x)["representation"]
    np.testing.assert_array_equal(got, want.numpy())
