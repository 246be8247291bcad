"""kNN votes vs a NumPy brute force, and kNN's invariances."""

import numpy as np
import pytest

from dualssl_tf.evaluation import knn


def brute_force_knn(train_x, train_y, query_x, num_classes, k, temperature):
    """Loop-by-loop reference: cosine similarity, k nearest, exp(sim / T) votes."""
    tn = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    votes = np.zeros([len(query_x), num_classes])
    for i, q in enumerate(query_x):
        sims = tn @ (q / np.linalg.norm(q))
        for j in np.argsort(-sims)[:min(k, len(train_x))]:
            votes[i, train_y[j]] += np.exp(sims[j] / temperature)
    return votes


@pytest.mark.parametrize("k", [1, 7, 200])
def test_knn_matches_numpy_brute_force(k):
    rng = np.random.default_rng(k)
    train_x = rng.normal(size=(60, 5)).astype(np.float32)
    train_y = rng.integers(0, 4, 60)
    test_x = rng.normal(size=(23, 5)).astype(np.float32)
    test_y = rng.integers(0, 4, 23)
    expected = brute_force_knn(train_x, train_y, test_x, 4, k, 0.07)
    got = knn.knn_scores(train_x, train_y, test_x, 4, k=k, temperature=0.07, batch_size=10)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    result = knn.knn_probe(train_x, train_y, test_x, test_y, 4, k=k)
    assert result["top1"] == pytest.approx(np.mean(expected.argmax(1) == test_y))
    assert result["k"] == min(k, 60) and result["top5"] is None


def test_knn_is_scale_invariant_and_finds_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    y = np.repeat(np.arange(3), 20)
    x = centres[y] + rng.normal(size=(60, 8))
    scores = knn.knn_scores(x, y, x * 3.0, 3, k=5)
    np.testing.assert_array_equal(scores.argmax(1), y)


def _data(seed=3, n=60, m=23, dim=5, classes=4):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)).astype(np.float32), rng.integers(0, classes, n),
            rng.normal(size=(m, dim)).astype(np.float32), rng.integers(0, classes, m))


def test_k_above_the_train_set_is_clipped_and_says_so():
    xtr, ytr, xte, yte = _data()
    np.testing.assert_array_equal(knn.knn_scores(xtr, ytr, xte, 4, k=500),
                                  knn.knn_scores(xtr, ytr, xte, 4, k=60))
    clipped = knn.knn_probe(xtr, ytr, xte, yte, 4, k=[5, 500])
    exact = knn.knn_probe(xtr, ytr, xte, yte, 4, k=60)
    assert clipped["top1@500"] == exact["top1"] and clipped["k@500"] == 60
    assert clipped["clipped"] == [500] and clipped["k@5"] == 5 and exact["clipped"] == []
    # With all N neighbours every query's votes are its class totals: by hand.
    w = np.exp((xte / np.linalg.norm(xte, axis=1, keepdims=True))
               @ (xtr / np.linalg.norm(xtr, axis=1, keepdims=True)).T / 0.07)
    by_hand = np.stack([w[:, ytr == c].sum(1) for c in range(4)], 1)
    assert clipped["top1@500"] == pytest.approx(np.mean(by_hand.argmax(1) == yte))


def test_several_k_in_one_pass_equal_separate_runs():
    xtr, ytr, xte, yte = _data(seed=4, n=80, m=37, classes=7)
    # Ties: repeated train points (top_k keeps the lower index first in both runs).
    xtr[40:50] = xtr[:10]
    ks = [20, 3, 200, 80, 20]
    scores = knn.knn_scores_at(xtr, ytr, xte, 7, ks, batch_size=16)
    for k, s in zip(ks, scores):
        np.testing.assert_array_equal(s, knn.knn_scores(xtr, ytr, xte, 7, k=k, batch_size=16))
    many = knn.knn_probe(xtr, ytr, xte, yte, 7, k=ks)
    assert many["ks"] == [20, 3, 200, 80] and many["clipped"] == [200]
    for k in many["ks"]:
        one = knn.knn_probe(xtr, ytr, xte, yte, 7, k=k)
        assert (many[f"top1@{k}"], many[f"top5@{k}"], many[f"k@{k}"]) == (
            one["top1"], one["top5"], one["k"]), k
        assert one[f"top1@{k}"] == one["top1"] and one["ks"] == [k]
    # The keys of a single-k probe are the first k's.
    assert (many["top1"], many["top5"], many["k"]) == (many["top1@20"], many["top5@20"], 20)
    assert sorted(many) == sorted(
        ["top1", "top5", "k", "ks", "clipped", "temperature", "num_train", "num_test"]
        + [f"{key}@{k}" for k in (20, 3, 200, 80) for key in ("top1", "top5", "k")])


def test_bad_k_is_refused():
    xtr, ytr, xte, yte = _data()
    for k in (0, [20, 0], []):
        with pytest.raises(ValueError, match="--knn_k: must be one or more integers >= 1"):
            knn.knn_probe(xtr, ytr, xte, yte, 4, k=k)
