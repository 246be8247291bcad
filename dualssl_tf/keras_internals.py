"""The Keras internals this package relies on, in one place.

Keras 3 has no public API for three things the package needs: building a model under a
strategy from one replica's batch (:class:`OneReplicaSymbolicBuild`, mixed into
``SSLMethod``), a train function that runs several steps per call on several replicas
(:class:`ReplicaStepLoop`, mixed into ``SSLMethod``: Keras' own fails there,
keras-team/keras#19246) and the list of every nested layer (:func:`nested_layers`, for
``analysis.connections``). ``tests/run/test_keras_internals.py`` fails loudly when a Keras
upgrade changes any of them. A low module (TensorFlow only, nothing of the package), so the
methods can use it without importing ``dualssl_tf.run``.
"""

import tensorflow as tf


# -- Keras internals (the one place this package relies on them) -----------------------------
#
# Keras 3.15 has no public hook for how ``fit`` builds a model under a strategy: it calls
# ``Model._maybe_symbolic_build(iterator=..., data_batch=...)``, which pulls one batch from
# its epoch iterator (yielding ``(begin_step, end_step, iterator)`` tuples) and
# ``strategy.reduce``s it. MultiWorkerMirroredStrategy cannot reduce a dict of per-replica
# tensors, so the methods override that method (below) to build from one replica's batch.
# ``tests/run/test_keras_internals.py::test_keras_internals_still_match`` fails loudly when a
# Keras upgrade changes the signature or the iterator's tuples this relies on.
KERAS_SYMBOLIC_BUILD = "keras.Model._maybe_symbolic_build(self, iterator=None, data_batch=None)"
# Nor a public list of every layer nested in a model (:func:`nested_layers`, for
# analysis.connections); ``tests/run/test_keras_internals.py::test_nested_layers_still_match``
# pins what it returns.
KERAS_FLATTEN_LAYERS = "keras.Layer._flatten_layers(self, include_self=True, recursive=True)"
# Nor a public way to change the function ``fit`` calls per execution: ``fit`` calls
# ``make_train_function()`` once, which sets ``self.train_function``, then
# ``logs = self.train_function(iterator)`` once per ``steps_per_execution`` steps (the
# distributed iterator of its data); ``evaluate`` the same with ``make_test_function`` and
# ``test_function``. :class:`ReplicaStepLoop` overrides both makers; it reduces a step's
# per-replica logs with Keras' own ``reduce_per_replica`` (what Keras' function does,
# so the logs are those of steps_per_execution=1). ``tests/run/test_keras_internals.py::
# test_train_function_still_matches`` pins the signatures and calls, and tests/run/
# test_replica_step_loop.py fails when Keras' own function stops failing (then the loop can go).
KERAS_TRAIN_FUNCTION = "keras.Model.make_train_function(self, force=False)"
KERAS_TEST_FUNCTION = "keras.Model.make_test_function(self, force=False)"
KERAS_REDUCE_PER_REPLICA = ("keras.src.backend.tensorflow.trainer.reduce_per_replica("
                            "values, strategy, reduction)")


