"""Probing exports: kNN vs NumPy brute force, linear probe, feature cache, fine-tuning,
probe data (npz, HLTM)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import export, probe, probe_data


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
    got = probe.knn_scores(train_x, train_y, test_x, 4, k=k, temperature=0.07, batch_size=10)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    result = probe.knn_probe(train_x, train_y, test_x, test_y, 4, k=k)
    assert result["top1"] == pytest.approx(np.mean(expected.argmax(1) == test_y))
    assert result["k"] == min(k, 60) and result["top5"] is None


def test_knn_is_scale_invariant_and_finds_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    y = np.repeat(np.arange(3), 20)
    x = centres[y] + rng.normal(size=(60, 8))
    scores = probe.knn_scores(x, y, x * 3.0, 3, k=5)
    np.testing.assert_array_equal(scores.argmax(1), y)


def test_topk_accuracy_by_hand():
    scores = np.array([[0.1, 0.5, 0.2, 0.0, 0.3, 0.9],
                       [0.9, 0.0, 0.1, 0.2, 0.3, 0.4]])
    labels = np.array([1, 5])
    assert probe.topk_accuracy(scores, labels, 1) == 0.0
    # Row 0: top-2 {5, 1} holds 1; row 1: top-2 {0, 5} holds 5.
    assert probe.topk_accuracy(scores, labels, 2) == 1.0
    assert probe.topk_accuracy(scores[:, :5], np.array([1, 0]), 5) is None


def test_standardize_uses_train_statistics():
    train = np.array([[1.0, 10.0], [3.0, 30.0]])
    test = np.array([[2.0, 50.0]])
    s_train, s_test = probe.standardize(train, test, eps=0.0)
    np.testing.assert_allclose(s_train, [[-1, -1], [1, 1]])
    np.testing.assert_allclose(s_test, [[0.0, 3.0]])


def _blobs(n, seed, num_classes=3, dim=10, sep=4.0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(num_classes, dim)) * sep
    y = rng.integers(0, num_classes, n)
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def test_linear_probe_recovers_separable_problem_and_never_looks_at_test():
    train_x, train_y = _blobs(300, 1)
    test_x, test_y = _blobs(200, 2)
    result = probe.linear_probe(train_x, train_y, test_x, test_y, 3, epochs=10)
    assert result["top1"] >= 0.97
    assert result["train_top1"] >= 0.97
    assert set(result["val_top1"]) == {"0.0", "0.0001", "0.001", "0.01"}
    # The choice must not depend on test labels: scramble them, same choice and val scores.
    scrambled = probe.linear_probe(train_x, train_y, test_x, np.roll(test_y, 1), 3, epochs=10)
    assert scrambled["weight_decay"] == result["weight_decay"]
    assert scrambled["val_top1"] == result["val_top1"]
    assert scrambled["top1"] < 0.6


def test_linear_probe_weight_decay_shrinks_weights():
    x, y = _blobs(200, 3)
    w0, _ = probe.train_linear(x, y, 3, weight_decay=0.0, epochs=10)
    w1, _ = probe.train_linear(x, y, 3, weight_decay=1.0, epochs=10)
    assert np.linalg.norm(w1) < 0.5 * np.linalg.norm(w0)


def test_train_linear_reaches_the_penalised_optimum():
    """Stationarity of mean CE + wd/2 ||W||^2: the NumPy gradient vanishes at the result."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    wd = 0.1
    w, b = probe.train_linear(x, y, 3, weight_decay=wd, epochs=1, min_steps=3000,
                              learning_rate=0.05)
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    err = (p - np.eye(3)[y]) / len(x)
    grad_w, grad_b = x.T @ err + wd * w, err.sum(0)
    assert np.abs(grad_w).max() < 1e-4 and np.abs(grad_b).max() < 1e-4
    assert np.abs(w).max() > 0.05                       # not the trivial zero solution


def test_probe_rejects_out_of_range_labels():
    x, y = _blobs(20, 0)
    with pytest.raises(ValueError, match="num_classes"):
        probe.linear_probe(x, y, x, y, num_classes=2)


# ----------------------------------------------------------------------------- exports

