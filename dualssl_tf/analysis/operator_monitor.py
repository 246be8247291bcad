"""Per-epoch covariance-operator monitor for any encoder, matrix-free (``--analysis_every``
on image tasks; docs/theory.md section 3, "The per-epoch monitor").

For each chosen Dense/Conv layer l it logs, into Keras' epoch logs (hence metrics.jsonl and
TensorBoard), from a fixed sample ``x_aug`` [M, A, ...] of held-out base points x
augmentations:

    op_w_norm/<layer>    ||OP_l vec(W_l)||                       (exact on the sample)
    op_grad_cos/<layer>  cos(-grad_{W_l} L, OP_l vec(W_l)), L the method's loss on the
                         pairs (x_{i,0}, x_{i,1}) of the sample   (exact on the sample)
    op_residue/<layer>   ||f - K_l^T vec(W_l)|| / ||f||          (exact on the sample)
    op_top_eig/<layer>   lambda_max(OP_l), power iteration from OP_l vec(W_l): a Rayleigh
                         quotient, a lower bound that tightens with --analysis_budget
    op_trace/<layer>     tr OP_l, Hutchinson with --analysis_budget Rademacher probes
                         (unbiased; seeded by epoch and layer)
    op_monitor_seconds   the monitor's wall time for this epoch (its cost)

Cost per analysed epoch, in passes over the M x A sample (a pass is a forward-mode or a
backward pass): ``2 + 3 B`` per layer (B = ``budget``: the product and residue share one JVP
pass and one VJP pass, each power step is a JVP and a VJP pass, each probe a JVP pass), plus
one backward pass of the method's loss over the M pairs for all layers at once.

Everything runs in the callback's cross-replica context on the encoder's variables, so the
numbers do not depend on the number of replicas; the sample is a device tensor and only
scalars come back to the host. It reads the variables and never writes them, never calls
the networks in training mode (no BatchNorm statistics move) and draws nothing from a
stateful random generator, so training is the same with the monitor on or off.
"""

import time

import numpy as np
import tensorflow as tf

from dualssl_tf.analysis import connections
from dualssl_tf.analysis.operator_free import MatrixFreeOperator
from dualssl_tf.monitors.base import EpochMetric

KEYS = ("op_w_norm", "op_grad_cos", "op_residue", "op_top_eig", "op_trace")


def passes_per_epoch(num_layers, budget):
    """Passes over the M x A sample per analysed epoch (the loss gradient counted as one)."""
    return num_layers * (2 + 3 * int(budget)) + 1


