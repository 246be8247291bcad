"""Trains every method on the same data and tabulates held-out linear / kNN top-1 against
baselines: python benchmarks/results.py --datasets=generated_images --seeds=3

    python benchmarks/results.py --datasets=generated_images --seeds=3       # CPU, every method
    python benchmarks/results.py --datasets=folder --data_dir=DIR --holdout_fraction=0.2 \\
        --methods=simclr,byol --epochs=100

Each cell (method x data set x seed) goes through the user's path, as subprocesses:
``tools/train.py --flagfile=<the method's config> --seed=S`` (which exports the encoder at
the end), then ``tools/linear_eval.py --method=linear,knn --knn_k=20,200`` on the export.
Seed S is the run's ``--seed``: on generated shapes it also draws the data set, so every
method of one seed sees the same images, and each seed other ones (the baselines too).

Baselines on the same split, per seed: a random encoder (the first method's config with
``--epochs=0``: the same architecture and initialisation, exported untrained, probed by
linear_eval.py like the others), and raw pixels and their PCA (``--pca_dim`` components,
fit on the train split) under the same linear probe and kNN
(``dualssl_tf.evaluation.linear.linear_probe``, ``knn.knn_probe``), on the labelled data
linear_eval.py reads for that seed's export (``evaluation.data.probe_datasets``).

Resumable: a cell whose result file ``<work_dir>/<data set>/<method>_e<epochs>_s<seed>.json``
exists is not run again (an interrupted training resumes from its checkpoint, as train.py
does). Writes ``--out`` (docs/results.md: the table, generated, with the command, seeds,
machine and wall time), a JSON beside it with every number, and two figures beside it
(``<out>_top1.png``: held-out top-1 per method with seed error bars; ``<out>_curves.png``:
the online probe's probe_test_acc against epoch per method, mean and band over seeds, from
each run's metrics.jsonl).

Bad input ends with one line on stderr naming the flag, and exit status 2.
"""

import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tools import cli  # noqa: E402

TOOL = "results.py"
CONFIGS = os.path.join(ROOT, "configs")

# Method name -> (train.py flags choosing it, its config stem). A new method joins the table
# with one line here (and its configs/<data set>_<stem>.cfg).
METHODS = {
    "simclr": (["--method=contrastive", "--loss=ntxent"], ""),
    "byol": (["--method=byol"], "byol"),
    "simsiam": (["--method=simsiam"], "simsiam"),
    "barlow": (["--method=barlow"], "barlow"),
    "vicreg": (["--method=vicreg"], "vicreg"),
    "dino": (["--method=dino"], "dino"),
}
RANDOM = "random"        # the untrained encoder baseline (cell name)
PIXELS = "pixels"        # raw pixels and their PCA (one cell per data set and seed)

# Data set -> (configs/<recipe>*.cfg recipe, flags after the config). ``folder`` trains the
# generated-shapes recipe (16 px, narrow ResNet-18) on --data_dir.
DATASETS = {
    "generated_images": ("generated_images", []),
    "folder": ("generated_images", ["--dataset=folder"]),
}
KNN_K = (20, 200)
REFERENCES = ("", "torch")
# Methods benchmarks/reference_torch.py trains; its cells are named <method>-torch.
TORCH_METHODS = ("simclr", "byol", "simsiam")
TORCH_SUFFIX = "-torch"