SHAPE = (6, 6, 3)


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inp = keras.Input(SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same", name="block1")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    enc = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h), name="enc")
    path = str(tmp_path_factory.mktemp("probe") / "saved_model")
    export.export_encoder(enc, None, path, SHAPE, intermediate_layers=["block1"])
    return enc, path


def _image_ds(n, seed, batch=8):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, *SHAPE)).astype(np.float32)
    y = rng.integers(0, 3, n)
    return x, y, tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def test_extract_features_matches_encoder_and_pools_maps(image_export):
    enc, path = image_export
    loaded = export.load_encoder(path)
    x, y, ds = _image_ds(20, 0)
    feats, labels = probe.extract_features(loaded, ds, verbose=0)
    np.testing.assert_allclose(feats, enc(x, training=False).numpy(), atol=1e-6)
    np.testing.assert_array_equal(labels, y)
    block, _ = probe.extract_features(loaded, ds, output="block1", verbose=0)
    expected = enc.get_layer("block1")(x).numpy().mean(axis=(1, 2))   # spatial mean
    np.testing.assert_allclose(block, expected, atol=1e-5)
    # uint8 images are scaled to [0, 1].
    x8 = (x * 255).round().astype(np.uint8)
    ds8 = tf.data.Dataset.from_tensor_slices((x8, y)).batch(8)
    feats8, _ = probe.extract_features(loaded, ds8, verbose=0)
    np.testing.assert_allclose(feats8, enc(x8 / 255.0, training=False).numpy(), atol=1e-5)


def test_extract_features_drops_unlabelled(image_export):
    enc, path = image_export
    x, y, _ = _image_ds(10, 3)
    y = np.where(np.arange(10) % 3 == 0, -1, y)      # label -1: unlabelled
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    feats, labels = probe.extract_features(export.load_encoder(path), ds, verbose=0)
    keep = y >= 0
    np.testing.assert_array_equal(labels, y[keep])
    np.testing.assert_allclose(feats, enc(x[keep], training=False).numpy(), atol=1e-6)


def test_feature_cache_is_shared_and_invalidated_by_reexport(image_export, tmp_path,
                                                             monkeypatch):
    enc, src = image_export
    path = str(tmp_path / "sm")
    export.export_encoder(enc, None, path, SHAPE)
    loaded = export.load_encoder(path)
    _, _, ds = _image_ds(12, 1)
    first = probe.cached_features(loaded, ds, "toy", "train", verbose=0)
    cache = probe.feature_cache_path(path, "toy", "train")
    assert os.path.exists(cache) and os.path.dirname(cache) == str(tmp_path / "feature_cache")

    def no_extraction(*args, **kwargs):
        raise AssertionError("features should come from the cache")
    monkeypatch.setattr(probe, "extract_features", no_extraction)
    again = probe.cached_features(loaded, ds, "toy", "train", verbose=0)
    np.testing.assert_array_equal(again[0], first[0])
    assert probe.feature_cache_path(path, "toy", "test") != cache
    monkeypatch.undo()

    # The key is the SavedModel's content fingerprint: the same weights re-exported keep
    # the cache, changed weights invalidate it.
    export.export_encoder(enc, None, path, SHAPE)
    assert probe.feature_cache_path(path, "toy", "train") == cache
    kernel = enc.get_layer("block1").kernel
    old = kernel.numpy()
    kernel.assign(old + 0.1)
    try:
        export.export_encoder(enc, None, path, SHAPE)
    finally:
        kernel.assign(old)
    assert probe.feature_cache_path(path, "toy", "train") != cache


def test_dataset_shape_mismatch_and_empty_split(image_export):
    _, path = image_export
    loaded = export.load_encoder(path)
    wrong = tf.data.Dataset.from_tensor_slices(
        (np.zeros([4, 8, 8, 3], np.float32), np.zeros([4], np.int64))).batch(2)
    with pytest.raises(ValueError, match=r"--dataset: image size or channels \(8, 8, 3\)"):
        probe.extract_features(loaded, wrong, verbose=0)
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros([0, *SHAPE], np.float32), np.zeros([0], np.int64))).batch(2)
    with pytest.raises(ValueError, match="empty"):
        probe.extract_features(loaded, empty, verbose=0)


def test_finetuning_reduces_loss(tmp_path):
    keras.utils.set_random_seed(1)
    enc = keras.Sequential([keras.Input((10,)), keras.layers.Dense(8, activation="tanh"),
                            keras.layers.BatchNormalization()], name="enc")
    path = str(tmp_path / "sm")
    export.export_encoder(enc, None, path, (10,))
    x, y = _blobs(256, 5, sep=1.0)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=0).batch(32)
    xt, yt = _blobs(128, 6, sep=1.0)
    test = tf.data.Dataset.from_tensor_slices((xt, yt)).batch(64)

    result = probe.finetune(path, train, test, 3, epochs=4, learning_rate=1e-2,
                            encoder_lr_scale=0.1, verbose=0, min_steps=0)
    assert result["epochs"] == 4
    assert result["test_loss"] < 0.7 * result["initial_test_loss"]
    assert result["train_loss"][-1] < result["train_loss"][0]
    assert result["top1"] > 0.6                      # chance is 1/3
    assert result["encoder_learning_rate"] == pytest.approx(1e-3)


