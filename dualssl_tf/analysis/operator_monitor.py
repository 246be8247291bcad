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

and, for a loss with Theorem 4's weights xi (a contrastive method's tri, nce, ntxent, cov;
:func:`theorem4_weights`), given the sample's un-augmented base points ``x0`` [M, ...]:

    op_xi_w_norm/<layer>         ||OP_xi vec(W_l)||, xi[i, j] the loss's weight on the
                                 negative pair at the un-augmented distance r0(x0_i, x0_j)
    op_xi_grad_cos/<layer>       cos(-grad_{W_l} L, OP_xi vec(W_l))
    op_xi_residue_share/<layer>  min_{c >= 0} ||-grad - c OP_xi vec(W_l)|| / ||grad||: the
                                 share of the gradient no positive multiple of OP_xi vec(W_l)
                                 explains (Theorem 4's residue share; 0 where it is exact)

Cost per analysed epoch, in passes over the M x A sample (a pass is a forward-mode or a
backward pass): ``2 + 3 B`` per layer (B = ``budget``: the product and residue share one JVP
pass and one VJP pass, each power step is a JVP and a VJP pass, each probe a JVP pass), plus
one backward pass of the method's loss over the M pairs for all layers at once; with
Theorem 4's weights one more VJP pass per layer (the JVP pass is shared) and one forward
pass of the method over the M un-augmented points.

It is called in the callback's cross-replica context. With the encoder's variables
mirrored over R > 1 replicas every JVP and VJP pass is split over them (1/R of the base
points each, :class:`~dualssl_tf.analysis.operator_free.MatrixFreeOperator`); the loss
gradient and Theorem 4's weights run on the first replica. The numbers are one device's up to
the order of float32 sums. The sample is a device tensor and only scalars come back to the
host. It reads the variables and never writes them, never calls the networks in training
mode (no BatchNorm statistics move) and draws nothing from a stateful random generator, so
training is the same with the monitor on or off.

Tracing: the first analysis traces, per layer, one JVP and one VJP function (each a trace of
the encoder) and the loss gradient once; later epochs reuse them. ``one_trace=True`` traces
one VJP function for all layers instead (see the argument).
"""

import time

import numpy as np
import tensorflow as tf

from dualssl_tf.analysis import connections, theorems
from dualssl_tf.analysis.operator_free import LayerVJPs, MatrixFreeOperator
from dualssl_tf.methods import contrastive
from dualssl_tf.monitors.base import EpochMetric

KEYS = ("op_w_norm", "op_grad_cos", "op_residue", "op_top_eig", "op_trace")
#: Theorem 4's keys, logged for a loss with pair weights xi (:func:`theorem4_weights`).
XI_KEYS = ("op_xi_w_norm", "op_xi_grad_cos", "op_xi_residue_share")
#: The losses whose gradient Theorem 4 writes as a weighted covariance plus a residue: the
#: balanced per-anchor losses (Theorem 2) with a weight per negative pair. simp is Theorem 3
#: (xi = 1: OP_xi = OP, the KEYS already say it); nce_batch (one batch-level term) and
#: alpha_cl have no per-pair weight of that form.
THEOREM4_LOSSES = ("tri", "nce", "ntxent", "cov")


def passes_per_epoch(num_layers, budget, weighted=False):
    """Passes over the M x A sample per analysed epoch (the loss gradient counted as one);
    ``weighted``: with Theorem 4's product (one more VJP pass per layer)."""
    return num_layers * (2 + int(weighted) + 3 * int(budget)) + 1


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
      x0: optional [M, ...] un-augmented base points of ``x_aug`` (the distances Theorem 4's
        weights are taken at); without it no ``op_xi_*`` key is logged.
      pair_weights: ``(model, x0) -> xi [M, M]`` float64 or None (no Theorem 4 weights for
        this method); default :func:`theorem4_weights`.
      one_trace: every layer's VJP passes in one traced function
        (:class:`~dualssl_tf.analysis.operator_free.LayerVJPs`: one model trace instead of
        one per layer, one forward per chunk for all layers; power iteration in step). The
        same products, but TensorFlow's graph rewrites (forward ops fused where the backward
        does not need their outputs) differ from the per-layer functions', so float32
        numbers move by ~1e-7 relative; off by default, so logged values stay as they were.

    Example:
      >>> monitor = OperatorMonitor(encoder, ["layer1_0_conv1"], x_aug, budget=2)
      >>> monitor.set_model(method); logs = monitor.compute(0)
    """

    def __init__(self, encoder, layers, x_aug, budget=1, every=1, seed=0, chunk_size=64,
                 loss_fn=None, x0=None, pair_weights=None, one_trace=False):
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
        if x0 is not None:
            x0 = tf.convert_to_tensor(x0)
            if tuple(x0.shape) != (x_aug.shape[0], *x_aug.shape[2:]):
                raise ValueError(f"x0: expected the {x_aug.shape[0]} un-augmented base points "
                                 f"of x_aug, shape {(x_aug.shape[0], *x_aug.shape[2:])}, got "
                                 f"{tuple(x0.shape)}")
        self.x0 = x0
        self._pair_weights = pair_weights or theorem4_weights
        self.one_trace = bool(one_trace)
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
        grads = xi = None
        if self._method() is not None:
            grads = self._grad_fn(self.x_aug[:, 0], self.x_aug[:, 1])
            if self.x0 is not None:
                xi = self._pair_weights(self.model, self.x0)
        ops = [MatrixFreeOperator(self.encoder, var, self.x_aug, output_fn=self._output_fn,
                                  chunk_size=self.chunk_size) for var in self.variables]
        vjps = None
        if self.one_trace:
            # Every layer's VJP passes in one traced function (one model trace, one forward
            # per chunk for all layers); the JVP passes stay per layer (forward mode watches
            # one kernel).
            vjps = LayerVJPs(self.encoder, self.variables, self.x_aug,
                             output_fn=self._output_fn, chunk_size=self.chunk_size)
            jvps = [op.weights_jvp() for op in ops]
            products = vjps([op.vjp_coefficients(d) for op, (d, _) in zip(ops, jvps)])
            residues = [r for _, r in jvps]
            xi_products = (vjps([op.vjp_coefficients(d, xi) for op, (d, _) in zip(ops, jvps)])
                           if xi is not None else None)
        else:
            outs = [op.weights_products(xi) for op in ops]
            products = [out["op_w"] for out in outs]
            residues = [out["residue"] for out in outs]
            xi_products = [out.get("op_xi_w") for out in outs]
        logs, starts = {}, []
        for i, name in enumerate(self.layers):
            product = products[i]
            norm = float(tf.norm(product))
            logs[f"op_w_norm/{name}"] = norm
            logs[f"op_residue/{name}"] = residues[i]
            if grads is not None:
                g = -tf.cast(grads[i], product.dtype)
                denom = max(float(tf.norm(g)) * norm, 1e-300)
                logs[f"op_grad_cos/{name}"] = float(tf.reduce_sum(g * product)) / denom
            if xi is not None:
                logs.update({f"{k}/{name}": v for k, v in
                             theorem4_logs(xi_products[i],
                                           None if grads is None else grads[i]).items()})
            starts.append(product if norm > 0 else None)
        if vjps is not None:
            values = self._power_iteration(ops, vjps, starts, epoch)
        else:
            values = [op.top_eigen(iterations=self.budget, tol=0.0, start=start,
                                   seed=self.seed + epoch)[0] for op, start in zip(ops, starts)]
        for i, name in enumerate(self.layers):
            logs[f"op_top_eig/{name}"] = values[i]
            logs[f"op_trace/{name}"] = ops[i].trace_estimate(
                probes=self.budget, seed=probe_seed(self.seed, epoch, i))[0]
        logs["op_monitor_seconds"] = time.perf_counter() - start
        return logs

    def _power_iteration(self, ops, vjps, starts, epoch):
        """``budget`` power steps on every layer in step: each layer's Rayleigh quotient,
        exactly :meth:`MatrixFreeOperator.top_eigen` (``tol=0``, from ``starts[l]``, else a
        Gaussian start seeded by ``seed + epoch``), its VJPs through ``vjps``."""
        vs = []
        for op, start in zip(ops, starts):
            if start is None:
                start = np.random.default_rng(self.seed + epoch).standard_normal(op.shape)
            v = tf.cast(tf.reshape(tf.convert_to_tensor(start), op.shape), op.dtype)
            vs.append(v / tf.norm(v))
        values = [0.0] * len(ops)
        done = [False] * len(ops)
        for _ in range(self.budget):
            if all(done):
                break
            ws = vjps([op.vjp_coefficients(op.jvp_coefficients(v), centre=False)
                       for op, v in zip(ops, vs)])
            for i, (v, w) in enumerate(zip(vs, ws)):
                if done[i]:
                    continue
                new = float(tf.reduce_sum(v * w))
                norm = tf.norm(w)
                if float(norm) == 0.0:
                    values[i], done[i] = 0.0, True
                    continue
                vs[i] = w / norm
                if abs(new - values[i]) <= 0.0:
                    done[i] = True
                values[i] = new
        return values


def theorem4_logs(op_xi_w, grad):
    """``op_xi_w_norm`` and, given the layer's loss gradient, ``op_xi_grad_cos`` and
    ``op_xi_residue_share`` (float64 arithmetic on the two vectors).

    The share uses the least-squares constant ``c = max(0, <-grad, p> / ||p||^2)``,
    ``p = OP_xi vec(W_l)``, not the theorem's (2, through both towers): the monitor's
    operator is the encoder's output while the loss sees the projector's normalised output,
    and its loss has the sample's in-batch negatives (H = 2M - 2), not Theorem 4's single
    one, so no fixed constant relates the two scales. What is left, ``||-grad - c p||``, is
    the part of the gradient no positive multiple of ``p`` gives: ``sqrt(1 - cos^2)`` for
    ``cos >= 0``, 1 for ``cos <= 0`` (training against ``p`` is not explained by it).
    """
    p = np.ravel(np.asarray(op_xi_w, np.float64))
    out = {"op_xi_w_norm": float(np.linalg.norm(p))}
    if grad is None:
        return out
    g = -np.ravel(np.asarray(grad, np.float64))
    gg, pp = float(np.linalg.norm(g)), float(p @ p)
    out["op_xi_grad_cos"] = float(g @ p) / max(gg * np.sqrt(pp), 1e-300)
    c = max(float(g @ p) / pp, 0.0) if pp > 0 else 0.0
    out["op_xi_residue_share"] = float(np.linalg.norm(g - c * p)) / max(gg, 1e-300)
    return out


def theorem4_weights(model, x0):
    """Theorem 4's weights ``xi`` [M, M] (float64) of a contrastive method's loss, or None.

    ``xi[i, j] = -dL/dr-`` at ``r+ = 0`` and ``r- = r0[i, j] = 1/2 ||z(x0_i) - z(x0_j)||^2``,
    z the method's normalised embedding (what its loss measures) of the un-augmented points,
    one negative (H = 1): the paper's weight (``sigmoid(-r0/tau)/tau`` for ntxent and cov,
    ``sigmoid(-r0/tau)`` for nce, ``sigmoid((margin - r0)/tau)`` for tri), read from the loss
    by autodiff (:func:`analysis.theorems.loss_weights`). Taken at the un-augmented distances,
    as the theorem states it, so the weights depend on the pair of base points only (what
    makes OP_xi a weighted covariance) and carry none of the augmentation's spread. None for
    another method or loss (:data:`THEOREM4_LOSSES`): BYOL, SimSiam, DINO, Barlow Twins and
    VICReg have no negatives; MoCo's keys come from a momentum encoder, not the dual tower
    the theorem assumes.
    """
    name = getattr(model, "loss_name", None)
    if name not in THEOREM4_LOSSES or not hasattr(model, "embed"):
        return None
    z = tf.cast(model.embed(x0, training=False), tf.float64)
    r0 = theorems.half_sq_dist(z[:, None], z[None]).numpy()
    per_anchor = contrastive.loss_fn(name, model.temperature, model.margin, model.beta)
    return theorems.loss_weights(per_anchor, r0)


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
