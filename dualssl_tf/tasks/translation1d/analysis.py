"""What the analysis tools need of the 1-D translation toy (never imported by training).

The covariance operator of the conv layer from the exact augmentation set (the two
objects at every location), filter selectivity, and the alignment of the trained filters
with OP's top eigenvectors at initialisation.
"""

import os

from dualssl_tf.analysis import plots, sampling, translation
from dualssl_tf.data.translation1d import Translation1D

EMERGENCE_KEY = "selectivity"


def monitor(cfg, task, num_aug):
    """``(layers, sampler)`` of the per-epoch monitor: the conv layer, exact Kbar."""
    toy = Translation1D(task.metadata["translation1d"]["length"])

    def draw(seed):
        # M = 2 objects, every location: the exact Kbar (analysis_points is not used).
        return sampling.translation1d_augmented(toy)
    return [("conv", False)], draw


def sampler(run, points, augmentations, seed):
    toy = Translation1D(run.cfg.translation1d.length)
    return lambda: sampling.translation1d_augmented(toy)


def emergence_series(series):
    return {"mean |selectivity|": series["mean_abs"]}


def study(run, lucky_hids=(), progress=print):
    toy = Translation1D(run.cfg.translation1d.length)
    return {"filters": translation.filter_op_alignment(run.init.encoder, run.final.encoder,
                                                       toy)}


def figures(result, out_dir):
    em, f = result["emergence"], result["filters"]
    paths = {"emergence": plots.emergence_curves(
        em["epochs"], em["series"], os.path.join(out_dir, "emergence.png"),
        title="Translation toy: emergence of object-selective filters",
        ylabel="mean |selectivity| over filters", label_fmt="{}")}
    paths["lucky_nodes"] = plots.selectivity_scatter(
        f["selectivity_init"], f["selectivity_final"], os.path.join(out_dir, "selectivity.png"))
    paths["filter_alignment"] = plots.alignment_bars(
        [f"filter {j}" for j in range(len(f["align_init"]))], f["align_init"],
        f["align_final"], os.path.join(out_dir, "filter_alignment.png"),
        title="Filters vs top eigenvector of OP (per filter block) at init",
        ylabel="|cos(w_j, top eigvec of OP_jj at init)|",
        na_note="OP's block OP_jj of the filter is zero at init (its averaged connection "
                "is the same for both objects, as for a filter whose ReLU is never active), "
                "so it has no top eigenvector to align with.")
    return paths
