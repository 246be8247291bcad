"""Connections K_l(x) of Tian et al. (2020), Definition 1, by vectorised autodiff.

The connection of layer ``l`` at input ``x`` is defined through its transpose::

    K_l(x)^T = d f_L(x) / d vec(W_l)          shape [n_L, P],  P = number of entries of W_l

i.e. the per-example Jacobian of the network output with respect to that layer's kernel
(docs/theory.md section 3). For a fully connected layer this equals ``f_{l-1}(x) (x) J_l(x)^T``;
the autodiff form covers convolutions, grouped layers and in fact any variable.

Everything here *reads* a model: nothing is imported by training code.

Computation: one ``tf.vectorized_map`` over examples, each computing the (small)
``n_L x P`` Jacobian of its own output. pfor turns that into batched ops, so the cost is
linear in the batch (a plain ``tape.jacobian`` of a [B, n_L] output w.r.t. a shared kernel
would be quadratic in B, since every output row back-propagates through the whole batch).
"""

import types
import weakref

import numpy as np
import tensorflow as tf
import keras

from dualssl_tf import keras_internals


def _iter_layers(model):
    """All sub-layers of ``model`` (recursively, nested models and layers included)."""
    return keras_internals.nested_layers(model)   # the one Keras-internals shim


def find_layer(model, layer):
    """Resolves ``layer`` (a name or a Layer) to a layer of ``model``.

    Raises:
      ValueError naming the ``layer`` argument when the model has no such layer.
    """
    if isinstance(layer, keras.layers.Layer):
        return layer
    for candidate in _iter_layers(model):
        if candidate.name == layer:
            return candidate
    names = [c.name for c in _iter_layers(model) if getattr(c, "kernel", None) is not None]
    raise ValueError(f"layer: no layer named {layer!r} in model {model.name!r}; layers with a "
                     f"kernel: {', '.join(names) or '(none)'}")


def kernel_layer_names(model):
    """Names of every (nested) layer of ``model`` that owns a ``kernel`` variable."""
    return [c.name for c in _iter_layers(model) if _kernel_of(c) is not None]


def _kernel_of(layer):
    try:
        kernel = getattr(layer, "kernel", None)
    except (AttributeError, ValueError):  # unbuilt layers raise on .kernel
        return None
    return kernel if isinstance(kernel, (tf.Variable, keras.Variable)) else None


def resolve_variable(model, layer):
    """The weight ``W_l`` a connection is taken with respect to.

    Args:
      model: a (built) Keras model.
      layer: a layer name, a Layer (its ``kernel`` is used), or a variable itself.
    Returns:
      The variable (``keras.Variable`` or ``tf.Variable``).
    Raises:
      ValueError naming the ``layer`` argument for unknown layers or layers without kernel.
    """
    if isinstance(layer, (tf.Variable, keras.Variable)):
        return layer
    found = find_layer(model, layer)
    kernel = _kernel_of(found)
    if kernel is None:
        raise ValueError(f"layer: layer {found.name!r} ({type(found).__name__}) has no kernel; "
                         f"pick one of {', '.join(kernel_layer_names(model)) or '(none)'}")
    return kernel


def group_shape(variable, index):
    """``(index, shape)`` of the weight a connection is taken for: the whole ``variable``
    (index None) or its group ``variable[index]`` (a grouped kernel's leading axis).

    Raises ValueError naming ``index`` when it is out of range."""
    shape = tuple(variable.shape)
    if index is None:
        return None, shape
    if not shape or not 0 <= int(index) < shape[0]:
        raise ValueError(f"index: {index} is out of range for a weight of shape {shape}")
    return int(index), shape[1:]


def _tf_var(variable):
    """The underlying tf.Variable (keras.Variable wraps one as ``.value``); of a variable
    mirrored over replicas, the first replica's copy: what reads in cross-replica context
    (a Keras callback) see, and one that autodiff can differentiate there."""
    variable = variable.value if isinstance(variable, keras.Variable) else variable
    if isinstance(variable, tf.distribute.DistributedValues):
        variable = variable.distribute_strategy.experimental_local_results(variable)[0]
    return variable