def define_flags():
    """The harness' flags (a flag of the same name defined earlier in the process is
    replaced, as tools/train.py does: tests load several tools into one interpreter)."""
    for name in ("datasets", "methods", "seeds", "epochs", "data_dir", "holdout_fraction",
                 "extra_flags", "baselines", "pca_dim", "work_dir", "out", "reference",
                 "verbose", "note", "torch_python", "torch_threads"):
        if name in flags.FLAGS:
            delattr(flags.FLAGS, name)
    flags.DEFINE_list("datasets", ["generated_images"],
                      "Data sets, comma-separated: " + ", ".join(DATASETS))
    flags.DEFINE_list("methods", list(METHODS), "Methods, comma-separated: " + ", ".join(METHODS))
    flags.DEFINE_integer("seeds", 3, "Seeds per cell: 1..N (train.py's --seed; on generated "
                         "shapes it also draws the data).")
    flags.DEFINE_integer("epochs", -1, "Training epochs of every method; -1 = each config's own.")
    flags.DEFINE_string("data_dir", "", "--datasets=folder: the image folder (class sub-folders).")
    flags.DEFINE_float("holdout_fraction", 0.0, "--datasets=folder without train/ and val/: the "
                       "held-out share of each class (train.py's --holdout_fraction).")
    flags.DEFINE_list("extra_flags", [], "Flags appended to every tools/train.py command, comma-"
                      "separated (e.g. --generated_examples=80,--batch_size=16 to shrink a run). "
                      "They name the cells: other extra flags are other cells.")
    flags.DEFINE_list("baselines", ["random", "pixels"], "Baselines per data set and seed: random "
                      "(untrained encoder), pixels (raw pixels and their PCA); empty = none.")
    flags.DEFINE_integer("pca_dim", 64, "PCA components of the pixel baseline (64 = the "
                         "representation width of the generated-shapes recipe).")
    flags.DEFINE_string("work_dir", "runs/results", "Run directories and per-cell results.")
    flags.DEFINE_string("out", "docs/results.md", "The generated table; its JSON and figures "
                        "are written beside it.")
    flags.DEFINE_string("reference", "", "torch: the PyTorch reference (benchmarks/"
                        "reference_torch.py) beside ours, on the same views and probes.")
    flags.DEFINE_string("torch_python", sys.executable, "--reference=torch: the Python that "
                        "runs reference_torch.py (one with torch: pip install -e '.[bench]').")
    # One thread by default: on a shared CPU torch's OpenMP threads wait on each other
    # (8 BYOL steps at load average 13 on 2 cores: 2.5 s with 1 thread, 96 s with 2).
    flags.DEFINE_integer("torch_threads", 1, "--reference=torch: torch's threads (0: "
                         "torch's default, all cores; 1 stays fast on a loaded CPU).")
    flags.DEFINE_bool("verbose", False, "Show the tools' own output.")
    flags.DEFINE_string("note", "", "A sentence written into the generated page (e.g. what "
                        "else ran on the machine).")


FLAGS = flags.FLAGS


def fail(message):
    cli.fail(TOOL, message)


def check_flags():
    """Every check that needs no TensorFlow and no training: one line and exit 2."""
    for name, known in (("datasets", DATASETS), ("methods", METHODS)):
        values = getattr(FLAGS, name)
        bad = [v for v in values if v not in known]
        if bad or not values:
            fail(f"--{name}: unknown {name[:-1]} {','.join(bad) or '(none)'}; known: "
                 f"{', '.join(known)}")
    bad = [b for b in FLAGS.baselines if b not in ("random", "pixels")]
    if bad:
        fail(f"--baselines: unknown baseline {','.join(bad)}; known: random, pixels")
    if FLAGS.seeds < 1:
        fail(f"--seeds: must be >= 1, got {FLAGS.seeds}")
    if FLAGS.epochs < -1:
        fail(f"--epochs: must be >= 0 (or -1: each config's own), got {FLAGS.epochs}")
    if FLAGS.pca_dim < 1:
        fail(f"--pca_dim: must be >= 1, got {FLAGS.pca_dim}")
    if "folder" in FLAGS.datasets and not FLAGS.data_dir:
        fail("--data_dir: --datasets=folder needs the image folder (class sub-folders)")
    if FLAGS.holdout_fraction and "folder" not in FLAGS.datasets:
        fail("--holdout_fraction: only --datasets=folder takes it (generated shapes have "
             "their own test split); drop it")
    if FLAGS.reference not in REFERENCES:
        fail(f"--reference: got {FLAGS.reference!r}; allowed: torch (or empty)")
    if FLAGS.reference == "torch":
        check_torch_python()
    if not FLAGS.out.endswith(".md"):
        fail(f"--out: expected a .md path, got {FLAGS.out!r}")
    bad = [f for f in FLAGS.extra_flags if not f.startswith("--")]
    if bad:
        fail(f"--extra_flags: expected --name=value entries, got {bad[0]!r}")


