"""Probe data by name: npz files and an HLTM export's own tree (root-latent labels)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.evaluation import data, export, features, linear
from tests.evaluation.common import blobs


def test_npz_probe_data(tmp_path):
    x, y = blobs(30, 0)
    np.savez(tmp_path / "d.npz", x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:])
    train, test, c = data.probe_datasets(f"npz:{tmp_path / 'd.npz'}", batch_size=8)
    assert c == int(y.max()) + 1
    got = np.concatenate([b[0].numpy() for b in train])
    np.testing.assert_array_equal(got, x[:20])
    np.savez(tmp_path / "e.npz", x_train=x[:0], y_train=y[:0], x_test=x, y_test=y)
    with pytest.raises(ValueError, match="--dataset: the train split .* is empty"):
        data.probe_datasets(str(tmp_path / "e.npz"))
    with pytest.raises(ValueError, match="--dataset: unknown dataset 'nope'"):
        data.probe_datasets("nope")


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
    train, test, c = data.probe_datasets("hltm", model_card=loaded.model_card,
                                         batch_size=256, num_train=2000, num_test=1000)
    assert c == 2
    x, latents = tree.sample(1000, seed=[3, data.HLTM_TEST_SEED_OFFSET])
    labels = np.concatenate([b[1].numpy() for b in test])
    np.testing.assert_array_equal(labels, latents[3].numpy().reshape(-1))
    xtr, ytr = features.extract_features(loaded, train, output="depth_1", verbose=0)
    xte, yte = features.extract_features(loaded, test, output="depth_1", verbose=0)
    result = linear.linear_probe(xtr, ytr, xte, yte, 2, weight_decays=(1e-3,))
    # Bayes-optimal decoding from all 8 leaves (|rho| >= 0.9) is about 0.9; chance is 0.5.
    assert result["top1"] > 0.6                      # chance is 1/3
