"""Progress bars with totals (issue 13, part 3): an evaluation pass over image data whose
labelled count is known shows N/N (not N/Unknown), and the next message starts on its own
line."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf.data.pipeline import eval_dataset
from dualssl_tf.data.sources.base import ImageSource
from dualssl_tf.evaluation import export, features

SHAPE = (8, 8, 3)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    inp = keras.Input(SHAPE)
    enc = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(2, 3, padding="same")(inp)))
    path = str(tmp_path_factory.mktemp("progress") / "saved_model")
    export.export_encoder(enc, None, path, SHAPE, intermediate_layers=[])
    return export.load_encoder(path)


def _source(num_labelled):
    labels = np.array([0, 1, -1, 2, 0, 1, -1, 2, 1, 0, 2, 1], np.int32)   # 10 labelled
    return ImageSource(
        name="tiny", elements=tf.data.Dataset.from_tensor_slices(
            (np.arange(len(labels), dtype=np.int64), labels)),
        decode=lambda i: tf.fill(SHAPE, tf.cast(i, tf.float32) / 12.0),
        num_examples=len(labels), num_classes=3, num_labelled=num_labelled)


def test_extraction_bar_shows_the_real_total(tiny_export, capsys):
    ds = eval_dataset(_source(10), batch_size=4, image_size=8)
    assert int(ds.cardinality()) == 3   # ceil(10 labelled / 4), known without a pass
    feats, labels = features.extract_features(tiny_export, ds, verbose=1)
    print("next message")
    out = capsys.readouterr().out
    assert len(labels) == 10
    assert "3/3" in out and "Unknown" not in out, out
    assert "\nnext message" in out, out


def test_bar_without_a_total_still_ends_its_line(tiny_export, capsys):
    ds = eval_dataset(_source(None), batch_size=4, image_size=8)
    assert int(ds.cardinality()) < 0
    features.extract_features(tiny_export, ds, verbose=1)
    print("next message")
    out = capsys.readouterr().out
    assert "\nnext message" in out, out


def test_knn_bar_counts_query_blocks_and_keeps_the_votes(capsys):
    from dualssl_tf.evaluation import knn
    rng = np.random.default_rng(0)
    xtr, ytr = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    xq = rng.normal(size=(10, 5))
    quiet = knn.knn_scores(xtr, ytr, xq, 3, k=7, batch_size=4)
    assert capsys.readouterr().out == ""
    shown = knn.knn_scores(xtr, ytr, xq, 3, k=7, batch_size=4, verbose=1)
    print("next message")
    out = capsys.readouterr().out
    assert "3/3" in out and "Unknown" not in out and "\nnext message" in out, out
    np.testing.assert_array_equal(quiet, shown)
