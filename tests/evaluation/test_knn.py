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