def check_torch_python():
    """--reference=torch: torch must import in --torch_python (one line and exit 2 if not)."""
    try:
        proc = subprocess.run([FLAGS.torch_python, "-c", "import numpy, torch"],
                              capture_output=True, text=True, timeout=300)
        ok = proc.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        fail(f"--reference: torch does not import in --torch_python={FLAGS.torch_python}; "
             "pip install -e '.[bench]' there, or pass --torch_python=a Python that has "
             "torch, or drop --reference")


# -- cells ----------------------------------------------------------------------------------

def config_path(dataset, method):
    recipe = DATASETS[dataset][0]
    stem = METHODS[method][1]
    return os.path.join(CONFIGS, f"{recipe}_{stem}.cfg" if stem else f"{recipe}.cfg")


def dataset_flags(dataset):
    extra = list(DATASETS[dataset][1])
    if dataset == "folder":
        extra.append(f"--data_dir={os.path.abspath(FLAGS.data_dir)}")
        if FLAGS.holdout_fraction:
            extra.append(f"--holdout_fraction={FLAGS.holdout_fraction}")
    return extra + list(FLAGS.extra_flags)


def dataset_key(dataset):
    """The work-dir folder of a data set: its name, and a digest of the flags that change
    its data or runs (another folder or other extra flags are other cells)."""
    extra = dataset_flags(dataset)
    if not extra:
        return dataset
    return f"{dataset}-{hashlib.sha1(' '.join(extra).encode()).hexdigest()[:8]}"


def cell_name(method, seed):
    epochs = 0 if method == RANDOM else FLAGS.epochs
    return f"{method}_e{'cfg' if epochs < 0 else epochs}_s{seed}"


def train_command(dataset, method, seed, model_dir):
    """tools/train.py's argv of a cell (the random encoder: the first method's config,
    untrained)."""
    base = FLAGS.methods[0] if method == RANDOM else method
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"),
           f"--flagfile={config_path(dataset, base)}", *METHODS[base][0],
           *dataset_flags(dataset), f"--seed={seed}", f"--model_dir={model_dir}"]
    epochs = 0 if method == RANDOM else FLAGS.epochs
    if epochs >= 0:
        cmd.append(f"--epochs={epochs}")
    return cmd


def eval_command(model_dir):
    return [sys.executable, os.path.join(ROOT, "tools", "linear_eval.py"),
            f"--saved_model={os.path.join(model_dir, 'saved_model')}", "--method=linear,knn",
            f"--knn_k={','.join(map(str, KNN_K))}", "--verbose=0"]


def show(cmd):
    return " ".join(shlex.quote(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a)
                    for a in cmd)


def run_tool(cmd, what):
    """Runs a tool; its failure ends the harness with one line and the tool's status."""
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, text=True,
                          stdout=None if FLAGS.verbose else subprocess.PIPE,
                          stderr=None if FLAGS.verbose else subprocess.PIPE)
    if proc.returncode:
        last = (proc.stderr or "").strip().splitlines()[-1:] or ["(see its output)"]
        cli.fail(TOOL, f"{what}: {show(cmd)} failed (exit {proc.returncode}): {last[0]}",
                 proc.returncode if proc.returncode == cli.EXIT_BAD_INPUT else 1)
    return time.time() - start


def read_curve(model_dir, key="probe_test_acc"):
    """[(epoch, value)] of one run's metrics.jsonl lines that have ``key``."""
    curve = []
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if isinstance(record.get(key), (int, float)):
                    curve.append((int(record["epoch"]), float(record[key])))
    return curve


def probe_numbers(linear, knn):
    """The table's numbers of one linear / kNN result (linear_eval.json's entries)."""
    out = {"linear": linear["top1"]}
    for k in KNN_K:
        out[f"knn@{k}"] = knn[f"top1@{k}"]
        out[f"knn_k_used@{k}"] = knn[f"k@{k}"]
    return out