def test_finetune_model_updates_encoder_at_smaller_rate(tmp_path):
    keras.utils.set_random_seed(2)
    enc = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="enc")
    path = str(tmp_path / "sm")
    export.export_encoder(enc, None, path, (4,))
    model = probe.FineTuneClassifier(path, 2, encoder_lr_scale=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = np.array([0, 1] * 4)
    model(x)
    enc_before = [v.numpy().copy() for v in model.encoder.trainable_weights]
    head_before = [v.numpy().copy() for v in model.classifier.trainable_weights]
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
    grads = tape.gradient(loss, model.encoder.trainable_weights +
                          model.classifier.trainable_weights)
    model.train_on_batch(x, y)
    n_enc = len(enc_before)
    # Plain SGD: delta = -lr * grad, with lr 0.05 for the encoder and 0.5 for the head.
    for before, v, g in zip(enc_before, model.encoder.trainable_weights, grads[:n_enc]):
        np.testing.assert_allclose(v.numpy() - before, -0.05 * g.numpy(), atol=1e-6)
    for before, v, g in zip(head_before, model.classifier.trainable_weights, grads[n_enc:]):
        np.testing.assert_allclose(v.numpy() - before, -0.5 * g.numpy(), atol=1e-6)


# ----------------------------------------------------------------------------- probe data

def test_npz_probe_data(tmp_path):
    x, y = _blobs(30, 0)
    np.savez(tmp_path / "d.npz", x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:])
    train, test, c = probe_data.probe_datasets(f"npz:{tmp_path / 'd.npz'}", batch_size=8)
    assert c == int(y.max()) + 1
    got = np.concatenate([b[0].numpy() for b in train])
    np.testing.assert_array_equal(got, x[:20])
    np.savez(tmp_path / "e.npz", x_train=x[:0], y_train=y[:0], x_test=x, y_test=y)
    with pytest.raises(ValueError, match="--dataset: the train split .* is empty"):
        probe_data.probe_datasets(str(tmp_path / "e.npz"))
    with pytest.raises(ValueError, match="--dataset: unknown dataset 'nope'"):
        probe_data.probe_datasets("nope")


def test_hltm_export_probe_root_latent(tmp_path):
    """A TreeNet export probed on its own tree: labels are the root latent of fresh samples,
    and the depth-1 activations (functions of leaf pairs) linearly decode the root."""
    from dualssl_tf.data.hltm import HLTM
    from dualssl_tf.models.tree_net import TreeNet
    tree = HLTM(depth=3, num_children=2, delta_lower=0.9, seed=3)
    keras.utils.set_random_seed(0)
    net = TreeNet(depth=3, num_children=2, hid=6)
    net(tf.zeros([1, 8]))
    path = str(tmp_path / "sm")
    card = export.run_model_card({"dataset": "hltm", "seed": 3, "epochs": 0},
                                 metadata={"hltm": tree.to_dict()})
    export.export_encoder(net, None, path, (8,), model_card=card,
                          intermediate_layers=export.default_intermediates(net))
    loaded = export.load_encoder(path)
    assert {"depth_1", "depth_2"} <= set(loaded.output_keys)
    train, test, c = probe_data.probe_datasets("hltm", model_card=loaded.model_card,
                                               batch_size=256, num_train=2000, num_test=1000)
    assert c == 2
    x, latents = tree.sample(1000, seed=[3, probe_data.HLTM_TEST_SEED_OFFSET])
    labels = np.concatenate([b[1].numpy() for b in test])
    np.testing.assert_array_equal(labels, latents[3].numpy().reshape(-1))
    xtr, ytr = probe.extract_features(loaded, train, output="depth_1", verbose=0)
    xte, yte = probe.extract_features(loaded, test, output="depth_1", verbose=0)
    result = probe.linear_probe(xtr, ytr, xte, yte, 2, epochs=20, weight_decays=(1e-3,))
    # Bayes-optimal decoding from all 8 leaves (|rho| >= 0.9) is about 0.9; chance is 0.5.
    assert result["top1"] > 0.6                      # chance is 1/3
