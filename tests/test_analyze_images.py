"""tools/analyze.py on image runs: the matrix-free monitor's curves from metrics.jsonl, and
a run without them (one line, the collapse figure only)."""

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from dualssl_tf import config
from dualssl_tf.analysis import plots, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "analyze.py")
LAYERS = ("layer1_0_conv1", "layer2_0_conv1")


def fake_image_run(path, monitor=True, epochs=3, theorem4=False):
    """A finished image run's files as analyze.py reads them (no networks needed);
    ``theorem4``: a SimCLR run with Theorem 4's keys (else BYOL, without them)."""
    os.makedirs(os.path.join(path, "saved_model"))
    method = {"method": "contrastive"} if theorem4 else {"method": "byol"}
    cfg = config.TrainConfig(dataset="generated_images", model_dir=str(path), **method)
    with open(os.path.join(path, "flags.txt"), "w") as f:
        f.write(config.to_flagfile(cfg))
    with open(os.path.join(path, "finished.json"), "w") as f:
        json.dump({"epochs": epochs}, f)
    lines = []
    for e in range(epochs + 1):
        line = {"epoch": e, "embed_std": 0.1 + 0.01 * e, "effective_rank": 5.0 + e}
        if monitor:
            for k, layer in enumerate(LAYERS):
                line.setdefault("op_grad_cos", {})[layer] = 0.1 * e - 0.2 * k
                line.setdefault("op_w_norm", {})[layer] = 1.0 + e + k
                line.setdefault("op_residue", {})[layer] = 0.5 + 0.1 * k
                line.setdefault("op_top_eig", {})[layer] = 2.0 + e
                line.setdefault("op_trace", {})[layer] = 9.0 + e
                if theorem4:
                    line.setdefault("op_xi_grad_cos", {})[layer] = 0.1 * e - 0.1 * k
                    line.setdefault("op_xi_w_norm", {})[layer] = 0.5 + e
                    line.setdefault("op_xi_residue_share", {})[layer] = 0.9 - 0.1 * e
            line["op_monitor_seconds"] = 1.5
        lines.append(line)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return cfg, lines


def test_monitor_report_and_figures(tmp_path):
    cfg, lines = fake_image_run(tmp_path / "run")
    result = report.monitor_report(str(tmp_path / "run"), cfg, lines)
    assert result["monitor"]["epochs"] == [0, 1, 2, 3]
    assert result["monitor"]["series"]["op_grad_cos"]["layer2_0_conv1"] == pytest.approx(
        [-0.2, -0.1, 0.0, 0.1])
    assert result["monitor"]["series"]["op_w_norm"]["layer1_0_conv1"] == [1, 2, 3, 4]
    paths = report.monitor_figures(result, str(tmp_path))
    assert set(paths) == {"op_alignment", "op_norm", "op_residue", "op_spectrum_estimates"}
    for path in paths.values():
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    only = report.monitor_report("r", cfg, lines, layers=["layer2_0_conv1"])
    assert set(only["monitor"]["series"]["op_residue"]) == {"layer2_0_conv1"}
    with pytest.raises(ValueError, match="layers: conv9 not monitored"):
        report.monitor_report("r", cfg, lines, layers=["conv9"])
    bare = report.monitor_report("r", cfg, fake_image_run(tmp_path / "bare", False)[1])
    assert bare["monitor"] is None and "--analysis_every=1" in bare["note"]
    assert report.monitor_figures(bare, str(tmp_path)) == {}


def test_monitor_figures_with_theorem4(tmp_path):
    """A contrastive run's Theorem 4 keys: read per layer, and the residue share figure."""
    cfg, lines = fake_image_run(tmp_path / "run", theorem4=True)
    result = report.monitor_report(str(tmp_path / "run"), cfg, lines)
    series = result["monitor"]["series"]
    assert series["op_xi_residue_share"]["layer1_0_conv1"] == pytest.approx(
        [0.9, 0.8, 0.7, 0.6])
    assert series["op_xi_grad_cos"]["layer2_0_conv1"] == pytest.approx([-0.1, 0, 0.1, 0.2])
    paths = report.monitor_figures(result, str(tmp_path))
    assert set(paths) == {"op_alignment", "op_norm", "op_residue", "op_spectrum_estimates",
                          "op_xi_residue_share"}
    with open(paths["op_xi_residue_share"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # The SimCLR-vs-BYOL panels (benchmarks/operator_monitor.py --figure): one run with
    # Theorem 4's dashed cosines, one without.
    byol = report.monitor_report("r", cfg, fake_image_run(tmp_path / "byol")[1])
    path = plots.operator_monitor_panels({"simclr": result["monitor"], "byol": byol["monitor"]},
                                         str(tmp_path / "panels.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # a TensorFlow start in a subprocess: ~15-45 s on 2 shared cores
def test_tool_on_image_run_without_monitor(tmp_path):
    """One line says what is missing; the collapse figure and analysis.json are written."""
    fake_image_run(tmp_path / "run", monitor=False)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, TOOL, f"--model_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = [line for line in proc.stdout.splitlines() if "no covariance-operator" in line]
    assert len(notes) == 1 and "--analysis_every=1" in notes[0]
    out = tmp_path / "run" / "analysis"
    assert sorted(os.listdir(out)) == ["analysis.json", "collapse.png"]