def run_model_cell(dataset, method, seed, result_path):
    model_dir = os.path.join(os.path.dirname(result_path), cell_name(method, seed))
    train_cmd, eval_cmd = train_command(dataset, method, seed, model_dir), eval_command(model_dir)
    train_s = run_tool(train_cmd, f"{method} seed {seed}")
    eval_s = run_tool(eval_cmd, f"{method} seed {seed}")
    with open(os.path.join(model_dir, "linear_eval.json")) as f:
        evaluated = json.load(f)
    with open(os.path.join(model_dir, "saved_model", "model_card.json")) as f:
        epochs = int(json.load(f)["flags"]["epochs"])
    return {"method": method, "dataset": dataset, "seed": seed, "epochs": epochs,
            "model_dir": model_dir, "train_command": show(train_cmd),
            "eval_command": show(eval_cmd), "train_s": train_s, "eval_s": eval_s,
            **probe_numbers(evaluated["linear"], evaluated["knn"]),
            "curve": read_curve(model_dir), "load_avg": load_average()}


def pca(train_x, test_x, dim):
    """Projections [N, d], [M, d] on the top ``dim`` principal axes of the centred train
    features (d = min(dim, N, F)); the test split is centred with the train mean."""
    import numpy as np
    mean = train_x.mean(0)
    _, _, vt = np.linalg.svd(train_x - mean, full_matrices=False)
    axes = vt[:dim].T
    return (train_x - mean) @ axes, (test_x - mean) @ axes


def run_pixel_cell(dataset, seed, card_dir, pca_dim):
    """Raw pixels and their PCA on the labelled data of the seed's export (``card_dir``
    holds a SavedModel of this data set and seed), through the project's probes."""
    start = time.time()
    cli.import_tensorflow()
    import numpy as np
    from dualssl_tf.evaluation import data, knn, linear

    with open(os.path.join(card_dir, "saved_model", "model_card.json")) as f:
        card = json.load(f)
    train_ds, test_ds, num_classes = data.probe_datasets(card["dataset"], model_card=card)
    arrays = {}
    for split, ds in (("train", train_ds), ("test", test_ds)):
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
        x = np.concatenate(xs).reshape(sum(len(b) for b in xs), -1).astype(np.float64)
        arrays[split] = (x / 255.0 if np.concatenate(xs).dtype == np.uint8 else x,
                         np.concatenate(ys).astype(np.int64))
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
    c = num_classes or int(max(ytr.max(), yte.max())) + 1
    out = {"dataset": dataset, "seed": seed, "num_train": len(xtr), "num_test": len(xte),
           "pixels_dim": int(xtr.shape[1])}
    ptr, pte = pca(xtr, xte, pca_dim)
    out["pca_dim"] = int(ptr.shape[1])
    for name, (a, b) in (("pixels", (xtr, xte)), ("pca", (ptr, pte))):
        a, b = a.astype(np.float32), b.astype(np.float32)
        out[name] = probe_numbers(linear.linear_probe(a, ytr, b, yte, c),
                                  knn.knn_probe(a, ytr, b, yte, c, k=list(KNN_K)))
    out["wall_s"] = time.time() - start
    out["load_avg"] = load_average()
    return out


def cell_config(dataset, method, seed):
    """The typed TrainConfig of a cell's train.py command (its config file, then the flags
    after it; TensorFlow-free)."""
    from dualssl_tf import config
    cmd = train_command(dataset, method, seed, "unused")
    args = []
    for arg in cmd[2:]:
        if arg.startswith("--flagfile="):
            with open(arg.split("=", 1)[1]) as f:
                args += [line.strip() for line in f if line.strip().startswith("--")]
        else:
            args.append(arg)
    values = {}
    for arg in args:
        name, eq, value = arg[2:].partition("=")
        if not eq:  # --name / --noname booleans
            name, value = (name[2:], "false") if name.startswith("no") and \
                name not in config.TrainConfig._DEFAULTS else (name, "true")
        values[name] = value
    return config.from_flag_strings(values, unknown="error", source=show(cmd))


# The flags that choose the training views and probe images (with --generated_*): a dump
# made with the same values is reused by every method of the seed.
DATA_FLAGS = ("dataset", "data_dir", "image_size", "batch_size", "seed", "shuffle_buffer",
              "holdout_fraction", "holdout_seed", "steps_per_epoch", "color_jitter_strength",
              "blur", "augment_preset", "crop_area", "flip_prob", "blur_prob",
              "solarize_prob", "augment_on")


