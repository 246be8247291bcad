"""HLTM sampling statistics, the tree network's wiring, and the correlation metric."""

import numpy as np
import pytest

from dualssl_tf import correlation
from dualssl_tf.data.hltm import HLTM
from dualssl_tf.models.tree_net import TreeNet


@pytest.fixture(scope="module")
def tree():
    return HLTM(depth=3, num_children=2, delta_lower=0.5, delta_upper=0.9, seed=3)


def test_polarities_in_range_with_both_signs(tree):
    rho = np.concatenate(tree.rho)
    assert ((np.abs(rho) >= 0.5) & (np.abs(rho) <= 0.9)).all()
    assert (rho > 0).any() and (rho < 0).any()
    assert [len(r) for r in tree.rho] == [8, 4, 2]


def test_edge_agreement_matches_polarity(tree):
    n = 20000
    _, lat = tree.sample(n, seed=[0, 1])
    for d in range(tree.depth):
        parent = np.repeat(lat[d + 1].numpy(), 2, axis=1)
        agree = (lat[d].numpy() == parent).mean(0)
        expected = (1 + tree.rho[d]) / 2
        sigma = np.sqrt(expected * (1 - expected) / n)
        assert (np.abs(agree - expected) < 4.5 * sigma + 1e-9).all()
    root = lat[tree.depth].numpy().mean()
    assert abs(root - 0.5) < 4.5 * np.sqrt(0.25 / n)


def test_positive_shares_root_and_nothing_else_forced(tree):
    n = 20000
    batch = tree.training_batch(n, num_negatives=2, seed=[5, 0])
    x1, x2 = batch["view1"].numpy(), batch["view2"].numpy()
    # Two independent descents from the same root agree at a leaf with probability
    # (1 + prod(rho along the path)^2) / 2; with a shared root but nothing else shared.
    path = np.ones(8)
    for d in range(tree.depth):
        path *= np.repeat(tree.rho[d], 2 ** d)
    expected = (1 + path ** 2) / 2
    agree = (x1 == x2).mean(0)
    assert (np.abs(agree - expected) < 4.5 * np.sqrt(0.25 / n)).all()
    assert (agree < 0.99).all()


def test_positive_root_is_exactly_kept():
    tree = HLTM(depth=2, num_children=3, delta_lower=1.0, delta_upper=1.0, seed=0)
    # |rho| = 1: leaves are a deterministic function of the root, so views must coincide.
    batch = tree.training_batch(64, 1, seed=[1, 2])
    np.testing.assert_array_equal(batch["view1"], batch["view2"])
    assert not np.array_equal(batch["view1"], batch["negatives"][:, 0])


def test_negatives_are_independent_of_anchor(tree):
    n = 20000
    batch = tree.training_batch(n, num_negatives=1, seed=[6, 0])
    x1, xn = batch["view1"].numpy(), batch["negatives"].numpy()[:, 0]
    corr = [np.corrcoef(x1[:, i], xn[:, i])[0, 1] for i in range(8)]
    assert np.abs(corr).max() < 4.5 / np.sqrt(n)


def test_sampling_is_deterministic_per_seed_and_resumable(tree):
    a = tree.training_batch(32, 1, seed=[1, 7])
    b = tree.training_batch(32, 1, seed=[1, 7])
    c = tree.training_batch(32, 1, seed=[1, 8])
    np.testing.assert_array_equal(a["view1"], b["view1"])
    assert not np.array_equal(a["view1"], c["view1"])
    stream = list(tree.dataset(32, 1, seed=1, steps_per_epoch=4).take(12))
    resumed = list(tree.dataset(32, 1, seed=1, steps_per_epoch=4, start_step=7).take(5))
    for k in range(5):  # resuming at step 7 continues the very same stream
        np.testing.assert_array_equal(resumed[k]["view1"], stream[7 + k]["view1"])
    assert not np.array_equal(stream[0]["view1"], stream[4]["view1"])


def test_round_trip_keeps_polarities(tmp_path, tree):
    tree.save(tmp_path / "tree.json")
    again = HLTM.load(tmp_path / "tree.json")
    for r1, r2 in zip(tree.rho, again.rho):
        np.testing.assert_array_equal(r1, r2)


def test_invalid_tree():
    with pytest.raises(ValueError):
        HLTM(depth=0)
    with pytest.raises(ValueError):
        HLTM(delta_lower=0.9, delta_upper=0.5)


def test_tree_net_matches_numpy_forward():
    net = TreeNet(depth=3, num_children=2, hid=4)
    x = np.random.default_rng(0).integers(0, 2, size=(5, 8)).astype(np.float32)
    pres = net.pre_activations(x)
    h = x.reshape(5, 4, 2)
    for d, layer in enumerate(net.levels, start=1):
        k, b = layer.kernel.numpy(), layer.bias.numpy()
        pre = np.einsum("bgi,giu->bgu", h, k) + b
        np.testing.assert_allclose(pres[d - 1], pre, rtol=1e-5, atol=1e-6)
        if d < 3:
            h = np.maximum(pre, 0).reshape(5, -1, 2 * 4)
    np.testing.assert_allclose(net(x), pres[-1][:, 0], rtol=1e-6)


def test_tree_net_groups_only_see_their_subtree():
    net = TreeNet(depth=3, num_children=2, hid=3)
    x = np.zeros((1, 8), np.float32)
    x2 = x.copy()
    x2[0, 0] = 1.0  # leaf 0 belongs to group 0 at depth 1 and group 0 at depth 2
    a, b = net.pre_activations(x), net.pre_activations(x2)
    np.testing.assert_array_equal(a[0][:, 1:], b[0][:, 1:])
    np.testing.assert_array_equal(a[1][:, 1:], b[1][:, 1:])


def test_pearson_matches_numpy_and_constant_unit_is_zero():
    rng = np.random.default_rng(1)
    z = rng.integers(0, 2, size=(500, 3))
    acts = rng.normal(size=(500, 3, 4)) + z[:, :, None] * np.array([0, 0.5, 2, -1])
    acts[:, 1, 2] = 7.0  # a dead (constant) unit
    acts[:, 2, 3] = 5.0 + 1e-9 * rng.normal(size=500)  # constant up to float32 rounding
    got = correlation.pearson_per_unit(z, acts).numpy()
    for g in range(3):
        for u in range(4):
            if (g, u) in ((1, 2), (2, 3)):
                assert got[g, u] == 0.0
            else:
                assert got[g, u] == pytest.approx(np.corrcoef(z[:, g], acts[:, g, u])[0, 1],
                                                  abs=1e-12)
    np.testing.assert_allclose(correlation.best_correlation(z, acts), np.abs(got).max(1))


def test_best_correlation_by_depth_is_chunk_invariant():
    tree = HLTM(depth=3, seed=2)
    net = TreeNet(depth=3, hid=4)
    x, lat = tree.sample(3000, seed=[2, 2])
    full = correlation.best_correlation_by_depth(net.pre_activations, x, lat, batch_size=3000)
    chunked = correlation.best_correlation_by_depth(net.pre_activations, x, lat, batch_size=700)
    assert full.keys() == {1, 2, 3}
    for d in full:
        assert full[d] == pytest.approx(chunked[d], abs=1e-6)  # float32 forward per chunk
