"""Whole-run analysis behind tools/analyze.py: numbers (analysis.json) and figures (PNG).

:func:`analyze_run` computes, for chosen layers of a finished run, the covariance operator at
initialisation and after training (norm, spectrum, alignment of the weights with its top
eigenvector), the emergence curves from metrics.jsonl, and the dataset's selectivity study
(HLTM lucky nodes; translation-toy filters). :func:`make_figures` draws them.
"""

import os

import numpy as np

from dualssl_tf.analysis import connections, plots, runs, sampling, selectivity, translation
from dualssl_tf.analysis.covariance import CovarianceOperator, averaged_connections
from dualssl_tf.models.grouped_dense import GroupedDense

SUPPORTED = ("hltm", "translation1d")


def default_layers(encoder):
    """Every (nested) layer of the encoder that has a kernel."""
    return connections.kernel_layer_names(encoder)


def check_layers(encoder, layers):
    """Resolves each name (ValueError "layer: ..." for unknown / kernel-less layers)."""
    for name in layers:
        connections.resolve_variable(encoder, name)


def _sampler(run, points, augmentations, seed):
    cfg = run.cfg
    if cfg.dataset == "hltm":
        from dualssl_tf.data.hltm import HLTM
        tree = HLTM.from_dict(run.init.metadata["hltm"])
        return lambda: sampling.hltm_augmented(tree, points, augmentations, seed)[0]
    if cfg.dataset == "translation1d":
        from dualssl_tf.data.translation1d import Translation1D
        toy = Translation1D(cfg.translation1d_length)
        return lambda: sampling.translation1d_augmented(toy)
    raise ValueError(f"model_dir: dataset {cfg.dataset!r} is not supported by the analysis; "
                     f"supported: {', '.join(SUPPORTED)}")


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
    x_aug = _sampler(run, points, augmentations, seed)()
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
    key = "best_corr" if run.cfg.dataset == "hltm" else "selectivity"
    epochs, series = runs.metric_series(run.metrics, key)
    if not isinstance(series, dict) or not series:
        raise ValueError(f"model_dir: metrics.jsonl has no {key!r} entries")
    if key == "selectivity":
        series = {"mean |selectivity|": series["mean_abs"]}
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


def hltm_lucky_nodes(run):
    """Unit correlations before/after training on the run's own held-out sample.

    Returns dict with ``init_corr`` / ``final_corr`` (depth -> [groups, hid] lists),
    ``persistence`` (:func:`selectivity.lucky_node_persistence`) and
    ``init_reproduced`` (max |best_corr recomputed at init - metrics.jsonl epoch 0|, which is
    ~0 when the rebuilt initialisation is the run's).
    """
    monitor = next(cb for cb in run.init.callbacks if hasattr(cb, "latents"))
    init = selectivity.unit_correlations(run.init.encoder, monitor.x, monitor.latents)
    final = selectivity.unit_correlations(run.final.encoder, monitor.x, monitor.latents)
    logged = run.metrics[0].get("best_corr", {})
    diffs = [abs(np.abs(init[d]).max(1).mean() - logged[str(d)]) for d in init
             if str(d) in logged]
    return {"init_corr": {d: v.tolist() for d, v in init.items()},
            "final_corr": {d: v.tolist() for d, v in final.items()},
            "persistence": selectivity.lucky_node_persistence(init, final),
            "init_reproduced": float(max(diffs)) if diffs else None}


def analyze_run(run, layers, points=512, augmentations=8, top_k=20, seed=0,
                lucky_hids=(), progress=print):
    """Everything analyze.py writes into analysis.json (JSON-able dict)."""
    if run.final is None:
        raise ValueError(f"model_dir: no saved_model/ in {run.model_dir}; the analysis needs "
                         "the trained encoder")
    result = {"model_dir": run.model_dir, "dataset": run.cfg.dataset, "layers": list(layers),
              "points": points, "augmentations": augmentations,
              "emergence": emergence(run), "monitor": monitor_curves(run),
              "operators": operator_summary(run, layers, points, augmentations, top_k, seed,
                                            progress)}
    if run.cfg.dataset == "hltm":
        progress("lucky nodes: unit correlations at init and after training")
        result["lucky_nodes"] = hltm_lucky_nodes(run)
        if lucky_hids:
            progress(f"lucky nodes at init vs hid {list(lucky_hids)}")
            cfg = run.cfg
            study = selectivity.init_selectivity(
                lucky_hids, cfg.hltm_depth, cfg.hltm_children, cfg.hltm_delta_lower,
                cfg.hltm_delta_upper, num_samples=20000, seed=cfg.seed)
            result["init_selectivity_by_hid"] = {
                str(h): v["by_depth"] for h, v in study.items()}
    else:
        from dualssl_tf.data.translation1d import Translation1D
        toy = Translation1D(run.cfg.translation1d_length)
        result["filters"] = translation.filter_op_alignment(run.init.encoder,
                                                            run.final.encoder, toy)
    return result


def make_figures(result, out_dir):
    """Writes the PNG figures of an :func:`analyze_run` result. Returns {name: path}."""
    paths = {}
    em = result["emergence"]
    if result["dataset"] == "hltm":
        paths["emergence"] = plots.emergence_curves(
            em["epochs"], em["series"], os.path.join(out_dir, "emergence.png"))
        lucky = result["lucky_nodes"]
        stats = {int(d): v for d, v in lucky["persistence"].items()}
        paths["lucky_nodes"] = plots.lucky_node_scatter(
            {int(d): v for d, v in lucky["init_corr"].items()},
            {int(d): v for d, v in lucky["final_corr"].items()},
            os.path.join(out_dir, "lucky_nodes.png"), stats=stats)
        if "init_selectivity_by_hid" in result:
            study = {int(h): {"by_depth": {int(d): s for d, s in v.items()}}
                     for h, v in result["init_selectivity_by_hid"].items()}
            paths["lucky_by_hid"] = plots.init_selectivity_by_hid(
                study, os.path.join(out_dir, "lucky_nodes_by_hid.png"))
    else:
        paths["emergence"] = plots.emergence_curves(
            em["epochs"], em["series"], os.path.join(out_dir, "emergence.png"),
            title="Translation toy: emergence of object-selective filters",
            ylabel="mean |selectivity| over filters", label_fmt="{}")
        f = result["filters"]
        paths["lucky_nodes"] = plots.selectivity_scatter(
            f["selectivity_init"], f["selectivity_final"],
            os.path.join(out_dir, "selectivity.png"))
        paths["filter_alignment"] = plots.alignment_bars(
            [f"filter {j}" for j in range(len(f["align_init"]))], f["align_init"],
            f["align_final"], os.path.join(out_dir, "filter_alignment.png"),
            title="Filters vs top eigenvector of OP (per filter block) at init",
            ylabel="|cos(w_j, top eigvec of OP_jj at init)|")
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