def reference_data(seed, cfg, folder):
    """``(folder/torch_data_s<seed>, steps per epoch)``: the training views our run of
    ``cfg`` sees, the first ``--epochs`` x steps-per-epoch batches of the task's input
    pipeline (the batches train.py fits on: ``views.npy`` [steps, 2, B, S, S, 3] float16),
    and the probe's un-augmented train / test images and labels (``probe.npz``, float32 /
    int64, the data linear_eval.py probes) -- written once per data set and seed (again
    only when a longer run needs more steps)."""
    import numpy as np
    out = os.path.join(folder, f"torch_data_s{seed}")
    meta_path = os.path.join(out, "data.json")
    key = {k: v for k, v in cfg.flags().items() if k in DATA_FLAGS or k.startswith("generated_")}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if (meta["flags"] == key and "steps_per_epoch" in meta and
                meta["steps"] >= cfg.optim.epochs * meta["steps_per_epoch"]):
            return out, meta["steps_per_epoch"]
    cli.import_tensorflow()
    from dualssl_tf import tasks

    os.makedirs(out, exist_ok=True)
    task = tasks.build(cfg.replace(model_dir=""))   # no model_dir: nothing written
    steps, size = cfg.optim.epochs * task.steps_per_epoch, task.input_shape[0]
    ds = task.make_data(cfg.optim.batch_size).take(steps)
    if "view1" not in ds.element_spec:
        fail("--reference: the torch reference needs host views; add "
             "--extra_flags=--augment_on=host")
    views = np.lib.format.open_memmap(
        os.path.join(out, "views.npy.tmp"), mode="w+", dtype=np.float16,
        shape=(steps, 2, cfg.optim.batch_size, size, size, 3))
    for i, batch in enumerate(ds):
        views[i, 0], views[i, 1] = batch["view1"].numpy(), batch["view2"].numpy()
    views.flush()
    del views
    os.replace(os.path.join(out, "views.npy.tmp"), os.path.join(out, "views.npy"))
    train_ds, test_ds, _ = tasks.eval_data(cfg, 256)
    arrays = {}
    for split, d in (("train", train_ds), ("test", test_ds)):
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in d])
        arrays[f"{split}_x"] = np.concatenate(xs).astype(np.float32)
        arrays[f"{split}_y"] = np.concatenate(ys).astype(np.int64)
    np.savez(os.path.join(out, "probe.npz"), **arrays)
    write_json(meta_path, {"flags": key, "steps": steps,
                           "steps_per_epoch": task.steps_per_epoch})
    return out, task.steps_per_epoch


def run_reference_cell(dataset, name, seed, path):
    """A ``<method>-torch`` cell: reference_torch.py trains the method's recipe on our
    views (through --torch_python), then our linear / kNN probes score its features of
    the probe images, as linear_eval.py scores ours."""
    import numpy as np
    method = name[:-len(TORCH_SUFFIX)]
    cfg = cell_config(dataset, method, seed)
    start = time.time()
    cli.import_tensorflow()
    from dualssl_tf.evaluation import knn, linear
    data_dir, steps_per_epoch = reference_data(seed, cfg, os.path.dirname(path))
    steps = cfg.optim.epochs * steps_per_epoch
    data_s = time.time() - start
    cell_dir = os.path.join(os.path.dirname(path), cell_name(name, seed))
    os.makedirs(cell_dir, exist_ok=True)
    recipe = os.path.join(cell_dir, "recipe.json")
    write_json(recipe, {"flags": cfg.flags(), "steps_per_epoch": steps_per_epoch,
                        "total_steps": steps})
    cmd = [FLAGS.torch_python, os.path.join(ROOT, "benchmarks", "reference_torch.py"),
           f"--method={method}", f"--data={data_dir}", f"--recipe={recipe}",
           f"--out={cell_dir}", f"--threads={FLAGS.torch_threads}"]
    train_s = run_tool(cmd, f"{name} seed {seed}")
    start = time.time()
    feats = np.load(os.path.join(cell_dir, "features.npz"))
    probe = np.load(os.path.join(data_dir, "probe.npz"))
    xtr, xte = feats["train"], feats["test"]
    ytr, yte = probe["train_y"], probe["test_y"]
    c = (cfg.generated.classes if dataset == "generated_images"
         else int(max(ytr.max(), yte.max())) + 1)
    numbers = probe_numbers(linear.linear_probe(xtr, ytr, xte, yte, c),
                            knn.knn_probe(xtr, ytr, xte, yte, c, k=list(KNN_K)))
    with open(os.path.join(cell_dir, "reference.json")) as f:
        log = json.load(f)
    return {"method": name, "dataset": dataset, "seed": seed, "epochs": cfg.optim.epochs,
            "model_dir": cell_dir, "train_command": show(cmd), "data_s": data_s,
            "train_s": train_s, "eval_s": time.time() - start, **numbers,
            "reference": log, "load_avg": load_average()}


