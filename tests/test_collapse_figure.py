"""tools/collapse_figure.py: the collapse figure from metrics.jsonl of several runs."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "collapse_figure.py")


def _run_dir(path, std, rank):
    path.mkdir()
    lines = [{"epoch": e, "loss": 1.0, "embed_std": s, "effective_rank": r}
             for e, (s, r) in enumerate(zip(std, rank))]
    (path / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    return str(path)


def test_figure_and_end_values(tmp_path):
    a = _run_dir(tmp_path / "a", [0.08, 0.09, 0.1], [20.0, 25.0, 30.0])
    b = _run_dir(tmp_path / "b", [0.08, 0.01, 0.001], [20.0, 3.0, 1.1])
    out = tmp_path / "collapse.png"
    proc = subprocess.run([sys.executable, TOOL, f"--model_dirs={a},{b}",
                           "--labels=standard,collapsed", f"--out={out}"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 10000
    rows = proc.stdout.splitlines()
    assert rows[1].split()[:2] == ["standard", "2"] and "0.0010" in rows[2]
    assert "tensorflow" not in proc.stderr.lower()


def test_bad_input_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text('{"epoch": 0, "loss": 1}\n')
    for args, culprit in ((["--labels=x"], "--model_dirs"),
                          ([f"--model_dirs={empty}"], "--model_dirs: ")):
        proc = subprocess.run([sys.executable, TOOL, *args, f"--out={tmp_path}/x.png"],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=ROOT))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and culprit in lines[0], proc.stderr


def test_analyze_draws_one_runs_collapse_figure(tmp_path):
    # What tools/analyze.py adds to a run's figures: its own collapse curves, or nothing.
    from dualssl_tf.analysis import collapse
    run = _run_dir(tmp_path / "byol", [0.03, 0.06, 0.07], [1.4, 1.6, 1.6])
    path = collapse.run_figure(run, str(tmp_path), "--method=byol")
    assert path == str(tmp_path / "collapse.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    toy = tmp_path / "toy"
    toy.mkdir()
    (toy / "metrics.jsonl").write_text('{"epoch": 0, "loss": 1}\n')
    assert collapse.run_figure(str(toy), str(tmp_path / "x"), "toy") is None
