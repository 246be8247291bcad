"""The Keras internals this package relies on, in one place.

Keras 3 has no public API for two things the package needs: building a model under a
strategy from one replica's batch (:class:`OneReplicaSymbolicBuild`, mixed into
``SSLMethod``) and the list of every nested layer (:func:`nested_layers`, for
``analysis.connections``). ``tests/run/test_keras_internals.py`` fails loudly when a Keras
upgrade changes either. A low module (TensorFlow only, nothing of the package), so the
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


def nested_layers(layer):
    """Every layer inside ``layer`` (not itself), at any depth, each once, in Keras' own
    order (``Layer._flatten_layers``: the direct children in tracking order, each followed by
    its own sub-layers, those in reverse tracking order at every level below).

    No public Keras 3.15 API lists these: ``Model.layers`` has the direct children only (a
    Sequential's without its InputLayer), and the sub-layers of a plain ``keras.Layer``
    (e.g. ``LinearProbe``'s Dense) appear in no public attribute.
    """
    return list(layer._flatten_layers(include_self=False, recursive=True))