def load_average():
    """The 1-minute load average at a cell's end (how busy the shared CPU was), or None."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def write_json(path, obj):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def plan():
    """[(dataset, cell, seed, result path)] in run order: seed by seed (a partial grid has
    every method of its first seeds), the baselines first."""
    cells = []
    for dataset in FLAGS.datasets:
        folder = os.path.join(FLAGS.work_dir, dataset_key(dataset))
        for seed in range(1, FLAGS.seeds + 1):
            names = ([RANDOM] if "random" in FLAGS.baselines else []) + table_methods()
            names += [PIXELS] if "pixels" in FLAGS.baselines else []
            for name in names:
                file = (f"pixels_pca{FLAGS.pca_dim}_s{seed}" if name == PIXELS
                        else cell_name(name, seed))
                cells.append((dataset, name, seed, os.path.join(folder, file + ".json")))
    return cells


def table_methods():
    """FLAGS.methods, each followed by its ``-torch`` reference with --reference=torch."""
    return [n for m in FLAGS.methods for n in [m] + (
        [m + TORCH_SUFFIX] if FLAGS.reference == "torch" and m in TORCH_METHODS else [])]


def run_cells(cells):
    """Runs the cells without a result file, printing ``[i/n] method seed s ...``; returns
    every cell's result and how many were run now."""
    results, ran = [], 0
    for i, (dataset, name, seed, path) in enumerate(cells, 1):
        label = f"[{i}/{len(cells)}] {name} seed {seed} ({dataset})"
        if os.path.exists(path):
            with open(path) as f:
                results.append(json.load(f))
            print(f"{label}: done before", flush=True)
            continue
        print(f"{label} ...", flush=True)
        if name == PIXELS:
            model_dirs = [c for c in cells if c[0] == dataset and c[2] == seed and c[1] != PIXELS]
            if not model_dirs:
                fail("--baselines: pixels needs a trained or random cell of the same seed")
            d, m, s, p = model_dirs[0]
            result = run_pixel_cell(dataset, seed,
                                    os.path.join(os.path.dirname(p), cell_name(m, s)),
                                    FLAGS.pca_dim)
            line = (f"linear {result['pixels']['linear']:.3f} / "
                    f"PCA-{result['pca_dim']} {result['pca']['linear']:.3f}")
            wall = result["wall_s"]
        else:
            result = (run_reference_cell(dataset, name, seed, path)
                      if name.endswith(TORCH_SUFFIX) else
                      run_model_cell(dataset, name, seed, path))
            line = (f"linear {result['linear']:.3f}, kNN@20 {result['knn@20']:.3f}, "
                    f"kNN@200 {result['knn@200']:.3f}")
            wall = result["train_s"] + result["eval_s"]
        write_json(path, result)
        results.append(result)
        ran += 1
        print(f"{label}: {line} ({wall:.0f} s)", flush=True)
    return results, ran


# -- table, JSON, figures -------------------------------------------------------------------

def mean_sd(values):
    import numpy as np
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None


