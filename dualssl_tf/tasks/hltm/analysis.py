"""What the analysis tools need of the HLTM task (never imported by training).

``tools/analyze.py`` and ``--analysis_every`` call these through the task registry:
the layers to analyse, samplers of base points x augmentations (the root latent is kept,
every other latent resampled), the emergence metric, the lucky-node study and figures.
"""

import os

import numpy as np

from dualssl_tf.analysis import plots, sampling, selectivity
from dualssl_tf.data.hltm import HLTM

EMERGENCE_KEY = "best_corr"   # metrics.jsonl key of the emergence curves


def monitor(cfg, task, num_aug):
    """``(layers, sampler)`` of the per-epoch monitor: every latent group of the tree net."""
    tree = HLTM.from_dict(task.metadata["hltm"])
    layers = [(level.name, True) for level in task.encoder.levels]
    return layers, sampling.hltm_sampler(tree, cfg.analysis.points, num_aug)


def sampler(run, points, augmentations, seed):
    """``() -> x_aug [M, A, c**L]`` for the whole-run analysis."""
    tree = HLTM.from_dict(run.init.metadata["hltm"])
    return lambda: sampling.hltm_augmented(tree, points, augmentations, seed)[0]


def emergence_series(series):
    return series


def lucky_nodes(run):
    """Unit correlations before/after training on the run's own held-out sample.

    Returns dict with ``init_corr`` / ``final_corr`` (depth -> [groups, hid] lists),
    ``persistence`` (:func:`selectivity.lucky_node_persistence`) and ``init_reproduced``
    (max |best_corr recomputed at init - metrics.jsonl epoch 0|, ~0 when the initial
    weights read back are the run's).
    """
    monitor_cb = next(cb for cb in run.init.callbacks if hasattr(cb, "latents"))
    init = selectivity.unit_correlations(run.init.encoder, monitor_cb.x, monitor_cb.latents)
    final = selectivity.unit_correlations(run.final.encoder, monitor_cb.x, monitor_cb.latents)
    logged = run.metrics[0].get("best_corr", {})
    diffs = [abs(np.abs(init[d]).max(1).mean() - logged[str(d)]) for d in init
             if str(d) in logged]
    return {"init_corr": {d: v.tolist() for d, v in init.items()},
            "final_corr": {d: v.tolist() for d, v in final.items()},
            "persistence": selectivity.lucky_node_persistence(init, final),
            "init_reproduced": float(max(diffs)) if diffs else None}


def study(run, lucky_hids=(), progress=print):
    """The task's part of analysis.json: lucky nodes (and their dependence on hid)."""
    progress("lucky nodes: unit correlations at init and after training")
    out = {"lucky_nodes": lucky_nodes(run)}
    if lucky_hids:
        progress(f"lucky nodes at init vs hid {list(lucky_hids)}")
        o = run.cfg.hltm
        by_hid = selectivity.init_selectivity(
            lucky_hids, o.depth, o.children, o.delta_lower, o.delta_upper,
            num_samples=20000, seed=run.cfg.run.seed)
        out["init_selectivity_by_hid"] = {str(h): v["by_depth"] for h, v in by_hid.items()}
    return out


def figures(result, out_dir):
    """Emergence and lucky-node figures. Returns {name: path}."""
    em, lucky = result["emergence"], result["lucky_nodes"]
    paths = {"emergence": plots.emergence_curves(em["epochs"], em["series"],
                                                 os.path.join(out_dir, "emergence.png"))}
    paths["lucky_nodes"] = plots.lucky_node_scatter(
        {int(d): v for d, v in lucky["init_corr"].items()},
        {int(d): v for d, v in lucky["final_corr"].items()},
        os.path.join(out_dir, "lucky_nodes.png"),
        stats={int(d): v for d, v in lucky["persistence"].items()})
    if "init_selectivity_by_hid" in result:
        by_hid = {int(h): {"by_depth": {int(d): s for d, s in v.items()}}
                  for h, v in result["init_selectivity_by_hid"].items()}
        paths["lucky_by_hid"] = plots.init_selectivity_by_hid(
            by_hid, os.path.join(out_dir, "lucky_nodes_by_hid.png"))
    return paths
