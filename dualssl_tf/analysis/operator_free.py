"""Matrix-free products with the covariance operator OP_l of any Keras encoder (docs/theory.md
section 3, "Matrix-free products").

With M base points ``x0_i``, each with A augmentations ``x_{i,a}`` (``x_aug`` [M, A, ...]),
and the package's convention ``K_l(x)^T = d f_L(x) / d vec(W_l)`` ([n_L, P])::

    c_i(u) = 1/A sum_a K_l(x_{i,a})^T u  -  1/M sum_j 1/A sum_a K_l(x_{j,a})^T u   [n_L]
    OP u   = 1/M sum_i Kbar_i c_i(u)  =  1/M sum_i 1/A sum_a K_l(x_{i,a}) c_i(u)     [P]

the same operator as :class:`analysis.covariance.CovarianceOperator`, which forms the
connections. Here ``K^T u`` is a Jacobian-vector product (forward mode,
``tf.autodiff.ForwardAccumulator`` with tangent u on W_l) and ``K c`` a vector-Jacobian product
(one backward pass of ``<f(x), c>``); the connections (P x n_L per point) are never formed.
The VJP side needs no centring: the c_i sum to zero, so the mean connection drops out.

* ``apply(u)``: one JVP pass and one VJP pass over the sample, for any direction u.
* ``apply_weights(shortcut=True)``: ``OP vec(W_l)`` with ``K^T vec(W_l) = f`` (reversibility),
  so ``c_i`` are the centred augmentation-averaged outputs and only the VJP pass is needed.
  Exact only for a network positively homogeneous of degree one in W_l (bias-free ReLU /
  leaky ReLU / linear at and above layer l, no BatchNorm shift, no skip connection around
  l); :meth:`residue` measures it. Whatever the network, the shortcut's vector is the
  L_simp gradient (Theorem 3 without reversibility).
* ``theorem3_alignment()``: ``cos(S_l, OP_l vec(W_l))``, 1 where Theorem 3 holds exactly.
* ``quadratic(u) = u^T OP u = 1/M sum_i ||c_i(u)||^2``: the JVP pass alone.
* Theorem 4's weighted operator, ``xi`` [M, M] (symmetrised) given to :meth:`apply` or
  :meth:`weights_products`: ``OP_xi u = 1/M^2 sum_i Kbar_i (L_xi d(u))_i`` with ``d_i(u)`` the
  augmentation-averaged JVPs and ``L_xi = diag(xi 1) - xi`` their graph Laplacian: the same
  JVP pass, the Laplacian on the [M, n_L] coefficients, and one VJP pass (the rows of
  ``L_xi d`` sum to zero, so the mean connection drops out again).
* ``top_eigen``: power iteration (fixed seed); ``trace_estimate``: Hutchinson with Rademacher
  probes (fixed seed), each probe one JVP pass.

Replicas: when W_l is mirrored over R > 1 replicas (a run under MirroredStrategy or a TPU
strategy, the operator made in cross-replica context, e.g. by a Keras callback), the passes
of ``apply``, ``weights_products``, ``quadratic`` and the estimators are split (``residue``
and the shortcut's outputs run on the first replica's copy): replica r takes base points
``[r s, (r + 1) s)``, ``s = ceil(M / R)`` (the last share padded with copies of the last
point, masked out), runs its share in chunks with its own copy of the weights
(``strategy.run``), and the results meet through
:mod:`dualssl_tf.cross_replica`: the JVP coefficients by ``global_gather`` (point order),
the VJP sums and the residue's sums by ``replica_sum``. Each replica makes 1/R of the
passes; the numbers are one device's up to the order of the sums (float32: a few ulps).

Memory: the sample stays a device tensor and is processed ``chunk_size`` base points (times A
augmentations) at a time; besides one chunk's activations only [M, n_L] coefficients and one
weight-shaped accumulator are alive. The model runs in its own dtype; sums across chunks and
the estimators' vector algebra run in ``dtype`` (default the variable's; ``"float64"`` for a
float32 model sums in float64).
"""

import numpy as np
import tensorflow as tf

import keras

from dualssl_tf import cross_replica
from dualssl_tf.analysis import connections


