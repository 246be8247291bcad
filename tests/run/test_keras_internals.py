"""The one private Keras hook this package relies on (dualssl_tf/run/distribute.py): this
test fails when a Keras upgrade stops calling it the way the shim expects."""

import inspect

import keras
import numpy as np
import tensorflow as tf

from dualssl_tf.methods.contrastive import ContrastiveMethod
from dualssl_tf.run import distribute


def test_keras_internals_still_match(monkeypatch):
    params = list(inspect.signature(keras.Model._maybe_symbolic_build).parameters)
    assert params == ["self", "iterator", "data_batch"], (
        f"Keras changed {distribute.KERAS_SYMBOLIC_BUILD} (now {params}); update "
        "OneReplicaSymbolicBuild in dualssl_tf/run/distribute.py")
    seen = []
    original = distribute.OneReplicaSymbolicBuild._maybe_symbolic_build

    def spy(self, iterator=None, data_batch=None):
        if iterator is not None:
            for item in iterator:
                seen.append(len(item))
                break
        return original(self, iterator=iterator, data_batch=data_batch)

    monkeypatch.setattr(distribute.OneReplicaSymbolicBuild, "_maybe_symbolic_build", spy)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        enc = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model = ContrastiveMethod(enc, loss="ntxent")
        model.compile(optimizer="sgd")
    x = np.random.default_rng(0).random((4, 4)).astype("float32")
    model.fit(tf.data.Dataset.from_tensors({"view1": x, "view2": x + 0.1}), epochs=1,
              verbose=0)
    assert seen == [3], (
        "Keras no longer builds a model under a strategy through _maybe_symbolic_build "
        "with (begin, end, iterator) items; update dualssl_tf/run/distribute.py")


class _Resolver:
    def __init__(self, spec):
        self.spec = spec

    def cluster_spec(self):
        return tf.train.ClusterSpec(self.spec)


def test_num_workers_from_the_public_cluster_resolver():
    class S:
        cluster_resolver = None
    assert distribute.num_workers(S()) == 1
    S.cluster_resolver = _Resolver({"worker": ["a:1", "b:1"], "chief": ["c:1"]})
    assert distribute.num_workers(S()) == 3
    S.cluster_resolver = _Resolver({})
    assert distribute.num_workers(S()) == 1