# The traced connection functions of the model analysed last: {key: tf.function}. One
# model at a time, so that a long process (the test suite) does not keep every model.
_TRACE_CACHE = {"model": None, "functions": {}}


def _named(fn, name):
    """``fn`` with a code object of its own, named ``name``. tf.function's retracing
    detector groups calls by code object, so without this the first trace of each layer's
    function counts as a retrace of one function ("5 out of the last 6 calls ...")."""
    name = "".join(c if c.isalnum() else "_" for c in name)
    try:
        code = fn.__code__.replace(co_name=name, co_qualname=name)
    except TypeError:  # Python < 3.11: no co_qualname
        code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _traced(model, key, python_fn, name):
    """``tf.function(python_fn)`` once per key for ``model``; later calls reuse it, so the
    repeated checks of one layer trace once per input shape (``reduce_retracing``)."""
    def make():
        return tf.function(_named(python_fn, name), reduce_retracing=True)

    cached = _TRACE_CACHE["model"]
    if cached is None or cached() is not model:
        try:
            _TRACE_CACHE["model"] = weakref.ref(model)
        except TypeError:  # not weak-referenceable: no caching
            return make()
        _TRACE_CACHE["functions"] = {}
    functions = _TRACE_CACHE["functions"]
    if key not in functions:
        functions[key] = make()
    return functions[key]


class Connection:
    """Reusable connection function ``x [B, ...] -> K_l(x)^T [B, n_L, P]``.

    Building it once and calling it many times (e.g. per epoch in a callback) reuses one
    traced ``tf.function``.

    Args:
      model: a built Keras model.
      layer: layer name, Layer or variable (see :func:`resolve_variable`).
      output_fn: ``x [B, ...] -> f_L [B, ...]``; default ``model(x, training=False)``.
        Outputs with more than one feature axis are flattened to ``n_L``.
      index: optional int; take the Jacobian w.r.t. ``W_l[index]`` only (one group of a
        GroupedDense kernel ``[groups, fan_in, hid]``), so ``P = W_l[index].size``.
      chunk_size: examples per vectorised call (bounds memory: ``chunk x n_L x |W_l|``).

    Example:
      >>> conn = Connection(model, "dense_1")
      >>> k_t = conn(x)          # [B, n_L, P]
    """

    def __init__(self, model, layer, output_fn=None, index=None, chunk_size=512):
        self.model = model
        self.variable = resolve_variable(model, layer)
        index, shape = group_shape(self.variable, index)
        self.index = index
        self.num_params = int(np.prod(shape))
        self.chunk_size = int(chunk_size)
        self.output_fn = output_fn or (lambda x: model(x, training=False))
        var = _tf_var(self.variable)

        def one(xb):
            with tf.GradientTape() as tape:
                y = tf.reshape(self.output_fn(xb[None]), [-1])           # [n_L]
            jac = tape.jacobian(y, var, experimental_use_pfor=True)      # [n_L, *W.shape]
            if self.index is not None:
                jac = jac[:, self.index]
            return tf.reshape(jac, [tf.shape(y)[0], self.num_params])

        # One traced function per (model, weight, group, output_fn): building a Connection
        # again for the same layer (each theorem check does) reuses its trace.
        self._fn = _traced(model, ("connection", id(var), index, output_fn),
                           lambda x: tf.vectorized_map(one, x),
                           f"connection_{var.name}" + ("" if index is None else f"_{index}"))

    def __call__(self, x):
        """x: [B, ...] -> K_l(x)^T as a tf.Tensor [B, n_L, P] in the variable's dtype."""
        x = tf.convert_to_tensor(x)
        n = int(x.shape[0])
        parts = [self._fn(x[s:s + self.chunk_size]) for s in range(0, n, self.chunk_size)]
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)

    def weight_vector(self):
        """vec(W_l) (or vec(W_l[index])) as a tf.Tensor [P], same ordering as the Jacobian."""
        w = tf.convert_to_tensor(self.variable)
        if self.index is not None:
            w = w[self.index]
        return tf.reshape(w, [-1])