class MatrixFreeOperator:
    """OP_l of one Dense/Conv kernel (or one group of it) on a fixed sample, matrix-free.

    Args:
      model: a built Keras model (any encoder; BatchNorm, biases, GELU allowed: the products
        are always the exact covariance of the Jacobians, only the reversible shortcut and the
        reading of OP vec(W) as the gradient need the bias-free ReLU form).
      layer: layer name, Layer or variable (see :func:`connections.resolve_variable`).
      x_aug: [M, A, ...] inputs, A augmentations of M >= 2 base points.
      output_fn: ``x [B, ...] -> f_L [B, ...]``; default ``model(x, training=False)``
        (inference BatchNorm, so chunks are independent). Trailing axes flatten to n_L.
      index: optional group index into W_l's first axis (``P = W_l[index].size``).
      chunk_size: base points per pass (``chunk_size * A`` examples per forward).
      dtype: accumulation dtype; default the variable's.

    Raises:
      ValueError naming ``x_aug``, ``M``, ``index`` or ``chunk_size``.

    Example:
      >>> op = MatrixFreeOperator(encoder, "layer2_0_conv1", x_aug, chunk_size=16)
      >>> g = op.apply_weights()                    # OP vec(W), shape of the kernel
      >>> value, vector = op.top_eigen(iterations=50)
      >>> op.residue()                              # ||f - K^T vec W|| / ||f||
    """

    def __init__(self, model, layer, x_aug, output_fn=None, index=None, chunk_size=64,
                 dtype=None):
        self.model = model
        self.variable = connections.resolve_variable(model, layer)
        self._var = connections._tf_var(self.variable)
        index, shape = connections.group_shape(self._var, index)
        self.index = index
        #: shape of u and of OP u (W_l or W_l[index]).
        self.shape = shape
        self.num_params = int(np.prod(shape))
        self.x_aug = tf.convert_to_tensor(x_aug)
        if self.x_aug.shape.rank is None or self.x_aug.shape.rank < 2:
            raise ValueError(f"x_aug: expected [M, A, ...], got shape {self.x_aug.shape}")
        self.num_points, self.num_aug = int(self.x_aug.shape[0]), int(self.x_aug.shape[1])
        if self.num_points < 2:
            raise ValueError("M: need at least 2 base points to estimate a covariance, got "
                             f"{self.num_points}")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.dtype = tf.as_dtype(dtype or self._var.dtype)
        self.output_fn = output_fn or (lambda x: model(x, training=False))
        self._fbar = None
        var, fn, a = self._var, self.output_fn, self.num_aug

        def outputs(x):
            """x [c, A, ...] -> f [c, A, n_L]."""
            flat = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
            return tf.reshape(fn(flat), [tf.shape(x)[0], a, -1])

        def jvp(x, tangent):
            """-> (f, K^T tangent) [c, A, n_L] each; tangent has W_l's full shape."""
            with tf.autodiff.ForwardAccumulator(var, tangent) as acc:
                f = outputs(x)
            return f, acc.jvp(f, unconnected_gradients=tf.UnconnectedGradients.ZERO)

        def vjp(x, coeff):
            """-> sum_{i,a} K(x_{i,a}) coeff_i / A, W_l's full shape; coeff [c, n_L]."""
            with tf.GradientTape() as tape:
                f = outputs(x)
                total = tf.reduce_sum(f * coeff[:, None, :]) / a
            return tape.gradient(total, var, unconnected_gradients=tf.UnconnectedGradients.ZERO)

        key = (id(var), output_fn, a)
        self._outputs = connections._traced(model, ("opfree_f",) + key, outputs,
                                            f"opfree_outputs_{var.name}")
        self._jvp = connections._traced(model, ("opfree_jvp",) + key, jvp,
                                        f"opfree_jvp_{var.name}")
        self._vjp = connections._traced(model, ("opfree_vjp",) + key, vjp,
                                        f"opfree_vjp_{var.name}")
        self._replicas = None
        mirrored = (self.variable.value if isinstance(self.variable, keras.Variable)
                    else self.variable)
        if (isinstance(mirrored, tf.distribute.DistributedValues)
                and mirrored.distribute_strategy.num_replicas_in_sync > 1):
            self._replicas = _ReplicaPasses(model, mirrored, self.x_aug, fn, output_fn,
                                            self.chunk_size, self.dtype, self.index)

    # ------------------------------------------------------------------ passes
    def _chunks(self):
        for s in range(0, self.num_points, self.chunk_size):
            yield self.x_aug[s:s + self.chunk_size]

    def _full_tangent(self, u):
        """u (shape ``self.shape``) -> a tangent of W_l's full shape, in its dtype."""
        u = tf.cast(tf.reshape(tf.convert_to_tensor(u), self.shape), self._var.dtype)
        if self.index is None:
            return u
        return tf.tensor_scatter_nd_update(tf.zeros_like(self._var), [[self.index]], u[None])

    def _pick(self, grad):
        return grad if self.index is None else grad[self.index]

    @staticmethod
    def _centre(d):
        return d - tf.reduce_mean(d, axis=0, keepdims=True)

    def _laplacian(self, d, xi):
        """``(L_xi d) / M`` [M, n_L]: ``h_i = 1/M sum_j xi_ij (d_i - d_j)``, xi symmetrised.

        With :meth:`_vjp_mean`'s 1/M this gives ``OP_xi u = F (L_xi (x) I) F^T u / M^2``
        (docs/theory.md section 3); d need not be centred (``L_xi 1 = 0``)."""
        xi = tf.convert_to_tensor(np.asarray(xi, np.float64))
        if tuple(xi.shape) != (self.num_points,) * 2:
            raise ValueError(f"xi: expected shape ({self.num_points}, {self.num_points}) for "
                             f"M={self.num_points} base points, got {tuple(xi.shape)}")
        xi = tf.cast(0.5 * (xi + tf.transpose(xi)), self.dtype)
        d = tf.cast(d, self.dtype)
        lap = tf.reduce_sum(xi, axis=1, keepdims=True) * d - tf.matmul(xi, d)
        return lap / self.num_points

    def averaged_outputs(self):
        """fbar_i = 1/A sum_a f(x_{i,a}), [M, n_L] in ``dtype`` (computed once)."""
        if self._fbar is None:
            self._fbar = tf.concat([tf.reduce_mean(tf.cast(self._outputs(x), self.dtype), 1)
                                    for x in self._chunks()], 0)
        return self._fbar

    def _coefficients(self, u):
        """c_i(u): the centred, augmentation-averaged JVPs [M, n_L] (one forward-mode pass)."""
        tangent = self._full_tangent(u)
        if self._replicas is not None:
            return self._centre(self._replicas.jvp(tangent)[0])
        d = tf.concat([tf.reduce_mean(tf.cast(self._jvp(x, tangent)[1], self.dtype), 1)
                       for x in self._chunks()], 0)
        return self._centre(d)

    def _vjp_mean(self, coeff):
        """1/M sum_i 1/A sum_a K(x_{i,a}) c_i, shape ``self.shape`` (one backward pass)."""
        coeff = tf.cast(coeff, self._var.dtype)
        if self._replicas is not None:
            return self._replicas.vjp(coeff) / self.num_points
        total = None
        for s, x in zip(range(0, self.num_points, self.chunk_size), self._chunks()):
            g = tf.cast(self._pick(self._vjp(x, coeff[s:s + self.chunk_size])), self.dtype)
            total = g if total is None else total + g
        return total / self.num_points

    # ------------------------------------------------------------------ products
    def apply(self, u, xi=None):
        """OP u for any direction u (shape ``self.shape`` or flat [P]) -> ``self.shape``;
        with ``xi`` [M, M] Theorem 4's weighted ``OP_xi u`` (the operator of
        ``CovarianceOperator.weighted(xi)``, matrix-free).

        One JVP pass (forward mode) and one VJP pass (backward) over the M x A sample.
        """
        c = self._coefficients(u)
        return self._vjp_mean(c if xi is None else self._laplacian(c, xi))

    def apply_weights(self, shortcut=False, xi=None):
        """OP vec(W_l) (with ``xi``: OP_xi vec(W_l)), shape ``self.shape``.

        shortcut: use reversibility ``K^T vec(W_l) = f`` (c_i = fbar_i - fmean, VJP pass
          only). That computes ``S = 1/M sum_i Kbar_i (fbar_i - fmean)``, which for *any*
          network is ``-grad E[L_simp]`` through the anchor tower (half of it through both
          towers, docs/theory.md section 3); it equals OP vec(W_l) only where the network is
          reversible at l (:meth:`residue` 0, or a residue constant across base points, such
          as a last-layer bias). Refused for a group (``index``): Euler's identity holds for
          a whole kernel, not group by group.
        """
        if not shortcut:
            return self.apply(self.weights(), xi)
        if self.index is not None:
            raise ValueError("shortcut: reversibility holds for a whole kernel, not for group "
                             f"{self.index}; use shortcut=False")
        fbar = self.averaged_outputs()
        return self._vjp_mean(self._centre(fbar) if xi is None else self._laplacian(fbar, xi))

    def theorem3_alignment(self):
        """How well Theorem 3 holds at this layer: ``cos(S_l, OP_l vec(W_l))``.

        ``S_l`` is the shortcut vector (``-grad E[L_simp]`` up to the factor of the towers) and
        ``OP_l vec(W_l)`` the general product: 1 when the network is reversible at l. One JVP
        pass and two VJP passes.

        Returns:
          dict of floats: ``cosine``, ``op_w_norm`` (``||OP vec W||``), ``simp_grad_norm``
          (``||S_l||``, the anchor-tower gradient norm of E[L_simp]).
        """
        op_w = self.apply_weights()
        grad = self.apply_weights(shortcut=True)
        a, b = float(tf.norm(op_w)), float(tf.norm(grad))
        cos = float(tf.reduce_sum(op_w * grad)) / max(a * b, 1e-300)
        return {"cosine": cos, "op_w_norm": a, "simp_grad_norm": b}

    def weights_product_and_residue(self):
        """``(OP vec(W_l), residue)`` from one JVP pass and one VJP pass (whole kernel).

        The JVP with tangent ``vec(W_l)`` gives both ``f`` and ``K^T vec(W_l)``, so the
        residue (:meth:`residue`) comes free with the product's coefficients.

        Returns:
          (tensor of shape ``self.shape`` in ``dtype``, Python float).
        """
        out = self.weights_products()
        return out["op_w"], out["residue"]

    def weights_products(self, xi=None):
        """``OP vec(W_l)``, the residue and, with ``xi`` [M, M], Theorem 4's
        ``OP_xi vec(W_l)``, all from one JVP pass (tangent ``vec(W_l)``) and one VJP pass per
        product (whole kernel).

        Returns:
          dict ``op_w`` (shape ``self.shape``, ``dtype``), ``residue`` (float) and, with
          ``xi``, ``op_xi_w``.
        """
        d, residue = self.weights_jvp()
        out = {"op_w": self._vjp_mean(self._centre(d)), "residue": residue}
        if xi is not None:
            out["op_xi_w"] = self._vjp_mean(self._laplacian(d, xi))
        return out

    def weights_jvp(self):
        """The JVP pass of :meth:`weights_products`: ``(d, residue)``, d [M, n_L] the
        augmentation-averaged ``K_l^T vec(W_l)`` (not centred), residue a float."""
        if self.index is not None:
            raise ValueError(f"index: the residue is of a whole kernel, not group {self.index}")
        tangent = tf.convert_to_tensor(self._var)
        if self._replicas is not None:
            d, num, den = self._replicas.jvp(tangent)
            num, den = float(num), float(den)
        else:
            coeffs, num, den = [], 0.0, 0.0
            for x in self._chunks():
                f, kw = self._jvp(x, tangent)
                f, kw = tf.cast(f, self.dtype), tf.cast(kw, self.dtype)
                num += float(tf.reduce_sum(tf.square(f - kw)))
                den += float(tf.reduce_sum(tf.square(f)))
                coeffs.append(tf.reduce_mean(kw, 1))
            d = tf.concat(coeffs, 0)
        return d, float(np.sqrt(num) / max(np.sqrt(den), 1e-300))

    def vjp_coefficients(self, d, xi=None, centre=True):
        """What the VJP pass contracts the connections with, from JVP coefficients d [M, n_L]:
        d centred (``OP``; ``centre=False``: d is already, e.g. :meth:`jvp_coefficients`) or
        ``L_xi d / M`` (``OP_xi``), in W_l's dtype; the product is ``1/M sum_i Kbar_i
        coeff_i`` (:class:`LayerVJPs` for several layers at once)."""
        if xi is not None:
            d = self._laplacian(d, xi)
        elif centre:
            d = self._centre(d)
        return tf.cast(d, self._var.dtype)

    def jvp_coefficients(self, u):
        """``c_i(u)`` [M, n_L] (``dtype``): the centred augmentation-averaged JVPs, one pass."""
        return self._coefficients(u)

    def quadratic(self, u):
        """u^T OP u = 1/M sum_i ||c_i(u)||^2 (JVP pass only). Python float."""
        c = self._coefficients(u)
        return float(tf.reduce_sum(tf.square(c)) / self.num_points)

    def weights(self):
        """W_l (or W_l[index]) in ``dtype``, shape ``self.shape``."""
        return tf.cast(self._pick(tf.convert_to_tensor(self._var)), self.dtype)

    def residue(self):
        """``||f - K_l^T vec(W_l)|| / ||f||`` over every example of the sample (whole kernel).

        0 (to rounding) when the output is positively homogeneous of degree one in W_l
        (bias-free ReLU / leaky ReLU / linear at and above l); biases, BatchNorm's shift and
        moving mean, GELU make it positive. Python float.
        """
        tangent = tf.convert_to_tensor(self._var)
        num = den = 0.0
        for x in self._chunks():
            f, kw = self._jvp(x, tangent)
            f, kw = tf.cast(f, self.dtype), tf.cast(kw, self.dtype)
            num += float(tf.reduce_sum(tf.square(f - kw)))
            den += float(tf.reduce_sum(tf.square(f)))
        return float(np.sqrt(num) / max(np.sqrt(den), 1e-300))

    # ------------------------------------------------------------------ estimators
    def top_eigen(self, iterations=100, tol=1e-10, seed=0, start=None):
        """Top eigenpair by power iteration (OP is PSD, so it converges to lambda_max).

        Starts from ``start`` (any nonzero vector of shape ``self.shape``, e.g. OP vec(W_l),
        which training aligns with the top eigenvector), else from a Gaussian vector drawn
        with ``seed``; stops after ``iterations`` products or when the Rayleigh quotient
        changes by less than ``tol`` relative. The value is a Rayleigh quotient, so a lower
        bound on lambda_max at every step; its error shrinks like
        ``(lambda_2 / lambda_1)^(2k)`` after k products.

        Returns:
          (value: float, vector: unit tensor of shape ``self.shape``, products: int).
        """
        if start is None:
            start = np.random.default_rng(seed).standard_normal(self.shape)
        v = tf.cast(tf.reshape(tf.convert_to_tensor(start), self.shape), self.dtype)
        v = v / tf.norm(v)
        value, k = 0.0, 0
        for k in range(1, int(iterations) + 1):
            w = self.apply(v)
            new = float(tf.reduce_sum(v * w))
            norm = tf.norm(w)
            if float(norm) == 0.0:
                return 0.0, v, k
            v = w / norm
            if abs(new - value) <= tol * abs(new):
                value = new
                break
            value = new
        return value, v, k

    def trace_estimate(self, probes=16, seed=0):
        """Hutchinson's estimate of tr OP with Rademacher probes z (``E[z^T OP z] = tr OP``).

        Each probe is one JVP pass (``z^T OP z = 1/M sum_i ||c_i(z)||^2``).

        Returns:
          (estimate, standard_error): floats; the standard error is the probes' sample
          standard deviation / sqrt(probes) (0 for a single probe).
        """
        if int(probes) < 1:
            raise ValueError(f"probes: must be >= 1, got {probes}")
        rng = np.random.default_rng(seed)
        values = []
        for _ in range(int(probes)):
            z = tf.constant(rng.integers(0, 2, size=self.shape) * 2.0 - 1.0, self.dtype)
            values.append(self.quadratic(z))
        values = np.asarray(values)
        err = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else 0.0
        return float(values.mean()), float(err)


