"""benchmarks/results.py, the results harness: bad flags are one line and exit 2 with
nothing written; a tiny grid end to end (1 method, 1 epoch, 1 seed, tiny generated shapes)
tabulates exactly what tools/linear_eval.py wrote, and a second invocation runs nothing;
the statistics and the PCA of the pixel baseline by hand."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "benchmarks", "results.py")

# Shrinks the generated-shapes recipe to seconds (tests/tiny_runs.py TINY_IMAGES' sizes): a
# 1/16-width ResNet-18, 64 examples of 3 classes, 2 steps of 16 per epoch.
TINY = ("--extra_flags=--width_multiplier=0.0625,--proj_hidden_dim=16,--proj_dim=8,"
        "--batch_size=16,--generated_examples=64,--generated_classes=3,--steps_per_epoch=2,"
        "--steps_per_execution=1")


def _load():
    spec = importlib.util.spec_from_file_location("results_harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, HARNESS, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("args,text", [
    (["--methods=simclr,mocov9"], "--methods: unknown method mocov9; known: simclr, byol"),
    (["--datasets=imagenet"], "--datasets: unknown dataset imagenet; known: generated_images"),
    (["--seeds=0"], "--seeds: must be >= 1, got 0"),
    (["--reference=torch", "--torch_python=/nonexistent/python"],
     "--reference: torch does not import in --torch_python=/nonexistent/python; pip install"),
    (["--reference=jax"], "--reference: got 'jax'; allowed: torch"),
    (["--datasets=folder"], "--data_dir: --datasets=folder needs the image folder"),
    (["--holdout_fraction=0.2"], "--holdout_fraction: only --datasets=folder takes it"),
    (["--baselines=random,noise"], "--baselines: unknown baseline noise"),
    (["--epochs=-2"], "--epochs: must be >= 0"),
    (["--sedes=3"], "--sedes: unknown flag (did you mean --seeds?)"),
])
def test_bad_flags_exit_2_with_one_line_before_writing(tmp_path, args, text):
    work, out = tmp_path / "work", tmp_path / "docs" / "results.md"
    proc = _run([*args, f"--work_dir={work}", f"--out={out}"])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("results.py: error: " + text[:2]), lines
    assert text in lines[0], lines
    assert not work.exists() and not out.parent.exists()


def test_a_flag_train_py_refuses_is_its_one_line_and_exit_2(tmp_path):
    work = tmp_path / "work"
    proc = _run(["--methods=simclr", "--seeds=1", "--extra_flags=--generated_classes=9",
                 f"--work_dir={work}", f"--out={tmp_path / 'docs' / 'results.md'}"])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("results.py: error: random seed 1: "), lines
    assert lines[0].endswith("train.py: error: --generated_classes: must be in [2, 6], got 9")
    assert not work.exists() and not (tmp_path / "docs").exists()


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """One invocation of the harness on the tiny grid, then the same command again."""
    tmp = tmp_path_factory.mktemp("results")
    args = ["--datasets=generated_images", "--methods=simclr", "--seeds=1", "--epochs=1",
            "--baselines=pixels", "--pca_dim=8", TINY, f"--work_dir={tmp / 'work'}",
            f"--out={tmp / 'docs' / 'results.md'}"]
    first = _run(args)
    assert first.returncode == 0, first.stderr[-3000:]
    cells = sorted((tmp / "work").glob("*/*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    second = _run(args)
    return {"tmp": tmp, "first": first, "second": second, "cells": cells, "stamps": stamps}


def test_tiny_grid_tabulates_linear_eval_json(tiny_grid):
    tmp = tiny_grid["tmp"]
    out = tiny_grid["first"].stdout
    # The total progress line names the cell and the total.
    assert "[1/2] simclr seed 1 (generated_images) ..." in out
    assert "[2/2] pixels seed 1 (generated_images) ..." in out
    summary = json.loads((tmp / "docs" / "results.json").read_text())
    row = {r["method"]: r for r in summary["rows"]}
    assert list(row) == ["simclr", "pixels", "pca"]
    simclr = row["simclr"]
    (run_dir,) = [p for p in (tmp / "work").glob("*/simclr_e1_s1") if p.is_dir()]
    evaluated = json.loads((run_dir / "linear_eval.json").read_text())
    # One seed: the mean is that seed's number, exactly as linear_eval.json has it.
    assert simclr["linear"]["values"] == [evaluated["linear"]["top1"]]
    assert simclr["linear"]["mean"] == evaluated["linear"]["top1"]
    assert simclr["linear"]["sd"] is None
    for k in (20, 200):
        assert simclr[f"knn@{k}"]["mean"] == evaluated["knn"][f"top1@{k}"]
        assert simclr["knn_k_used"][str(k)] == [evaluated["knn"][f"k@{k}"]]
    assert simclr["epochs"] == 1 and simclr["seeds"] == [1]
    # The curve is the run's metrics.jsonl (the online probe is first measured after
    # epoch 1; epoch 0's line has no probe_test_acc).
    records = [json.loads(line) for line in
               (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert simclr["curves"] == [[[1, records[1]["probe_test_acc"]]]]
    # The baselines are probed on the split linear_eval.py used.
    pixels = json.loads(next((tmp / "work").glob("*/pixels_pca8_s1.json")).read_text())
    assert pixels["num_train"] == evaluated["linear"]["num_train"]
    assert pixels["num_test"] == evaluated["linear"]["num_test"]
    assert pixels["pixels_dim"] == 16 * 16 * 3 and pixels["pca_dim"] == 8
    assert row["pca"]["linear"]["mean"] == pixels["pca"]["linear"]
    # The markdown row shows the same numbers, and names the command that made it.
    md = (tmp / "docs" / "results.md").read_text()
    assert "Generated by `benchmarks/results.py`" in md and "--methods=simclr" in md
    line = next(l for l in md.splitlines() if "| SimCLR" in l)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:6] == [f"{evaluated['linear']['top1']:.3f}",
                          f"{evaluated['knn']['top1@20']:.3f}",
                          f"{evaluated['knn']['top1@200']:.3f}"]
    # 64 training images: k = 200 is clipped, and the page says so.
    assert evaluated["knn"]["k@200"] == evaluated["linear"]["num_train"] < 200
    assert f"k=200 used {evaluated['knn']['k@200']}" in md
    for name in ("results_top1.png", "results_curves.png"):
        assert (tmp / "docs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_invocation_runs_nothing(tiny_grid):
    second = tiny_grid["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.findall(r"^\[\d/2\] .*$", second.stdout, re.M) == [
        "[1/2] simclr seed 1 (generated_images): done before",
        "[2/2] pixels seed 1 (generated_images): done before"]
    assert {p: p.stat().st_mtime_ns for p in tiny_grid["cells"]} == tiny_grid["stamps"]
    assert len(tiny_grid["cells"]) == 2
    md = (tiny_grid["tmp"] / "docs" / "results.md").read_text()
    assert "the one that wrote this file ran 0 of 2 cells" in md
    assert "1-minute load average" in md  # recorded by each cell when it ran


def test_rows_mean_and_sample_sd_over_seeds():
    harness = _load()
    cells = [{"method": "byol", "dataset": "d", "seed": s, "epochs": 4, "train_s": 10.0 * s,
              "eval_s": 1.0, "linear": lin, "knn@20": k20, "knn@200": k200,
              "knn_k_used@20": 20, "knn_k_used@200": 200, "curve": [[0, 0.2], [1, lin]]}
             for s, lin, k20, k200 in ((2, 0.5, 0.25, 0.125), (1, 0.75, 0.5, 0.5),
                                       (3, 1.0, 0.75, 0.875))]
    (row,) = harness.rows(cells, ["d"], ["simclr", "byol"])
    assert row["seeds"] == [1, 2, 3] and row["method"] == "byol"
    assert row["linear"]["values"] == [0.75, 0.5, 1.0]
    # mean 0.75; sample variance ((0)^2 + (-.25)^2 + (.25)^2) / 2 = 0.0625, sd 0.25
    assert row["linear"]["mean"] == pytest.approx(0.75, abs=1e-15)
    assert row["linear"]["sd"] == pytest.approx(0.25, abs=1e-15)
    assert row["knn@200"]["mean"] == pytest.approx(0.5, abs=1e-15)
    assert row["knn@200"]["sd"] == pytest.approx(0.375, abs=1e-15)  # sqrt(.28125 / 2)
    assert row["wall_s"] == pytest.approx(63.0)
    assert harness.fmt(row["linear"]) == "0.750 ± 0.250"


def test_pca_projects_on_the_top_principal_axes():
    harness = _load()
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 6)) @ np.diag([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) + 7.0
    test = rng.normal(size=(10, 6))
    ptr, pte = harness.pca(train, test, 3)
    assert ptr.shape == (200, 3) and pte.shape == (10, 3)
    # The projections' covariance is diagonal, holding the train covariance's 3 largest
    # eigenvalues (float64: agreement to rounding).
    centred = train - train.mean(0)
    top = np.sort(np.linalg.eigvalsh(centred.T @ centred))[::-1][:3]
    np.testing.assert_allclose(ptr.T @ ptr, np.diag(top), atol=1e-9 * top[0])
    # The test split is centred with the train mean and projected on the same axes.
    full_tr, full_te = harness.pca(train, test, 6)
    np.testing.assert_allclose(np.linalg.norm(full_te, axis=1),
                               np.linalg.norm(test - train.mean(0), axis=1), rtol=1e-12)
    np.testing.assert_allclose(full_te[:, :3], pte, rtol=1e-12)


@pytest.mark.slow
def test_two_seeds_with_the_random_encoder(tmp_path):
    """Two seeds and every baseline: the sd is over the seeds' linear_eval.json numbers, and
    the random encoder is the first method's config exported untrained (--epochs=0: only
    the initial metrics line)."""
    proc = _run(["--methods=byol", "--seeds=2", "--epochs=1", "--pca_dim=8", TINY,
                 f"--work_dir={tmp_path / 'work'}", f"--out={tmp_path / 'results.md'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[6/6] pixels seed 2 (generated_images) ..." in proc.stdout
    rows = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert list(rows) == ["byol", "random", "pixels", "pca"]
    (folder,) = (tmp_path / "work").iterdir()
    for method, cell in (("byol", "byol_e1"), ("random", "random_e0")):
        values = [json.loads((folder / f"{cell}_s{s}" / "linear_eval.json").read_text())
                  ["linear"]["top1"] for s in (1, 2)]
        assert rows[method]["linear"]["values"] == values
        assert rows[method]["linear"]["sd"] == pytest.approx(np.std(values, ddof=1),
                                                             rel=1e-12)
    random_dir = folder / "random_e0_s1"
    card = json.loads((random_dir / "saved_model" / "model_card.json").read_text())
    # The first method's config (byol here), untrained.
    assert card["flags"]["epochs"] == 0 and card["flags"]["method"] == "byol"
    assert [json.loads(l)["epoch"] for l in
            (random_dir / "metrics.jsonl").read_text().splitlines()] == [0]
    assert rows["random"]["epochs"] == 0 and "curves" in rows["random"]
