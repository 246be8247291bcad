"""Run directories written before the redesign still load and resume.

tests/run/fixtures/ (see its README.md) holds one epoch of a tiny HLTM run and of a tiny
translation-toy run made by the previous layout's tools/train.py, and what that layout
produced when the same runs went on uninterrupted to epoch 2. Resumed here to epoch 2, they
must end where the old layout ended: flags.txt parses, the checkpoint restores (the toy's
through the legacy path: its online probe then shared the method's optimizer), and the
metrics and the exported encoder match. The probe's numbers may differ (it has its own
optimizer now); nothing else may.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dualssl_tf import config
from dualssl_tf.evaluation import export
from dualssl_tf.run import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "run", "fixtures")
PROBE_KEYS = {"probe_acc", "probe_loss"}
RTOL, ATOL = 32 * 2.0 ** -24, 1e-7   # see the module docstring


def _assert_close(got, want, path="metrics"):
    """Nested metrics records equal: the same keys and integers, floats to RTOL/ATOL."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (path, got, want)
        for k in want:
            _assert_close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, float):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=path)
    else:
        assert got == want, (path, got, want)


def _resume(run):
    """tools/train.py --epochs=2 on the run dir, in the environment the fixtures were made
    in (oneDNN off: the same CPU kernels)."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"),
                          f"--flagfile={run / 'flags.txt'}", f"--model_dir={run}",
                          "--epochs=2", "--verbose=0"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.mark.parametrize("name", ["hltm", "translation1d"])
def test_old_run_dir_resumes_to_where_the_old_layout_ended(tmp_path, name):
    fixture = os.path.join(FIXTURES, f"v1_{name}")
    run = tmp_path / name
    shutil.copytree(fixture, run, ignore=shutil.ignore_patterns("expected_*"))
    text = (run / "flags.txt").read_text()
    assert "--method=" not in text      # written before --method existed
    cfg = config.from_flag_strings(config.parse_flagfile(text)).replace(model_dir=str(run))
    config.validate(cfg)                # its flags are compatible with its own run dir
    found = rundir.RunDir(str(run)).find_checkpoint()
    assert (found["epoch"], found["step"]) == (1, cfg.optim.steps_per_epoch)

    assert "Resuming" in _resume(run).stdout
    expected = os.path.join(fixture, "expected_metrics_2_epochs.jsonl")
    if name == "hltm":   # no probe: the lines the old layout wrote are its very bytes
        assert (run / "metrics.jsonl").read_bytes().splitlines()[:2] == \
            open(expected, "rb").read().splitlines()[:2]
    got = [json.loads(line) for line in open(run / "metrics.jsonl")]
    want = [json.loads(line) for line in open(expected)]
    assert [r["epoch"] for r in got] == [0, 1, 2]
    for a, b in zip(got, want):
        # The epoch resumed on this layout also logs the metrics added since (pos_cos;
        # embed_std and effective_rank for hltm: issue 14); every number the old layout
        # wrote is the same.
        assert set(b) <= set(a)
        _assert_close({k: a[k] for k in b if k not in PROBE_KEYS},
                      {k: v for k, v in b.items() if k not in PROBE_KEYS}, f"epoch {b['epoch']}")
    encoder = export.load_encoder(str(run / "saved_model"))
    x = np.random.default_rng(0).random((4, *encoder.input_shape)).astype(np.float32)
    np.testing.assert_allclose(encoder(x)["representation"].numpy(),
                               np.load(os.path.join(fixture, "expected_representation.npy")),
                               rtol=RTOL, atol=ATOL)