def rows(results, datasets, methods):
    """One row per (data set, method) and baseline, in the order of ``datasets``, then
    ``methods``, the random encoder, pixels, PCA: the mean, sd (over seeds, n - 1; None for
    one seed) and per-seed values of each metric."""
    metrics = ["linear"] + [f"knn@{k}" for k in KNN_K]
    order = list(methods) + [RANDOM, "pixels", "pca"]
    grouped = {}
    for r in results:
        if "pixels" in r and "method" not in r:
            for name in ("pixels", "pca"):
                grouped.setdefault((r["dataset"], name), []).append(
                    {**r[name], "seed": r["seed"], "wall_s": r["wall_s"] / 2,
                     "pca_dim": r["pca_dim"]})
        else:
            grouped.setdefault((r["dataset"], r["method"]), []).append(
                {**r, "wall_s": r["train_s"] + r["eval_s"]})
    out = []
    for dataset in datasets:
        for name in order:
            cells = sorted(grouped.get((dataset, name), []), key=lambda c: c["seed"])
            if not cells:
                continue
            row = {"dataset": dataset, "method": name, "seeds": [c["seed"] for c in cells],
                   "epochs": cells[0].get("epochs"), "wall_s": sum(c["wall_s"] for c in cells)}
            if name == "pca":
                row["pca_dim"] = cells[0]["pca_dim"]
            for m in metrics:
                row[m] = {"mean": None, "sd": None, "values": [c[m] for c in cells]}
                row[m]["mean"], row[m]["sd"] = mean_sd(row[m]["values"])
            row["knn_k_used"] = {str(k): sorted({c[f"knn_k_used@{k}"] for c in cells})
                                 for k in KNN_K}
            if "curve" in cells[0]:
                row["curves"] = [c["curve"] for c in cells]
                row["train_s"] = [c["train_s"] for c in cells]
            out.append(row)
    return out


LABELS = {"simclr": "SimCLR (NT-Xent)", "byol": "BYOL", "simsiam": "SimSiam", "dino": "DINO",
          "barlow": "Barlow Twins", "vicreg": "VICReg",
          RANDOM: "random encoder (untrained)", "pixels": "raw pixels"}


def label(row):
    if row["method"].endswith(TORCH_SUFFIX):
        base = row["method"][:-len(TORCH_SUFFIX)]
        return f"{LABELS.get(base, base)}, PyTorch reference"
    if row["method"] == "pca":
        return f"PCA-{row['pca_dim']} of pixels"
    return LABELS.get(row["method"], row["method"])


def fmt(stat):
    return f"{stat['mean']:.3f}" + (f" ± {stat['sd']:.3f}" if stat["sd"] is not None else "")


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        from importlib import metadata
        tf_version = metadata.version("tensorflow")
    except Exception:  # noqa: BLE001 (any packaging trouble: just not shown)
        tf_version = "?"
    return (f"{cpu}, {os.cpu_count()} cores ({platform.system()} {platform.release()}), "
            f"Python {platform.python_version()}, TensorFlow {tf_version}")


