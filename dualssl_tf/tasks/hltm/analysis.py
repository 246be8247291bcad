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


def trees(metadata):
    """The run's trees: one per seed (``hltm_trees`` of a multi-seed run, else ``hltm``)."""
    return [HLTM.from_dict(t) for t in metadata.get("hltm_trees", [metadata["hltm"]])]


def sampler(run, points, augmentations, seed):
    """``() -> x_aug [M, A, S * c**L]`` for the whole-run analysis (each seed's tree feeds
    its own tree network of a multi-seed forest)."""
    ts = trees(run.init.metadata)
    return lambda: np.concatenate([np.asarray(sampling.hltm_augmented(
        t, points, augmentations, seed)[0]) for t in ts], axis=-1)


def emergence_series(series):
    return series


def lucky_nodes(run):
    """Unit correlations before/after training on the run's own held-out sample(s).

    A multi-seed run is pooled over seeds: each seed's network on its own sample, groups
    stacked seed after seed.
    Returns dict with ``init_corr`` / ``final_corr`` (depth -> [groups, hid] lists),
    ``persistence`` (:func:`selectivity.lucky_node_persistence`) and ``init_reproduced``
    (max |best_corr recomputed at init - metrics.jsonl epoch 0|, ~0 when the initial
    weights read back are the run's).
    """
    cb = next(cb for cb in run.init.callbacks if hasattr(cb, "latents"))
    if len(cb.xs) == 1:
        init = selectivity.unit_correlations(run.init.encoder, cb.x, cb.latents)
        final = selectivity.unit_correlations(run.final.encoder, cb.x, cb.latents)
    else:
        def pooled(net):
            per = [selectivity.unit_correlations(net, x, lat, tree=s)
                   for s, (x, lat) in enumerate(zip(cb.xs, cb.latent_list))]
            return {d: np.concatenate([p[d] for p in per]) for d in per[0]}
        init, final = pooled(run.init.encoder), pooled(run.final.encoder)
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
    if "best_corr_seeds" in run.metrics[0]:  # several seeds: the per-seed curves
        out["emergence_seeds"] = {
            "epochs": [m["epoch"] for m in run.metrics],
            "series": {d: [m["best_corr_seeds"][d] for m in run.metrics]
                       for d in run.metrics[0]["best_corr_seeds"]}}
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
    path = os.path.join(out_dir, "emergence.png")
    if "emergence_seeds" in result:  # mean +- sd band over seeds
        es = result["emergence_seeds"]
        paths = {"emergence": plots.emergence_band(es["epochs"], es["series"], path)}
    else:
        paths = {"emergence": plots.emergence_curves(em["epochs"], em["series"], path)}
    title = "Lucky nodes: selectivity at init vs after training" + (
        f" ({len(next(iter(result['emergence_seeds']['series'].values()))[0])} seeds "
        "pooled)" if "emergence_seeds" in result else "")
    paths["lucky_nodes"] = plots.lucky_node_scatter(
        {int(d): v for d, v in lucky["init_corr"].items()},
        {int(d): v for d, v in lucky["final_corr"].items()},
        os.path.join(out_dir, "lucky_nodes.png"), title=title,
        stats={int(d): v for d, v in lucky["persistence"].items()})
    if "init_selectivity_by_hid" in result:
        by_hid = {int(h): {"by_depth": {int(d): s for d, s in v.items()}}
                  for h, v in result["init_selectivity_by_hid"].items()}
        paths["lucky_by_hid"] = plots.init_selectivity_by_hid(
            by_hid, os.path.join(out_dir, "lucky_nodes_by_hid.png"))
    return paths
