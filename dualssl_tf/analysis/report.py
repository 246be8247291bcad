"""Whole-run analysis behind tools/analyze.py: numbers (analysis.json) and figures (PNG).

:func:`analyze_run` computes, for chosen layers of a finished run, the covariance operator at
initialisation and after training (norm, spectrum, alignment of the weights with its top
eigenvector), the emergence curves from metrics.jsonl, and the dataset's selectivity study
(HLTM lucky nodes; translation-toy filters). :func:`make_figures` draws them.
"""

import os

import numpy as np

from dualssl_tf import tasks
from dualssl_tf.analysis import connections, plots, runs
from dualssl_tf.analysis.covariance import CovarianceOperator, averaged_connections
from dualssl_tf.models.grouped_dense import GroupedDense


def default_layers(encoder):
    """Every (nested) layer of the encoder that has a kernel."""
    return connections.kernel_layer_names(encoder)


def check_layers(encoder, layers):
    """Resolves each name (ValueError "layer: ..." for unknown / kernel-less layers)."""
    for name in layers:
        connections.resolve_variable(encoder, name)


def task_hooks(cfg):
    """The analysis hooks of the run's task (``dualssl_tf.tasks.<name>.analysis``).

    Raises ValueError("model_dir: ...") for a task without them (e.g. images).
    """
    hooks = cfg.task.load_analysis()
    if hooks is None:
        supported = [t.name for t in tasks.TASKS.values() if t.analysis]
        raise ValueError(f"model_dir: dataset {cfg.data.dataset!r} is not supported by the "
                         f"analysis; supported: {', '.join(supported)}")
    return hooks


def encoder_note(cfg):
    """One line on how the paper's lens applies to a non-ReLU encoder (a ViT: GELU,
    LayerNorm, biases, residuals), or None for the others."""
    if not cfg.data.encoder.startswith("vit_"):
        return None
    return ("for a ViT, Theorem 3 (OP_l vec(W_l) as the training direction) needs a "
            "reversible ReLU network and does not hold; the operator's products are measured "
            "as they are, and op_residue says how far from reversible each layer is")


def _layer_ops(encoder, name, x_aug):
    """[(label, CovarianceOperator)] for a layer: one per group of a GroupedDense."""
    layer = connections.find_layer(encoder, name)
    conn = connections.Connection(encoder, name, lambda x: encoder(x, training=False))
    kbar = averaged_connections(conn, x_aug)
    w = np.asarray(conn.variable.numpy(), np.float64)
    if isinstance(layer, GroupedDense):
        g = w.shape[0]
        kbar = kbar.reshape(kbar.shape[0], kbar.shape[1], g, -1)
        return [(f"{name}.g{k}", CovarianceOperator(kbar[:, :, k], weight_vector=w[k].ravel()))
                for k in range(g)]
    return [(name, CovarianceOperator(kbar, weight_vector=w.ravel()))]


def operator_summary(run, layers, points=512, augmentations=8, top_k=20, seed=0,
                     progress=print):
    """OP per layer (per group) at init and after training.

    Returns dict label -> {``op_norm_init``, ``op_norm_final``, ``spectrum_init`` [top_k],
    ``spectrum_final``, ``align_init`` (W_init vs OP_init), ``align_final`` (W_final vs
    OP_final), ``align_final_to_init_op`` (W_final vs OP_init's top eigenvector),
    ``w_norm_init``, ``w_norm_final``}.
    """
    return _operator_summary(run, layers, _sample(run, points, augmentations, seed), top_k,
                             progress)


def _sample(run, points, augmentations, seed):
    """The analysis sample x_aug [M, A, ...] of the run's task. M and A are the requested
    points and augmentations where the task draws them; the translation toy always uses its
    exact set (2 objects x every location) whatever is asked."""
    return task_hooks(run.cfg).sampler(run, points, augmentations, seed)()


