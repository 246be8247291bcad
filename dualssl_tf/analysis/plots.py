"""PNG figures of the analysis (matplotlib, Agg backend: no display needed).

Each function takes plain numbers (from metrics.jsonl / analysis.json), draws one figure with
a title, labelled axes and a legend, writes it to ``path`` and returns ``path``.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _integer_x(ax):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path, rect=None):
    fig.tight_layout(**({} if rect is None else {"rect": rect}))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def emergence_curves(epochs, series, path, title="Emergence of latent selectivity",
                     ylabel="mean best |corr(unit, latent)|", label_fmt="depth {}"):
    """Per-depth curves vs epoch. series: dict key -> [T] values aligned with epochs [T]."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    keys = list(series)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(keys), 1)))
    for color, key in zip(colors, keys):
        ax.plot(epochs, series[key], marker="o", ms=3, color=color, label=label_fmt.format(key))
    ax.set_xlabel("epoch (0 = initialisation)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _integer_x(ax)
    return _save(fig, path)


def emergence_band(epochs, per_seed, path, title="Emergence of latent selectivity",
                   ylabel="mean best |corr(unit, latent)|", label_fmt="depth {}"):
    """Per-depth mean over seeds vs epoch with a mean +- sd band.

    per_seed: dict key -> [T, S] values (S seeds) aligned with epochs [T].
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    keys = list(per_seed)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(keys), 1)))
    for color, key in zip(colors, keys):
        v = np.asarray(per_seed[key], float)
        mean, sd = v.mean(axis=1), v.std(axis=1, ddof=1) if v.shape[1] > 1 else 0 * v[:, 0]
        ax.plot(epochs, mean, marker="o", ms=3, color=color,
                label=label_fmt.format(key) + f" ({v.shape[1]} seeds)")
        ax.fill_between(epochs, mean - sd, mean + sd, color=color, alpha=0.2, lw=0)
    ax.set_xlabel("epoch (0 = initialisation)")
    ax.set_ylabel(ylabel + " (mean +- sd over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _integer_x(ax)
    return _save(fig, path)


def lucky_node_scatter(init_by_depth, final_by_depth, path, stats=None,
                       title="Lucky nodes: selectivity at init vs after training"):
    """Scatter of every unit's |corr| at init (x) vs after training (y), one colour per depth.

    init_by_depth / final_by_depth: dict depth -> [groups, hid]. The best unit at init of
    each group is drawn as a larger edged marker. stats: optional dict depth -> dict with
    ``spearman`` shown in the legend.
    """
    fig, ax = plt.subplots(figsize=(6.0, 5.4))
    depths = sorted(init_by_depth)
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(depths)))
    for color, d in zip(colors, depths):
        a, b = np.abs(np.asarray(init_by_depth[d])), np.abs(np.asarray(final_by_depth[d]))
        label = f"depth {d}"
        if stats and d in stats:
            label += f" (Spearman {stats[d]['spearman']:+.2f})"
        ax.scatter(a.ravel(), b.ravel(), s=10, alpha=0.5, color=color, label=label)
        best = a.argmax(axis=1)
        rows = np.arange(a.shape[0])
        ax.scatter(a[rows, best], b[rows, best], s=50, facecolors="none", edgecolors=color,
                   linewidths=1.2)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="no change")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("|corr(unit, latent)| at initialisation")
    ax.set_ylabel("|corr(unit, latent)| after training")
    ax.set_title(title + "\n(circles: each group's best unit at init)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def selectivity_scatter(init, final, path, title="Filter selectivity: init vs trained"):
    """Per-filter selectivity in [-1, 1] at init (x) vs after training (y)."""
    fig, ax = plt.subplots(figsize=(5.4, 5.0))
    init, final = np.asarray(init), np.asarray(final)
    ax.axhline(0, color="grey", lw=0.6)
    ax.axvline(0, color="grey", lw=0.6)
    ax.scatter(init, final, s=40, color="tab:blue", label="filter (label: its index)")
    # Filters closer than a label's size share one label ("2,5"): no overlapping text.
    for members in _clusters(np.stack([init, final], axis=1), radius=0.12):
        a, b = init[members].mean(), final[members].mean()
        right = a < 0.55   # labels near the right edge go to the point's left
        ax.annotate(",".join(str(j) for j in members), (a, b), textcoords="offset points",
                    xytext=(5 if right else -5, 4), ha="left" if right else "right",
                    fontsize=8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel('selectivity at init  (+1: "11" only, -1: "101" only)')
    ax.set_ylabel("selectivity after training")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _layer_and_stage(label):
    """("depth_1", "init") from "depth_1 init"; a label without a stage is "trained"."""
    for stage in ("init", "trained"):
        if label.endswith(" " + stage):
            return label[:-len(stage) - 1], stage
    return label, "trained"


def _clusters(points, radius):
    """Index lists of points grouped greedily (single linkage within ``radius``, in data
    units), each sorted, in order of their first member."""
    points = np.asarray(points, np.float64)
    label = list(range(len(points)))

    def root(i):
        while label[i] != i:
            i = label[i]
        return i
    for i in range(len(points)):
        for j in range(i):
            if np.linalg.norm(points[i] - points[j]) < radius:
                label[root(i)] = root(j)
    groups = {}
    for i in range(len(points)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


def op_spectra(spectra, path, title="Covariance operator spectrum", top_k=20):
    """Eigenvalues of OP (descending, log scale). spectra: dict label -> 1-D array, labels
    ``"<layer> init"`` / ``"<layer> trained"``: one colour per layer, init dashed and
    trained solid; the legend (layers, then the two line styles) sits right of the axes."""
    from matplotlib.lines import Line2D
    layers = []
    for label in spectra:
        layer, _ = _layer_and_stage(label)
        if layer not in layers:
            layers.append(layer)
    colors = dict(zip(layers, plt.cm.tab10(np.arange(len(layers)) % 10)))
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    for label, values in spectra.items():
        layer, stage = _layer_and_stage(label)
        values = np.maximum(np.asarray(values, np.float64)[:top_k], 1e-300)
        ax.semilogy(np.arange(1, len(values) + 1), values,
                    "--" if stage == "init" else "-", marker=".", color=colors[layer],
                    alpha=0.8 if stage == "init" else 1.0)
    _integer_x(ax)
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue of OP_l")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=colors[l], marker=".", label=l) for l in layers]
    handles += [Line2D([], [], color="k", ls="--", label="init"),
                Line2D([], [], color="k", ls="-", label="trained")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
              borderaxespad=0.0)
    return _save(fig, path)


def alignment_curves(epochs, series, path, ylabel="|cos(vec W_l, top eigenvector of OP_l)|",
                     title="Alignment of weights with OP's top eigenvector"):
    """Alignment vs epoch per layer. series: dict layer -> [T]."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(series), 1)))
    for color, (label, values) in zip(colors, series.items()):
        ax.plot(epochs, values, marker="o", ms=3, color=color, label=label)
    ax.set_xlabel("epoch (0 = initialisation)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _integer_x(ax)
    return _save(fig, path)


def alignment_bars(labels, init, final, path,
                   title="Alignment of W_l with OP_l's top eigenvector",
                   ylabel="|cos(vec W_l, top eigenvector)|", na_note=None):
    """Grouped bars: alignment at init vs after training, per layer/filter. An entry that
    is None in both is drawn as "n/a"; ``na_note`` (a sentence saying why) is then printed
    as a footnote under the axes."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(labels) + 2), 4.2))
    x = np.arange(len(labels))
    init = np.array([np.nan if v is None else v for v in init], np.float64)
    final = np.array([np.nan if v is None else v for v in final], np.float64)
    ax.bar(x - 0.2, init, 0.4, label="init", color="tab:gray")
    ax.bar(x + 0.2, final, 0.4, label="trained", color="tab:orange")
    missing = x[np.isnan(init) & np.isnan(final)]
    for xi in missing:
        ax.text(xi, 0.02, "n/a", ha="center", fontsize=8, color="grey")
    if len(missing) and na_note:
        fig.text(0.01, 0.01, f"n/a: {na_note}", fontsize=7, color="dimgrey", ha="left",
                 va="bottom", wrap=True)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    # Room under the axes for the footnote.
    return _save(fig, path, rect=(0, 0.08, 1, 1) if len(missing) and na_note else None)


def init_selectivity_by_hid(result, path, title="Lucky nodes at init vs group width (hid)"):
    """Mean best |corr| at init per depth (x) for each hid. result: init_selectivity()."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    hids = sorted(result)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(hids)))
    for color, hid in zip(colors, hids):
        by_depth = result[hid]["by_depth"]
        depths = sorted(by_depth)
        ax.plot(depths, [by_depth[d]["best_mean"] for d in depths], marker="o", color=color,
                label=f"hid={hid} best unit")
        ax.plot(depths, [by_depth[d]["median"] for d in depths], ":", color=color,
                label=f"hid={hid} median unit")
    _integer_x(ax)
    ax.set_xlabel("latent depth (1 = lowest, L = root)")
    ax.set_ylabel("|corr(unit, latent)| at initialisation")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7, ncol=2)
    return _save(fig, path)


def layer_curves(epochs, series, path, title, ylabel, ylim=None, log=False, dashed=None,
                 dashed_label=""):
    """One curve per layer vs epoch. series: dict layer -> [T] aligned with epochs [T].
    dashed: optional second dict of the same layers, drawn dashed in each layer's colour and
    labelled ``<layer> <dashed_label>`` (e.g. Theorem 4's cosine beside Theorem 3's)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(series), 1)))
    for color, (label, values) in zip(colors, series.items()):
        ax.plot(epochs, values, marker="o", ms=3, color=color, label=label)
        if dashed and label in dashed:
            ax.plot(epochs, dashed[label], ls="--", marker="x", ms=3, color=color,
                    label=f"{label} {dashed_label}".strip())
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("epoch (0 = initialisation)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    _integer_x(ax)
    return _save(fig, path)


def operator_monitor_panels(panels, path):
    """Runs side by side (columns) with two rows: the loss gradient's cosine with
    OP_l vec(W_l) (dashed: with Theorem 4's OP_xi vec(W_l), where logged) and
    ||OP_l vec(W_l)||, one curve per layer. panels: dict run name ->
    ``{"epochs": [...], "series": {key: {layer: [...]}}}`` (report.image_monitor_curves)."""
    rows = (("op_grad_cos", "cos(-grad_W L, OP_l vec W_l)", False),
            ("op_w_norm", "||OP_l vec W_l||", True))
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4.6 * len(panels), 6.4),
                             squeeze=False, sharex=True)
    for col, (name, curves) in enumerate(panels.items()):
        for row, (key, ylabel, log) in enumerate(rows):
            ax = axes[row, col]
            series = curves["series"].get(key, {})
            colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(series), 1)))
            dashed = curves["series"].get("op_xi_grad_cos", {}) if row == 0 else {}
            for color, (label, values) in zip(colors, series.items()):
                ax.plot(curves["epochs"], values, marker="o", ms=3, color=color, label=label)
                if label in dashed:
                    ax.plot(curves["epochs"], dashed[label], ls="--", marker="x", ms=3,
                            color=color, label=f"{label} (OP_xi)")
            if log:
                ax.set_yscale("log")
            else:
                ax.set_ylim(-1.02, 1.02)
                ax.axhline(0, color="grey", lw=0.6)
            ax.grid(alpha=0.3, which="both")
            if row == 0:
                ax.set_title(name, fontsize=10)
            if col == 0:
                ax.set_ylabel(ylabel)
            if row == len(rows) - 1:
                ax.set_xlabel("epoch (0 = initialisation)")
                _integer_x(ax)
        axes[0, col].legend(loc="best", fontsize=7)
    return _save(fig, path)
