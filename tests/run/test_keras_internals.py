"""The private Keras hooks this package relies on: the shim in dualssl_tf/keras_internals.py,
and ``Optimizer._get_variable_index`` of the optimizers in dualssl_tf/optim/ (Keras' own
subclassing pattern). These tests fail when a Keras upgrade stops calling them, or
answering, the way the package expects."""

import inspect

import keras
import numpy as np
import tensorflow as tf

from dualssl_tf.analysis import connections
from dualssl_tf.methods.contrastive import ContrastiveMethod
from dualssl_tf.models.conv1d import conv1d_encoder
from dualssl_tf.models.tree_net import TreeNet
from dualssl_tf import cross_replica, keras_internals


def test_keras_internals_still_match(monkeypatch):
    params = list(inspect.signature(keras.Model._maybe_symbolic_build).parameters)
    assert params == ["self", "iterator", "data_batch"], (
        f"Keras changed {keras_internals.KERAS_SYMBOLIC_BUILD} (now {params}); update "
        "OneReplicaSymbolicBuild in dualssl_tf/keras_internals.py")
    seen = []
    original = keras_internals.OneReplicaSymbolicBuild._maybe_symbolic_build

    def spy(self, iterator=None, data_batch=None):
        if iterator is not None:
            for item in iterator:
                seen.append(len(item))
                break
        return original(self, iterator=iterator, data_batch=data_batch)

    monkeypatch.setattr(keras_internals.OneReplicaSymbolicBuild, "_maybe_symbolic_build", spy)
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
        "with (begin, end, iterator) items; update dualssl_tf/keras_internals.py")


class _Pair(keras.layers.Layer):
    """A plain Layer holding two sub-layers (no public attribute lists them)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(2, name="first")
        self.second = keras.layers.Dense(2, name="second")

    def call(self, x):
        return self.second(self.first(x))


def test_nested_layers_still_match():
    params = list(inspect.signature(keras.layers.Layer._flatten_layers).parameters)
    assert params == ["self", "include_self", "recursive"], (
        f"Keras changed {keras_internals.KERAS_FLATTEN_LAYERS} (now {params}); update "
        "nested_layers in dualssl_tf/keras_internals.py")
    inner = keras.Sequential([keras.Input((3,), name="x_inner"),
                              keras.layers.Dense(3, name="a"), _Pair(name="pair")],
                             name="inner")
    outer = keras.Sequential([keras.Input((3,), name="x_outer"), inner,
                              keras.layers.Dense(1, name="top")], name="outer")
    outer(np.zeros((2, 3), "float32"))
    # Depth first; the outer model's children in order, every level below in reverse
    # order (what analysis.connections' layer lists, e.g. analyze.py's default layers, are).
    assert [l.name for l in keras_internals.nested_layers(outer)] == [
        "x_outer", "inner", "pair", "second", "first", "a", "x_inner", "top"]
    assert connections.kernel_layer_names(outer) == ["second", "first", "a", "top"]
    # The networks the analysis reads: every kernel, in network order.
    tree = TreeNet(depth=3, num_children=2, hid=4, seed=0)
    tree(np.zeros((2, 8), "float32"))
    assert connections.kernel_layer_names(tree) == ["depth_1", "depth_2", "depth_3"]
    conv = conv1d_encoder(12, filters=4, kernel_size=3)
    assert connections.kernel_layer_names(conv) == [
        l.name for l in conv.layers if getattr(l, "kernel", None) is not None] != []


class _Resolver:
    def __init__(self, spec):
        self.spec = spec

    def cluster_spec(self):
        return tf.train.ClusterSpec(self.spec)


def test_num_workers_from_the_public_cluster_resolver():
    class S:
        cluster_resolver = None
    assert cross_replica.num_workers(S()) == 1
    S.cluster_resolver = _Resolver({"worker": ["a:1", "b:1"], "chief": ["c:1"]})
    assert cross_replica.num_workers(S()) == 3
    S.cluster_resolver = _Resolver({})
    assert cross_replica.num_workers(S()) == 1


def test_optimizer_variable_index_still_matches():
    """``Optimizer._get_variable_index``: the subclassing pattern of Keras' own optimizers
    (SGD's and Adam's ``update_step`` index their slots with it), used by the optimizers
    that keep per-variable decisions by index (optim/lars.py, optim/coupled_decay.py,
    optim/rate_groups.py). It must give each built variable its position, also for the
    per-replica component that ``update_step`` gets under a MirroredStrategy."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        variables = [keras.Variable(np.full((i + 1,), float(i)), name=f"v{i}")
                     for i in range(3)]
        opt = keras.optimizers.SGD(0.1)
        opt.build(variables)
    assert [opt._get_variable_index(v) for v in variables] == [0, 1, 2]
    seen = []

    class Spy(keras.optimizers.SGD):
        def update_step(self, gradient, variable, learning_rate):
            seen.append(self._get_variable_index(variable))
            super().update_step(gradient, variable, learning_rate)

    with strategy.scope():
        spy = Spy(0.1)
        spy.build(variables)

    @tf.function
    def step():
        strategy.run(lambda: spy.apply_gradients(
            [(tf.ones_like(v), v) for v in variables]))

    step()
    assert sorted(seen) == [0, 1, 2], seen