def _operator_summary(run, layers, x_aug, top_k, progress):
    out = {}
    for i, name in enumerate(layers, start=1):
        progress(f"[{i}/{len(layers)}] covariance operator of {name} "
                 f"({x_aug.shape[0]} points x {x_aug.shape[1]} augmentations)")
        init_ops = _layer_ops(run.init.encoder, name, x_aug)
        final_ops = _layer_ops(run.final.encoder, name, x_aug)
        for (label, op0), (_, op1) in zip(init_ops, final_ops):
            out[label] = {
                "op_norm_init": op0.frobenius_norm(), "op_norm_final": op1.frobenius_norm(),
                "spectrum_init": op0.top_eigen(top_k)[0].tolist(),
                "spectrum_final": op1.top_eigen(top_k)[0].tolist(),
                "align_init": _top1(op0, op0.weight_vector),
                "align_final": _top1(op1, op1.weight_vector),
                "align_final_to_init_op": _top1(op0, op1.weight_vector),
                "w_norm_init": float(np.linalg.norm(op0.weight_vector)),
                "w_norm_final": float(np.linalg.norm(op1.weight_vector))}
    return out


def _top1(op, w):
    return float(op.alignment(w, 1)[0]) if op.spectrum().size else None


def emergence(run):
    """Per-epoch curves from metrics.jsonl: {"epochs": [...], "series": {key: [...]}}."""
    hooks = task_hooks(run.cfg)
    key = hooks.EMERGENCE_KEY
    epochs, series = runs.metric_series(run.metrics, key)
    if not isinstance(series, dict) or not series:
        raise ValueError(f"model_dir: metrics.jsonl has no {key!r} entries")
    series = hooks.emergence_series(series)
    return {"metric": key, "epochs": epochs.tolist(),
            "series": {k: v.tolist() for k, v in series.items()}}


def monitor_curves(run):
    """Alignment curves logged by the per-epoch monitor (``--analysis_every``), if any."""
    for key in ("op_align_mean", "op_align"):
        epochs, series = runs.metric_series(run.metrics, key)
        if isinstance(series, dict) and series:
            return {"metric": key, "epochs": epochs.tolist(),
                    "series": {k: v.tolist() for k, v in series.items()}}
    return None


def analyze_run(run, layers, points=512, augmentations=8, top_k=20, seed=0,
                lucky_hids=(), progress=print):
    """Everything analyze.py writes into analysis.json (JSON-able dict)."""
    if run.final is None:
        raise ValueError(f"model_dir: no saved_model/ in {run.model_dir}; the analysis needs "
                         "the trained encoder")
    x_aug = _sample(run, points, augmentations, seed)
    # The sample actually used (the toy ignores --points/--augmentations): analysis.json
    # and the printout agree; what was asked is kept when it differs.
    used = {"points": int(x_aug.shape[0]), "augmentations": int(x_aug.shape[1])}
    result = {"model_dir": run.model_dir, "dataset": run.cfg.data.dataset,
              "layers": list(layers), **used,
              "emergence": emergence(run), "monitor": monitor_curves(run),
              "operators": _operator_summary(run, layers, x_aug, top_k, progress)}
    if used != {"points": points, "augmentations": augmentations}:
        result["requested"] = {"points": points, "augmentations": augmentations}
    result.update(task_hooks(run.cfg).study(run, lucky_hids, progress))
    return result


def make_figures(result, out_dir):
    """Writes the PNG figures of an :func:`analyze_run` result. Returns {name: path}."""
    paths = tasks.spec(result["dataset"]).load_analysis().figures(result, out_dir)
    ops = result["operators"]
    spectra = {}
    for label, v in _representative(ops).items():
        spectra[f"{label} init"] = v["spectrum_init"]
        spectra[f"{label} trained"] = v["spectrum_final"]
    grouped = any(".g" in k for k in ops)
    paths["op_spectrum"] = plots.op_spectra(spectra, os.path.join(out_dir, "op_spectrum.png"),
                                            title="Spectrum of OP_l at init (dashed) and "
                                                  "after training (solid)"
                                                  + ("\n(group 0 of each layer)" if grouped
                                                     else ""))
    mon = result.get("monitor")
    if mon:
        title = "Alignment of weights with OP's top eigenvector"
        if mon["metric"] == "op_align_mean":
            title += "\n(mean over the latent groups of each depth)"
        paths["alignment"] = plots.alignment_curves(
            mon["epochs"], mon["series"], os.path.join(out_dir, "alignment.png"), title=title)
    else:
        labels = list(ops)
        paths["alignment"] = plots.alignment_bars(
            labels, [ops[k]["align_init"] for k in labels],
            [ops[k]["align_final"] for k in labels], os.path.join(out_dir, "alignment.png"))
    return paths


def _representative(ops, limit=6):
    """One entry per layer (its group 0) so spectrum plots stay readable."""
    chosen = {}
    for label, v in ops.items():
        layer = label.split(".g")[0]
        if layer not in chosen and len(chosen) < limit:
            chosen[layer] = v
    return chosen