class OneReplicaSymbolicBuild:
    """Mixin for ``keras.Model`` subclasses: ``fit`` under a strategy builds the model from
    one replica's batch instead of a cross-replica reduce (which multi-worker runs cannot
    do for dict batches). Shapes are the same; no collective runs."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0],
                    next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


class ReplicaStepLoop:
    """Mixin for ``keras.Model`` subclasses: ``steps_per_execution`` > 1 on several replicas
    of a mirrored or multi-worker strategy runs through a train function of its own.

    Why: Keras 3.15's function (``multi_step_on_iterator`` in
    keras/src/backend/tensorflow/trainer.py) runs each step in a ``tf.cond`` (inside a
    ``tf.while_loop``) that calls a nested ``tf.function`` calling ``strategy.run``. With more
    than one replica a value captured inside that cond branch is left as an unfed
    placeholder: every call fails with "You must feed a value for placeholder tensor
    ...multi_step_on_iterator" (keras-team/keras#19246). Measured: 2 mirrored replicas and
    2 multi-worker workers of one device each fail, one mirrored replica works, and a plain
    ``keras.Sequential`` with ``loss="mse"`` fails the same way (nothing in the package's
    step causes it); ``strategy.run`` in a nested function inside a ``tf.cond`` alone, no
    loop, fails too, and without the nesting or without the cond it works. The step must
    talk across replicas: a plain model's ``evaluate`` runs, but the methods' test step
    (its all-reduces and all-gathers) fails like any train step, so ``evaluate`` gets the
    loop too.

    The loop here has no cond around the step: the first step, then a ``tf.while_loop`` of
    the others while the iterator has data (the cond only picks the next element, as Keras'
    does, so no element past the execution is read). The step is the same nested
    ``tf.function`` of ``strategy.run(train_step)`` with the logs reduced as Keras reduces
    them, so an execution of N steps is N steps of ``steps_per_execution=1`` up to float32
    rounding (grappler optimises the loop body apart from the top-level step; often bit for
    bit, see docs/distributed.md). Not N unrolled calls: bit-exact, but graph optimisation
    then grows with N (docs/distributed.md).
    Everything else keeps Keras' own function: one device, one replica,
    ``steps_per_execution=1``, eager runs, and TPUStrategy (its replicas compile into one
    XLA program, where ``steps_per_execution`` matters most; not reproducible here).
    """

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        if self._keras_loop_serves():
            return super().make_train_function(force=force)
        self.train_function = self._own_loop(self.train_step)

    def make_test_function(self, force=False):
        if self.test_function is not None and not force:
            return self.test_function
        if self._keras_loop_serves():
            return super().make_test_function(force=force)
        self.test_function = self._own_loop(self.test_step)

    def _keras_loop_serves(self):
        """Whether Keras' own function runs this model: one step per execution, eager,
        one replica, or TPUStrategy."""
        strategy = self.distribute_strategy
        return (int(self.steps_per_execution) == 1 or self.run_eagerly
                or strategy.num_replicas_in_sync == 1
                or isinstance(strategy, tf.distribute.TPUStrategy))

    def _own_loop(self, step_function):
        return replica_step_loop(step_function, self.distribute_strategy,
                                 int(self.steps_per_execution),
                                 jit_compile=bool(self.jit_compile))


def replica_step_loop(step_function, strategy, steps, jit_compile=False):
    """A ``fit`` train (``evaluate`` test) function: ``iterator -> logs`` of the last of up
    to ``steps`` steps
    (fewer when the iterator runs out; ``tf.errors.OutOfRangeError``, which ``fit`` reads as
    the end of the data, when it has none; ``train_on_batch``'s generator of one batch:
    that one step).

    ``step_function``: the model's ``train_step`` (``test_step``), ``batch -> {name:
    scalar}``, run on every replica by ``strategy.run``; ``iterator``: a
    ``tf.distribute.DistributedIterator``.
    """
    from keras.src.backend.tensorflow.trainer import reduce_per_replica

    @tf.autograph.experimental.do_not_convert
    def one_step(batch):
        return reduce_per_replica(strategy.run(step_function, args=(batch,)), strategy,
                                  reduction="auto")

    one_step = tf.function(one_step, reduce_retracing=True, jit_compile=jit_compile)

    @tf.autograph.experimental.do_not_convert
    def multi_step(iterator):
        logs = one_step(iterator.get_next())

        def more(done, logs, batch):
            return tf.logical_and(done < steps, batch.has_value())

        def step(done, logs, batch):
            logs = one_step(batch.get_value())
            # The next element only when another step follows: the next execution starts
            # where this one ended.
            batch = tf.cond(done + 1 < steps, iterator.get_next_as_optional, lambda: batch)
            return done + 1, logs, batch

        _, logs, _ = tf.while_loop(more, step,
                                   [tf.constant(1), logs, iterator.get_next_as_optional()])
        return logs

    multi_step = tf.function(multi_step, reduce_retracing=True)

    def function(iterator):
        if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
            return multi_step(iterator)
        for _, batch in zip(range(steps), iterator):  # train_on_batch's one-batch generator
            logs = one_step(batch)
        return logs

    return function


def nested_layers(layer):
    """Every layer inside ``layer`` (not itself), at any depth, each once, in Keras' own
    order (``Layer._flatten_layers``: the direct children in tracking order, each followed by
    its own sub-layers, those in reverse tracking order at every level below).

    No public Keras 3.15 API lists these: ``Model.layers`` has the direct children only (a
    Sequential's without its InputLayer), and the sub-layers of a plain ``keras.Layer``
    (e.g. ``LinearProbe``'s Dense) appear in no public attribute.
    """
    return list(layer._flatten_layers(include_self=False, recursive=True))