class MultiConnection:
    """Connections of several layers from one forward pass per example.

    ``x [B, ...] -> [K_{l_1}(x)^T [B, n_L, P_1], ...]``; cheaper than one
    :class:`Connection` per layer when many layers are monitored (the per-epoch callback).

    Args:
      model, output_fn, chunk_size: as :class:`Connection`.
      layers: list of layer names / Layers / variables.

    Example:
      >>> conns = MultiConnection(net, ["depth_1", "depth_2"])
      >>> k1, k2 = conns(x)
    """

    def __init__(self, model, layers, output_fn=None, chunk_size=512):
        self.variables = [resolve_variable(model, layer) for layer in layers]
        self.num_params = [int(np.prod(v.shape)) for v in self.variables]
        self.chunk_size = int(chunk_size)
        self.output_fn = output_fn or (lambda x: model(x, training=False))
        tvars = [_tf_var(v) for v in self.variables]

        def one(xb):
            with tf.GradientTape() as tape:
                y = tf.reshape(self.output_fn(xb[None]), [-1])
            jacs = tape.jacobian(y, tvars, experimental_use_pfor=True)
            return [tf.reshape(j, [tf.shape(y)[0], p]) for j, p in zip(jacs, self.num_params)]

        #: graph-mode ``x -> list of [B, n_L, P_i]`` (usable inside another tf.function).
        self.graph_fn = lambda x: tf.vectorized_map(one, x)
        self._fn = _traced(model, ("multi", tuple(id(v) for v in tvars), output_fn),
                           self.graph_fn, "connections_" + "_".join(v.name for v in tvars))

    def __call__(self, x):
        """x: [B, ...] -> list of tf.Tensor [B, n_L, P_i]."""
        x = tf.convert_to_tensor(x)
        n = int(x.shape[0])
        parts = [self._fn(x[s:s + self.chunk_size]) for s in range(0, n, self.chunk_size)]
        return [tf.concat([p[i] for p in parts], axis=0) for i in range(len(self.variables))]


def connection(model, layer, x, output_fn=None, index=None, chunk_size=512):
    """``K_l(x)^T = d f_L(x) / d vec(W_l)``, per example, vectorised.

    Args:
      model: a built Keras model.
      layer: layer name, Layer or variable.
      x: [B, ...] inputs.
      output_fn: ``x -> f_L``; default ``model(x, training=False)``.
      index: optional group index into the first axis of ``W_l``.
      chunk_size: examples per vectorised call.
    Returns:
      tf.Tensor [B, n_L, P].
    """
    return Connection(model, layer, output_fn, index, chunk_size)(x)


def reversibility_residual(model, layer, x, output_fn=None):
    """``max |f_L(x) - K_l(x)^T vec(W_l)|`` over the batch and output units.

    Zero (to rounding) for bias-free ReLU / leaky-ReLU / linear networks, for every layer:
    the output is positively homogeneous of degree one in each layer's weights, so Euler's
    identity gives ``f_L = (d f_L / d W_l) W_l``. Biases above layer ``l`` break it.

    Args: as :func:`connection` (the whole variable is used).
    Returns:
      Python float.
    """
    conn = Connection(model, layer, output_fn)
    k_t = conn(x)
    f = tf.reshape(conn.output_fn(tf.convert_to_tensor(x)), [k_t.shape[0], -1])
    recon = tf.einsum("bnp,p->bn", k_t, tf.cast(conn.weight_vector(), k_t.dtype))
    return float(tf.reduce_max(tf.abs(tf.cast(f, k_t.dtype) - recon)))