# -- image runs: the matrix-free monitor's curves (metrics.jsonl) ---------------------------

# metrics.jsonl keys of the matrix-free monitor (analysis.operator_monitor.KEYS), in order.
MONITOR_KEYS = ("op_grad_cos", "op_w_norm", "op_residue", "op_top_eig", "op_trace",
                "op_xi_grad_cos", "op_xi_w_norm", "op_xi_residue_share")


def image_monitor_curves(metrics, layers=()):
    """{"epochs": [...], "series": {key: {layer: [...]}}} of the monitor's keys, None when
    metrics.jsonl has none of them. ``layers``: keep only these (ValueError "layers: ..."
    naming an unlogged one)."""
    out = {}
    epochs = None
    for key in MONITOR_KEYS:
        e, series = runs.metric_series(metrics, key)
        if isinstance(series, dict) and series:
            out[key] = {k: [float(x) for x in v] for k, v in series.items()}
            epochs = e.tolist() if epochs is None else epochs
    if not out:
        return None
    logged = list(next(iter(out.values())))
    missing = [name for name in layers if name not in logged]
    if missing:
        raise ValueError(f"layers: {', '.join(missing)} not monitored in this run; "
                         f"monitored: {', '.join(logged)}")
    if layers:
        out = {key: {k: v for k, v in s.items() if k in layers} for key, s in out.items()}
    return {"epochs": epochs, "series": out}


def monitor_report(model_dir, cfg, metrics, layers=()):
    """analysis.json of an image run: the monitor's curves per layer (None without them),
    and a ``note`` saying what is missing."""
    curves = image_monitor_curves(metrics, layers)
    result = {"model_dir": model_dir, "dataset": cfg.data.dataset,
              "method": cfg.method.method, "monitor": curves, "matrix_free": True}
    notes = [encoder_note(cfg)]
    if curves is None:
        notes.append("no covariance-operator monitor in metrics.jsonl (train with "
                     "--analysis_every=1 to log it); only the collapse figure is drawn")
    if any(notes):
        result["note"] = "; ".join(n for n in notes if n)
    return result


def monitor_figures(result, out_dir):
    """The PNGs of a :func:`monitor_report` (none without the monitor). Returns {name: path}."""
    curves = result.get("monitor")
    if not curves:
        return {}
    epochs, series = curves["epochs"], curves["series"]
    specs = {
        "op_alignment": ("op_grad_cos", "cos(-grad_W L, OP_l vec(W_l))",
                         "Gradient of the loss vs OP_l vec(W_l) (Theorem 3: 1 for L_simp "
                         "when reversible)", (-1.02, 1.02), False),
        "op_norm": ("op_w_norm", "||OP_l vec(W_l)||", "Operator's action on the weights",
                    None, True),
        "op_residue": ("op_residue", "||f - K_l^T vec(W_l)|| / ||f||",
                       "Reversibility residue (0: the lens is exact at l)", None, False),
        "op_spectrum_estimates": ("op_top_eig", "lambda_max(OP_l) (power iteration)",
                                  "Top eigenvalue estimate per layer", None, True),
        "op_xi_residue_share": ("op_xi_residue_share",
                                "min_c ||-grad - c OP_xi vec(W_l)|| / ||grad||",
                                "Theorem 4: share of the gradient the weighted operator "
                                "does not explain", (-0.02, 1.02), False),
    }
    theorem4 = series.get("op_xi_grad_cos")
    if theorem4:   # Theorem 4's cosine beside Theorem 3's, dashed
        title, ylabel = specs["op_alignment"][2], specs["op_alignment"][1]
        specs["op_alignment"] = ("op_grad_cos", f"{ylabel}; dashed: OP_xi",
                                 f"{title}; dashed: Theorem 4's OP_xi", (-1.02, 1.02), False)
    paths = {}
    for name, (key, ylabel, title, ylim, log) in specs.items():
        if key in series:
            paths[name] = plots.layer_curves(
                epochs, series[key], os.path.join(out_dir, f"{name}.png"),
                title=f"{title}\n({result['method']}, {result['dataset']})", ylabel=ylabel,
                ylim=ylim, log=log, dashed=theorem4 if name == "op_alignment" else None,
                dashed_label="(OP_xi)")
    return paths
