"""The collapse figure: embedding spread and effective rank vs epoch, one line per run.

For the BYOL/SimSiam BatchNorm, predictor and stop-gradient study (several runs, one per
variant) of any task, read from each run's ``metrics.jsonl`` only (``embed_std`` and
``effective_rank`` of :class:`dualssl_tf.monitors.collapse.EmbeddingSpread`, epoch 0 = at
initialisation). ``tools/analyze.py`` draws it for the run it analyses
(:func:`run_figure`); several runs in one figure have their own small tool,
``tools/collapse_figure.py``.
TensorFlow-free for local run directories (``gs://`` paths go through tf.io.gfile).
"""

import json
import os

KEYS = ("embed_std", "effective_rank")


def _read_lines(path):
    if "://" in path:
        from dualssl_tf import runfiles  # TensorFlow's file systems
        return runfiles.read_lines(path)
    with open(path) as f:
        return f.read().splitlines()


def read_curves(model_dir):
    """``{"epoch": [...], "embed_std": [...], "effective_rank": [...]}`` of a run (epochs
    that logged both keys). ValueError("model_dir: ...") when the run has no such epoch."""
    path = os.path.join(model_dir, "metrics.jsonl")
    try:
        lines = _read_lines(path)
    except OSError as e:
        raise ValueError(f"model_dir: cannot read {path} ({e.__class__.__name__})") from None
    rows = [json.loads(l) for l in lines if l.strip()]
    rows = [r for r in rows if all(k in r for k in KEYS)]
    if not rows:
        raise ValueError(f"model_dir: {path} has no epoch with {' and '.join(KEYS)} (a run "
                         "of a task with the collapse monitor: images, hltm)")
    curves = {"epoch": [r["epoch"] for r in rows]}
    curves.update({k: [float(r[k]) for r in rows] for k in KEYS})
    return curves


def collapse_figure(curves, path, title="Collapse: embedding spread and effective rank"):
    """Two panels (``embed_std``, ``effective_rank`` vs epoch), one line per entry of
    ``curves`` ({label: :func:`read_curves` dict}); writes ``path`` (PNG), returns it."""
    from dualssl_tf.analysis import plots  # matplotlib (Agg)
    plt = plots.plt
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0))
    for label, c in curves.items():
        for ax, key in zip(axes, KEYS):
            ax.plot(c["epoch"], c[key], marker="o", ms=3, label=label)
    axes[0].set_ylabel("embed_std")
    axes[0].set_title("per-dimension std of f/|f|, mean", fontsize=9)
    axes[1].set_ylabel("effective rank")
    axes[1].set_title("exp(entropy of f/|f|'s normalised singular values)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch (0 = initialisation)")
        ax.grid(alpha=0.3)
        plots._integer_x(ax)
    axes[1].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    return plots._save(fig, path)


def end_values(curves):
    """Printable table: each run's first and last embed_std and effective rank."""
    width = max([len(label) for label in curves] + [7])
    rows = [f"{'variant':<{width}}  epochs  embed_std (init -> end)  eff. rank (init -> end)"]
    for label, c in curves.items():
        rows.append(f"{label:<{width}}  {c['epoch'][-1]:>6}  {c['embed_std'][0]:8.4f} -> "
                    f"{c['embed_std'][-1]:8.4f}     {c['effective_rank'][0]:7.2f} -> "
                    f"{c['effective_rank'][-1]:7.2f}")
    return "\n".join(rows)


def run_figure(model_dir, out_dir, label):
    """``out_dir/collapse.png`` of one run (one line, ``label``), or None when the run
    logged no collapse monitor (e.g. the translation toy)."""
    try:
        curves = read_curves(model_dir)
    except ValueError:
        return None
    return collapse_figure({label: curves}, os.path.join(out_dir, "collapse.png"))