def write_outputs(table, command, wall_now, ran, table_cells, loads=()):
    out = FLAGS.out
    stem = os.path.splitext(out)[0]
    base = os.path.basename(stem)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    cells_s = sum(r["wall_s"] for r in table)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = {"command": command, "seeds": list(range(1, FLAGS.seeds + 1)),
               "machine": machine(), "generated": now, "knn_k": list(KNN_K),
               "cells_wall_s": cells_s, "rows": table}
    write_json(stem + ".json", summary)
    figures = plot(table, stem, multi=len(FLAGS.datasets) > 1)
    lines = [
        "# Results: held-out linear and kNN top-1 of every method, against baselines",
        "",
        f"*Generated by `benchmarks/results.py` on {now}; do not edit by hand.* Command:",
        "", "```", command, "```", "",
        f"- Seeds: {', '.join(map(str, summary['seeds']))} (train.py's `--seed`; on "
        "generated shapes it also draws the data set, so each seed is other data and the "
        "baselines are measured per seed too).",
        f"- Machine: {summary['machine']}" + (
            f"; 1-minute load average {min(loads):.1f}-{max(loads):.1f} at the cells' ends "
            "(other jobs on the CPU make wall times longer)." if loads else "."),
        f"- Wall time: {cells_s / 60:.1f} min, the sum over the cells (training + probes) "
        f"of the invocations that ran them; the one that wrote this file ran {ran} of "
        f"{len(table_cells)} cells in {wall_now / 60:.1f} min.",
        "- Probes: `tools/linear_eval.py --method=linear,knn --knn_k=20,200` on each run's "
        "export (linear: softmax regression to its optimum on standardised frozen "
        "features, L2 chosen on held-out train data; kNN: cosine, temperature 0.07, k "
        "clipped to the train split). Numbers are test-split top-1, mean ± sd over seeds.",
        "- Baselines on the same split: the random encoder is the first method's config "
        "exported at `--epochs=0`; raw pixels (scaled to [0, 1]) and their PCA (fit on the "
        "train split) go through the same `linear_probe` / `knn_probe` (one cell per "
        "seed: each of the two rows shows half its time).",
        *([f"- Note: {FLAGS.note}"] if FLAGS.note else []),
        "",
        "| data set | method | epochs | linear top-1 | kNN top-1 (k=20) | kNN top-1 (k=200) "
        "| seeds | wall time (all seeds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        epochs = "" if row["epochs"] is None else str(row["epochs"])
        lines.append(f"| {row['dataset']} | {label(row)} | {epochs} | {fmt(row['linear'])} | "
                     f"{fmt(row['knn@20'])} | {fmt(row['knn@200'])} | {len(row['seeds'])} | "
                     f"{row['wall_s'] / 60:.1f} min |")
    clipped = sorted({f"k={k} used {used}" for row in table
                      for k, useds in row["knn_k_used"].items() for used in useds
                      if used != int(k)})
    if clipped:
        lines += ["", f"kNN's k was clipped to the train split: {', '.join(clipped)}."]
    lines += ["", f"![held-out top-1 per method]({base}_top1.png)", "",
              f"![probe_test_acc against epoch]({base}_curves.png)", "",
              "The curve is the online linear probe's test accuracy (`probe_test_acc` in "
              "each run's metrics.jsonl, a probe trained beside the encoder), mean and "
              "min-max band over seeds; the table's numbers are the probes of the final "
              "export.", ""]
    with open(out, "w") as f:
        f.write("\n".join(lines))
    return [out, stem + ".json", *figures]


def plot(table, stem, multi=False):
    """The two figures beside the table; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(table) + 2), 4))
    x = np.arange(len(table))
    metrics = [("linear", "linear"), ("knn@20", "kNN k=20"), ("knn@200", "kNN k=200")]
    width = 0.8 / len(metrics)
    for i, (key, name) in enumerate(metrics):
        means = [r[key]["mean"] for r in table]
        sds = [r[key]["sd"] or 0.0 for r in table]
        ax.bar(x + (i - 1) * width, means, width, yerr=sds, capsize=3, label=name)
    ax.set_xticks(x, [label(r) + (f"\n{r['dataset']}" if multi else "") for r in table],
                  rotation=20, ha="right", fontsize=8)
    paths.append(_save(fig, ax, "held-out top-1", "Held-out top-1 (mean ± sd over seeds)",
                       stem + "_top1.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in table:
        curves = row.get("curves")
        if not curves or row["method"] == RANDOM:
            continue
        epochs = sorted(set.intersection(*[{e for e, _ in c} for c in curves]))
        values = np.array([[dict(c)[e] for e in epochs] for c in curves])
        line, = ax.plot(epochs, values.mean(0), marker="o", ms=3,
                        label=label(row) + (f" ({row['dataset']})" if multi else ""))
        ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(),
                        alpha=0.2)
    ax.set_xlabel("epoch")
    paths.append(_save(fig, ax, "probe_test_acc (online probe)",
                       "Online probe during training (mean, min-max over seeds)",
                       stem + "_curves.png"))
    return paths



def _save(fig, ax, ylabel, title, path):
    """The figures' common finish: accuracy axis 0-1, legend, title; writes ``path``."""
    import matplotlib.pyplot as plt
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    check_flags()
    start = time.time()
    command = "python benchmarks/results.py " + " ".join(shlex.quote(a) for a in COMMAND)
    try:
        cells = plan()
        results, ran = run_cells(cells)
    except KeyboardInterrupt:  # the tool in flight got the Ctrl-C too and stopped safely
        cli.interrupted(TOOL, "interrupted; finished cells are kept -- run the same "
                        "command to go on", 130)
    written = write_outputs(rows(results, FLAGS.datasets, table_methods()), command.strip(),
                            time.time() - start, ran, cells,
                            [r["load_avg"] for r in results if r.get("load_avg") is not None])
    print("Written: " + ", ".join(written))


COMMAND = []

if __name__ == "__main__":
    define_flags()
    COMMAND[:] = sys.argv[1:]
    cli.run(main, TOOL)
