"""tools/analyze.py end to end on a tiny translation-toy run, and its bad-input errors."""

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from dualssl_tf import config, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "analyze.py")


def _tool(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("runs") / "toy")
    cfg = config.TrainConfig(dataset="translation1d", loss="ntxent", temperature=0.5,
                             batch_size=32, optimizer="adam", learning_rate=0.01, epochs=2,
                             steps_per_epoch=10, translation1d_length=8,
                             translation1d_filters=4, seed=2, analysis_every=1,
                             model_dir=model_dir, verbose=0)
    training.train(cfg)
    return model_dir


def _check_outputs(out, toy_run):
    names = set(os.listdir(out))
    assert {"analysis.json", "emergence.png", "selectivity.png", "op_spectrum.png",
            "alignment.png", "filter_alignment.png"} <= names
    for name in names - {"analysis.json"}:
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    result = json.load(open(os.path.join(out, "analysis.json")))
    assert result["layers"] == ["conv"]
    # The toy's exact sample (2 objects x 8 locations), as the tool prints it, whatever
    # --points asked for.
    assert (result["points"], result["augmentations"]) == (2, 8)
    assert result["requested"]["points"] == 512
    assert result["emergence"]["epochs"] == [0, 1, 2]
    assert result["monitor"]["epochs"] == [0, 1, 2]                  # --analysis_every=1
    metrics = [json.loads(l) for l in open(os.path.join(toy_run, "metrics.jsonl"))]
    # The rebuilt initial network is the run's: same selectivity as logged at epoch 0.
    logged = [metrics[0]["selectivity"][f"f{j}"] for j in range(4)]
    assert result["filters"]["selectivity_init"] == pytest.approx(logged, abs=1e-6)
    logged = [metrics[-1]["selectivity"][f"f{j}"] for j in range(4)]
    assert result["filters"]["selectivity_final"] == pytest.approx(logged, abs=1e-5)
    op = result["operators"]["conv"]
    assert op["op_norm_init"] == pytest.approx(metrics[0]["op_norm"]["conv"], rel=1e-5)
    assert op["align_final"] == pytest.approx(metrics[-1]["op_align"]["conv"], rel=1e-4)


def test_report_in_process(toy_run, tmp_path):
    """What analyze.py runs, in-process (the subprocess version is marked slow)."""
    from dualssl_tf.analysis import report, runs
    run = runs.load_run(toy_run)
    result = report.analyze_run(run, ["conv"], progress=lambda msg: None)
    out = str(tmp_path / "out")
    os.makedirs(out)
    report.make_figures(result, out)
    with open(os.path.join(out, "analysis.json"), "w") as f:
        json.dump(result, f)
    _check_outputs(out, toy_run)


@pytest.mark.slow
def test_analyze_tool_end_to_end(toy_run, tmp_path):
    out = str(tmp_path / "out")
    res = _tool(f"--model_dir={toy_run}", f"--out_dir={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    _check_outputs(out, toy_run)


@pytest.mark.slow
def test_unknown_layer_is_one_line_exit_2(toy_run, tmp_path):
    out = str(tmp_path / "bad")
    res = _tool(f"--model_dir={toy_run}", "--layers=conv,nope", f"--out_dir={out}")
    assert res.returncode == 2
    lines = [l for l in res.stderr.strip().splitlines() if l.startswith("analyze.py")]
    assert len(lines) == 1
    assert lines[0].startswith("analyze.py: error: --layers: no layer named 'nope' in model")
    assert "Traceback" not in res.stderr
    assert not os.path.exists(out)                                   # nothing half-written


def test_library_errors_map_onto_flags():
    # In its own process: analyze.py defines absl flags (--model_dir, ...) at import, which
    # other tools loaded into this test process may already hold.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tools import analyze as t; "
            "print(t._flag_error(ValueError(\"layer: no layer named 'x'\"))); "
            "print(t._flag_error(ValueError('M: need at least 2'))); "
            "print(t._flag_error(ValueError('model_dir: no saved_model/')))")
    root = os.path.dirname(os.path.dirname(TOOL))
    out = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.splitlines() == ["--layers: no layer named 'x'",
                                       "--points: need at least 2",
                                       "--model_dir: no saved_model/"], out.stderr


def test_layer_without_kernel_is_rejected_before_work(toy_run):
    # Same path as the tool (which maps "layer: ..." onto "--layers: ..."), in-process.
    from dualssl_tf.analysis import report, runs
    run = runs.load_run(toy_run)
    with pytest.raises(ValueError, match=r"^layer: layer 'relu' \(ReLU\) has no kernel; "
                                         r"pick one of conv$"):
        report.check_layers(run.init.encoder, ["conv", "relu"])
    assert report.default_layers(run.init.encoder) == ["conv"]


def test_fast_errors(toy_run, tmp_path):
    res = _tool(f"--model_dir={toy_run}", "--points=1")
    assert res.returncode == 2 and res.stderr.startswith("analyze.py: error: --points:")
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _tool(f"--model_dir={empty}")
    assert res.returncode == 2
    assert res.stderr.strip() == (f"analyze.py: error: --model_dir: no metrics.jsonl in {empty}; "
                                  "point it at a run written by tools/train.py")
    res = _tool()
    assert res.returncode == 2 and "--model_dir: is required" in res.stderr