class OperatorMonitor(EpochMetric):
    """The matrix-free monitor of ``layers`` of ``encoder`` on a fixed sample.

    Args:
      encoder: the Keras model whose output is ``f_L`` ([B, ...] -> [B, n_L]).
      layers: names of Dense/Conv layers of ``encoder``.
      x_aug: [M, A, ...] fixed sample (M >= 2 base points, A >= 2 augmentations).
      budget: B >= 1, power-iteration steps and Hutchinson probes per layer and epoch.
      every: analyse every ``every`` epochs.
      seed: seed of the Hutchinson probes (epoch e uses ``seed + e``).
      chunk_size: base points per pass.
      loss_fn: optional ``(model, view1, view2) -> scalar`` loss of the method; default
        :func:`method_loss` on the Keras model the callback is attached to. Without a model
        (e.g. before ``set_model``) ``op_grad_cos`` is left out.

    Example:
      >>> monitor = OperatorMonitor(encoder, ["layer1_0_conv1"], x_aug, budget=2)
      >>> monitor.set_model(method); logs = monitor.compute(0)
    """

    def __init__(self, encoder, layers, x_aug, budget=1, every=1, seed=0, chunk_size=64,
                 loss_fn=None):
        super().__init__()
        if every < 1:
            raise ValueError(f"every: must be >= 1, got {every}")
        if int(budget) < 1:
            raise ValueError(f"budget: must be >= 1, got {budget}")
        x_aug = tf.convert_to_tensor(x_aug)
        if x_aug.shape.rank is None or x_aug.shape.rank < 3 or x_aug.shape[1] < 2:
            raise ValueError(f"x_aug: expected [M, A >= 2, ...], got shape {x_aug.shape}")
        self.encoder = encoder
        self.layers = list(layers)
        self.variables = [connections.resolve_variable(encoder, name) for name in self.layers]
        # The tf.Variables themselves (a replica's copy of a mirrored one): a
        # keras.Variable over a MirroredVariable has no handle in cross-replica context.
        self._tf_vars = [connections._tf_var(v) for v in self.variables]
        self.x_aug = x_aug
        self.budget = int(budget)
        self.every = int(every)
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)
        self._loss_fn = loss_fn or method_loss
        # One output function for every epoch: the operators' traced products are cached
        # by it, so each layer traces once per run.
        self._output_fn = lambda x: encoder(x, training=False)
        self._grad_fn = tf.function(self._loss_gradients, reduce_retracing=True)

    def _loss_gradients(self, view1, view2):
        with tf.GradientTape() as tape:
            loss = self._loss_fn(self.model, view1, view2)
        return tape.gradient(loss, self._tf_vars,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def _method(self):
        """The Keras model the callback is attached to, or None before ``set_model``."""
        return getattr(self, "_model", None)

    def compute(self, epoch=0):
        start = time.perf_counter()
        grads = None
        if self._method() is not None:
            grads = self._grad_fn(self.x_aug[:, 0], self.x_aug[:, 1])
        logs = {}
        for i, name in enumerate(self.layers):
            op = MatrixFreeOperator(self.encoder, self.variables[i], self.x_aug,
                                    output_fn=self._output_fn, chunk_size=self.chunk_size)
            product, residue = op.weights_product_and_residue()
            norm = float(tf.norm(product))
            logs[f"op_w_norm/{name}"] = norm
            logs[f"op_residue/{name}"] = residue
            if grads is not None:
                g = -tf.cast(grads[i], product.dtype)
                denom = max(float(tf.norm(g)) * norm, 1e-300)
                logs[f"op_grad_cos/{name}"] = float(tf.reduce_sum(g * product)) / denom
            start_vec = product if norm > 0 else None
            value, _, _ = op.top_eigen(iterations=self.budget, tol=0.0, start=start_vec,
                                       seed=self.seed + epoch)
            logs[f"op_top_eig/{name}"] = value
            logs[f"op_trace/{name}"] = op.trace_estimate(
                probes=self.budget, seed=probe_seed(self.seed, epoch, i))[0]
        logs["op_monitor_seconds"] = time.perf_counter() - start
        return logs


def probe_seed(seed, epoch, layer_index):
    """The Hutchinson probes' seed of one layer (its index in ``layers``) and epoch."""
    return int(np.random.default_rng([seed, epoch, layer_index]).integers(2**31))


def method_loss(model, view1, view2):
    """The method's loss on pairs ``(view1, view2)`` [N, ...], the networks in inference
    mode: the mean of ``per_example_loss`` or the ``batch_loss`` (in cross-replica context
    the global-batch helpers are the plain reductions). Float32 scalar."""
    batch = {"view1": view1, "view2": view2}
    outputs = model.forward(batch, training=False)
    if model.uses_batch_loss():
        loss, _ = model.batch_loss(batch, outputs)
        return tf.cast(loss, tf.float32)
    per_example, _ = model.per_example_loss(batch, outputs)
    return tf.reduce_mean(tf.cast(per_example, tf.float32))


def default_layers(encoder):
    """One kernel layer per ResNet stage (``layer<s>_0_conv1``); for another encoder up to
    four of its kernel layers, evenly spaced from first to last."""
    names = connections.kernel_layer_names(encoder)
    stages = [n for n in names if n.startswith("layer") and n.endswith("_0_conv1")]
    if stages:
        return stages
    if len(names) <= 4:
        return names
    return [names[int(round(k))] for k in np.linspace(0, len(names) - 1, 4)]
