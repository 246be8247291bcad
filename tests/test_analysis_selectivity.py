"""Lucky nodes: per-unit correlations, rank persistence, selectivity at init vs hid."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from dualssl_tf.analysis import sampling, selectivity
from dualssl_tf.data.hltm import HLTM
from dualssl_tf.models.tree_net import TreeNet


def test_spearman_rows_by_hand():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [0.1, 0.4, 0.2, 0.3]])
    b = np.array([[10.0, 20.0, 30.0, 40.0], [4.0, 1.0, 3.0, 2.0]])
    # Row 2: ranks (0, 3, 1, 2) vs (3, 0, 2, 1): d = (3, 3, 1, 1), 1 - 6*20/(4*15) = -1.
    np.testing.assert_allclose(selectivity.spearman_rows(a, b), [1.0, -1.0])


def test_lucky_node_persistence_synthetic():
    init = {1: np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]]), 2: np.array([[0.3, 0.6, -0.1]])}
    final = {1: np.array([[0.95, 0.2, 0.6], [0.9, 0.3, 0.1]]), 2: np.array([[-0.9, 0.7, 0.2]])}
    res = selectivity.lucky_node_persistence(init, final)
    assert res[1]["top1_kept"] == 0.5                  # group 0 keeps its best unit, group 1 not
    assert res[1]["spearman"] == pytest.approx((1.0 - 1.0) / 2)
    assert res[2]["top1_kept"] == 0.0                  # |-0.9| wins after training
    assert res[2]["spearman"] == pytest.approx(0.5)    # ranks (1,2,0) vs (2,1,0)
    assert res[1]["init_best"] == pytest.approx(0.85)
    assert res[2]["chance_top1"] == pytest.approx(1 / 3)


def test_unit_correlations_match_numpy():
    tree = HLTM(depth=2, num_children=2, delta_lower=0.8, seed=0)
    keras.utils.set_random_seed(0)
    net = TreeNet(2, 2, hid=3)
    x, lat = tree.sample(500, seed=(0, 1))
    corr = selectivity.unit_correlations(net, x, lat, batch_size=128)
    pre = [np.asarray(p) for p in net.pre_activations(x)]
    for d in (1, 2):
        z = np.asarray(lat[d], np.float64)
        for g in range(z.shape[1]):
            for u in range(3):
                ref = np.corrcoef(z[:, g], pre[d - 1][:, g, u])[0, 1]
                assert corr[d][g, u] == pytest.approx(ref, abs=1e-9)


def test_wider_groups_have_luckier_best_units():
    """Theorem 5: the best unit of a wider group correlates more with its latent at init."""
    res = selectivity.init_selectivity([1, 20], depth=3, num_samples=4000, num_inits=2, seed=0)
    for d in (2, 3):
        assert res[20]["by_depth"][d]["best_mean"] > res[1]["by_depth"][d]["best_mean"]
    # The *typical* unit is not luckier: the median moves much less than the best.
    gain_best = res[20]["by_depth"][3]["best_mean"] - res[1]["by_depth"][3]["best_mean"]
    gain_median = res[20]["by_depth"][3]["median"] - res[1]["by_depth"][3]["median"]
    assert gain_best > gain_median
    assert res[20]["abs_corr"][3].shape == (2 * 20,)


def test_hltm_augmented_shares_root():
    tree = HLTM(depth=3, num_children=2, delta_lower=1.0, delta_upper=1.0, seed=0)
    x, root = sampling.hltm_augmented(tree, num_points=5, num_aug=4, seed=1)
    assert x.shape == (5, 4, 8)
    # |rho| = 1: every leaf is a deterministic function of the root, so all augmentations
    # of one base point coincide, and base points with different roots differ.
    np.testing.assert_array_equal(x, np.broadcast_to(x[:, :1], x.shape))
    for i in range(5):
        for j in range(5):
            assert (x[i, 0] == x[j, 0]).all() == (root[i] == root[j])