def test_train_function_still_matches():
    """``ReplicaStepLoop`` (keras_internals) replaces the function ``fit`` calls per
    execution, which ``fit`` gets from ``make_train_function()`` and calls as
    ``self.train_function(iterator)`` (``evaluate``: the test function), and reduces a
    step's logs with Keras' own ``reduce_per_replica``. Its run on 2 replicas is
    tests/run/test_replica_step_loop.py; here what it relies on: the signatures, the calls
    in ``fit`` and ``evaluate``, the delegation to Keras' own function where that works,
    and the reduction of a plain tensor."""
    from keras.src.backend.tensorflow import trainer as tf_trainer
    params = list(inspect.signature(keras.Model.make_train_function).parameters)
    assert params == ["self", "force"], (
        f"Keras changed {keras_internals.KERAS_TRAIN_FUNCTION} (now {params}); update "
        "ReplicaStepLoop in dualssl_tf/keras_internals.py")
    params = list(inspect.signature(keras.Model.make_test_function).parameters)
    assert params == ["self", "force"], (
        f"Keras changed {keras_internals.KERAS_TEST_FUNCTION} (now {params})")
    evaluate = inspect.getsource(tf_trainer.TensorFlowTrainer.evaluate)
    assert ("self.make_test_function()" in evaluate
            and "self.test_function(iterator)" in evaluate), (
        "Keras' evaluate no longer calls make_test_function() and test_function(iterator)")
    params = list(inspect.signature(tf_trainer.reduce_per_replica).parameters)
    assert params == ["values", "strategy", "reduction"], (
        f"Keras changed {keras_internals.KERAS_REDUCE_PER_REPLICA} (now {params})")
    fit = inspect.getsource(tf_trainer.TensorFlowTrainer.fit)
    assert "self.make_train_function()" in fit and "self.train_function(iterator)" in fit, (
        "Keras' fit no longer calls make_train_function() and train_function(iterator); "
        "update ReplicaStepLoop in dualssl_tf/keras_internals.py")
    x = tf.constant([1.0, 2.0])
    assert tf_trainer.reduce_per_replica(x, tf.distribute.get_strategy(), "auto") is x
    # One replica (or one step per execution): Keras' own function, untouched.
    enc = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = ContrastiveMethod(enc, loss="ntxent")
    model.compile(optimizer="sgd", steps_per_execution=2)
    model.make_train_function()
    model.make_test_function()
    assert model.train_function.__qualname__.startswith("TensorFlowTrainer._make_function")
    assert model.test_function.__qualname__.startswith("TensorFlowTrainer._make_function")
