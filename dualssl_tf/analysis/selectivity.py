"""Lucky nodes (Theorem 5): selectivity of HLTM units for their latent, at init and after.

At initialisation some units of a latent's group already correlate with that latent by chance
("lucky nodes"); training amplifies them. With more units per group (``hid``) the best unit
of each group is likelier to be lucky. This module measures:

* the distribution over units of ``|corr(unit, latent)|`` at initialisation, per depth,
  as a function of ``hid`` (:func:`init_selectivity`);
* whether the units most selective at init are the ones best after training: per group,
  the Spearman rank correlation of the units' ``|corr|`` at init and after training, and how
  often the best unit at init is still the best (:func:`lucky_node_persistence`).

Correlations come from :func:`dualssl_tf.correlation.pearson_per_unit` (pre-activations).
"""

import numpy as np
import keras

from dualssl_tf import correlation
from dualssl_tf.data.hltm import HLTM
from dualssl_tf.models.tree_net import TreeNet


def unit_correlations(net, x, latents, batch_size=8192, tree=None):
    """Signed Pearson correlation of every unit with its group's latent.

    Args:
      net: :class:`TreeNet`; x: [n, c**L] leaves; latents: dict depth -> [n, c**(L-d)].
      tree: in a multi-seed forest, the index of the tree that x and latents belong to.
    Returns:
      dict depth d (1..L) -> numpy [c**(L-d), hid] float64.
    """
    n = int(x.shape[0])
    chunks = [net.pre_activations(x[i:i + batch_size], **({} if tree is None else
                                                          {"tree": tree}))
              for i in range(0, n, batch_size)]
    out = {}
    for d in range(1, net.depth + 1):
        acts = np.concatenate([np.asarray(c[d - 1]) for c in chunks], axis=0)
        out[d] = correlation.pearson_per_unit(latents[d], acts).numpy()
    return out


def _quantiles(values):
    q = np.quantile(values, [0.1, 0.5, 0.9])
    return {"p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


def init_selectivity(hids, depth=5, num_children=2, delta_lower=0.8, delta_upper=1.0,
                     num_samples=20000, num_inits=3, seed=0):
    """|corr(unit, latent)| at initialisation as a function of ``hid`` (Theorem 5).

    For each hid, ``num_inits`` fresh TreeNets (different init seeds) are evaluated on one
    HLTM sample. Per depth it reports the distribution over all units (quantiles) and the
    mean over groups of the best unit ("best correlation" at init).

    Returns:
      dict hid -> {"by_depth": {d: {"p10", "median", "p90", "best_mean", "frac_above_0.5"}},
                   "abs_corr": {d: numpy array of every unit's |corr|}}.
    """
    tree = HLTM(depth, num_children, delta_lower, delta_upper, seed=seed)
    x, latents = tree.sample(num_samples, seed=(seed, 1))
    result = {}
    for hid in hids:
        per_depth = {d: [] for d in range(1, depth + 1)}
        best = {d: [] for d in range(1, depth + 1)}
        for k in range(num_inits):
            keras.utils.set_random_seed(seed * 1000 + 17 * k + hid)
            net = TreeNet(depth, num_children, hid)
            net(x[:1])
            corr = unit_correlations(net, x, latents)
            for d, c in corr.items():
                per_depth[d].append(np.abs(c).ravel())
                best[d].append(np.abs(c).max(axis=1))
        by_depth, raw = {}, {}
        for d in per_depth:
            values = np.concatenate(per_depth[d])
            raw[d] = values
            by_depth[d] = dict(_quantiles(values), best_mean=float(np.mean(np.concatenate(
                best[d]))), frac_above_half=float(np.mean(values > 0.5)))
        result[hid] = {"by_depth": by_depth, "abs_corr": raw}
    return result


def _ranks(a):
    """Ranks along the last axis (0 = smallest); ties are broken by position."""
    return np.argsort(np.argsort(a, axis=-1), axis=-1).astype(np.float64)


def spearman_rows(a, b):
    """Spearman rank correlation of each row of a and b ([g, h] -> [g])."""
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean(axis=-1, keepdims=True)
    rb -= rb.mean(axis=-1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))
    return np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1.0), 0.0)


def lucky_node_persistence(init_corr, final_corr):
    """Are the units most selective at init the best after training?

    Args:
      init_corr, final_corr: dict depth -> [groups, hid] correlations (signed or not), from
        :func:`unit_correlations` on the same units before and after training.
    Returns:
      dict depth -> {"spearman": mean over groups of the rank correlation of |corr|,
      "top1_kept": fraction of groups whose best unit at init is still the best,
      "chance_top1": 1/hid (what top1_kept would be by chance), "init_best", "final_best"
      (mean best |corr|)}.
    """
    out = {}
    for d in sorted(init_corr):
        a, b = np.abs(init_corr[d]), np.abs(final_corr[d])
        hid = a.shape[1]
        out[d] = {"spearman": float(np.mean(spearman_rows(a, b))),
                  "top1_kept": float(np.mean(a.argmax(1) == b.argmax(1))),
                  "chance_top1": 1.0 / hid,
                  "init_best": float(a.max(1).mean()), "final_best": float(b.max(1).mean())}
    return out