class _ReplicaPasses:
    """The JVP and VJP passes of one :class:`MatrixFreeOperator`, split over the replicas
    of a mirrored W_l (module docstring, "Replicas"). Called in cross-replica context."""

    def __init__(self, model, mirrored, x_aug, fn, output_fn, chunk_size, dtype, index):
        strategy = mirrored.distribute_strategy
        self.strategy = strategy
        replicas = strategy.num_replicas_in_sync
        m, a = int(x_aug.shape[0]), int(x_aug.shape[1])
        share = -(-m // replicas)
        self.num_points, self.share = m, share
        pad = share * replicas - m
        x = tf.concat([x_aug, tf.repeat(x_aug[-1:], pad, axis=0)], 0) if pad else x_aug
        mask = tf.cast(tf.range(share * replicas) < m, dtype)  # padded points: 0
        parts = [(x[r * share:(r + 1) * share], mask[r * share:(r + 1) * share])
                 for r in range(replicas)]
        self._x = strategy.experimental_distribute_values_from_function(
            lambda ctx: parts[ctx.replica_id_in_sync_group][0])
        self._mask = strategy.experimental_distribute_values_from_function(
            lambda ctx: parts[ctx.replica_id_in_sync_group][1])
        starts = range(0, share, chunk_size)

        def outputs(x):
            flat = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
            return tf.reshape(fn(flat), [tf.shape(x)[0], a, -1])

        def jvp_share(x, mask, tangent):
            """-> (d [R s, n_L] every replica's averaged JVPs in point order, [num, den])."""
            rows, num, den = [], 0.0, 0.0
            for s in starts:
                with tf.autodiff.ForwardAccumulator(mirrored, tangent) as acc:
                    f = outputs(x[s:s + chunk_size])
                kw = acc.jvp(f, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                f, kw = tf.cast(f, dtype), tf.cast(kw, dtype)
                # Per chunk in ``dtype``, across chunks and replicas in float64: the
                # one-device path's order of sums (MatrixFreeOperator.weights_products).
                keep = mask[s:s + chunk_size, None, None]
                num += tf.cast(tf.reduce_sum(tf.square(f - kw) * keep), tf.float64)
                den += tf.cast(tf.reduce_sum(tf.square(f) * keep), tf.float64)
                rows.append(tf.reduce_mean(kw, 1))
            return (cross_replica.global_gather(tf.concat(rows, 0)),
                    cross_replica.replica_sum(tf.stack([num, den])))

        def vjp_share(x, coeff):
            """-> sum over every replica's points of K(x_{i,a}) coeff_i / A (``dtype``)."""
            total = 0.0
            for s in starts:
                with tf.GradientTape() as tape:
                    f = outputs(x[s:s + chunk_size])
                    dot = tf.reduce_sum(f * coeff[s:s + chunk_size, None, :]) / a
                g = tape.gradient(dot, mirrored,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
                total += tf.cast(g if index is None else g[index], dtype)
            return cross_replica.replica_sum(total)

        def run(replica_fn):
            def on_replicas(*args):
                return strategy.run(replica_fn, args=args)
            return on_replicas

        key = (id(mirrored), output_fn, a, m, replicas, chunk_size, dtype, index)
        name = mirrored.name
        self._jvp = connections._traced(model, ("opfree_rjvp",) + key, run(jvp_share),
                                        f"opfree_replica_jvp_{name}")
        self._vjp = connections._traced(model, ("opfree_rvjp",) + key, run(vjp_share),
                                        f"opfree_replica_vjp_{name}")

    def _first(self, value):
        return self.strategy.experimental_local_results(value)[0]

    def jvp(self, tangent):
        """-> (d [M, n_L] augmentation-averaged JVPs, residue numerator, denominator)."""
        d, sums = self._jvp(self._x, self._mask, tangent)
        sums = self._first(sums)
        return self._first(d)[:self.num_points], sums[0], sums[1]

    def vjp(self, coeff):
        """coeff [M, n_L] -> sum_i Kbar_i coeff_i (the operator's shape, ``dtype``)."""
        pad = self.share * self.strategy.num_replicas_in_sync - self.num_points
        if pad:
            coeff = tf.concat([coeff, tf.zeros([pad, coeff.shape[1]], coeff.dtype)], 0)
        parts = [coeff[r * self.share:(r + 1) * self.share]
                 for r in range(self.strategy.num_replicas_in_sync)]
        coeff = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: parts[ctx.replica_id_in_sync_group])
        return self._first(self._vjp(self._x, coeff))


class LayerVJPs:
    """The VJP passes of several layers' operators at once: ``coeffs[l]`` [M, n_L] ->
    ``1/M sum_i Kbar_{l,i} coeffs[l]_i`` per layer (each in ``dtype``, its kernel's shape),
    from one forward per chunk and one backward per layer (a persistent tape), in one traced
    function for all layers: the same products as each layer's
    :meth:`MatrixFreeOperator.apply` VJP pass (the same operations, chunks and sums), with
    one model trace instead of one per layer. On mirrored variables the points are split
    over the replicas as in :class:`MatrixFreeOperator`.

    Args:
      model, x_aug, output_fn, chunk_size: as :class:`MatrixFreeOperator`.
      variables: the layers' whole kernels (variables or layer names).
      dtype: accumulation dtype (default the first variable's).
    """

    def __init__(self, model, variables, x_aug, output_fn=None, chunk_size=64, dtype=None):
        self.variables = [connections.resolve_variable(model, v) for v in variables]
        tvars = [connections._tf_var(v) for v in self.variables]
        self.x_aug = tf.convert_to_tensor(x_aug)
        self.num_points, a = int(self.x_aug.shape[0]), int(self.x_aug.shape[1])
        self.chunk_size = int(chunk_size)
        self.dtype = tf.as_dtype(dtype or tvars[0].dtype)
        fn = output_fn or (lambda x: model(x, training=False))
        dtype = self.dtype
        mirrored = [v.value if isinstance(v, keras.Variable) else v for v in self.variables]
        self.strategy = None
        if all(isinstance(v, tf.distribute.DistributedValues) for v in mirrored):
            strategy = mirrored[0].distribute_strategy
            if strategy.num_replicas_in_sync > 1:
                self.strategy = strategy

        def outputs(x):
            flat = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
            return tf.reshape(fn(flat), [tf.shape(x)[0], a, -1])

        def chunk_vjps(x, coeffs, watched):
            """One chunk: -> [grad_{W_l} <f, coeffs[l]> / A] per layer (W_l's dtype)."""
            with tf.GradientTape(persistent=True) as tape:
                f = outputs(x)
                dots = [tf.reduce_sum(f * c[:, None, :]) / a for c in coeffs]
            grads = [tape.gradient(dot, var, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                     for dot, var in zip(dots, watched)]
            del tape
            return grads

        names = "_".join(v.name for v in tvars)
        if self.strategy is None:
            def all_vjps(x, coeffs):
                return chunk_vjps(x, coeffs, tvars)

            key = ("opfree_layer_vjps", tuple(id(v) for v in tvars), output_fn, a)
            self._vjps = connections._traced(model, key, all_vjps, f"opfree_vjps_{names}")
            return
        replicas = self.strategy.num_replicas_in_sync
        m, chunk = self.num_points, self.chunk_size
        self.share = share = -(-m // replicas)
        pad = share * replicas - m
        x = (tf.concat([self.x_aug, tf.repeat(self.x_aug[-1:], pad, axis=0)], 0) if pad
             else self.x_aug)
        parts = [x[r * share:(r + 1) * share] for r in range(replicas)]
        self._x = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: parts[ctx.replica_id_in_sync_group])

        def share_vjps(x, coeffs):
            totals = [0.0] * len(coeffs)
            for s in range(0, share, chunk):
                grads = chunk_vjps(x[s:s + chunk], [c[s:s + chunk] for c in coeffs], mirrored)
                totals = [t + tf.cast(g, dtype) for t, g in zip(totals, grads)]
            return [cross_replica.replica_sum(t) for t in totals]

        strategy = self.strategy

        def on_replicas(x, coeffs):
            return strategy.run(share_vjps, args=(x, coeffs))

        key = ("opfree_layer_rvjps", tuple(id(v) for v in mirrored), output_fn, a, m,
               replicas, chunk, dtype)
        self._vjps = connections._traced(model, key, on_replicas,
                                         f"opfree_replica_vjps_{names}")

    def __call__(self, coeffs):
        """coeffs: one [M, n_L] per layer (W_l's dtype, e.g.
        :meth:`MatrixFreeOperator.vjp_coefficients`) -> one product per layer."""
        coeffs = tuple(coeffs)
        if self.strategy is not None:
            replicas = self.strategy.num_replicas_in_sync
            pad = self.share * replicas - self.num_points
            split = []
            for c in coeffs:
                c = tf.concat([c, tf.zeros([pad, c.shape[1]], c.dtype)], 0) if pad else c
                split.append([c[r * self.share:(r + 1) * self.share] for r in range(replicas)])
            dist = self.strategy.experimental_distribute_values_from_function(
                lambda ctx: tuple(s[ctx.replica_id_in_sync_group] for s in split))
            out = self._vjps(self._x, dist)
            return [self.strategy.experimental_local_results(t)[0] / self.num_points
                    for t in out]
        totals = None
        for s in range(0, self.num_points, self.chunk_size):
            grads = self._vjps(self.x_aug[s:s + self.chunk_size],
                               tuple(c[s:s + self.chunk_size] for c in coeffs))
            grads = [tf.cast(g, self.dtype) for g in grads]
            totals = grads if totals is None else [t + g for t, g in zip(totals, grads)]
        return [t / self.num_points for t in totals]
