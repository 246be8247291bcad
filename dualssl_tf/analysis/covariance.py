"""The covariance operator OP_l = V_{x0}[Kbar_l(x0)] (Theorem 3) and its weighted form (Theorem 4).

Given M base points ``x0_i``, each with A augmentations ``x_{i,a}``::

    Kbar_i   = 1/A sum_a K_l(x_{i,a})                       (P x n_L)
    OP       = 1/M sum_i (Kbar_i - Kmean)(Kbar_i - Kmean)^T  (P x P, PSD)
    OP_xi    = 1/(2 M^2) sum_ij xi_ij (Kbar_i - Kbar_j)(Kbar_i - Kbar_j)^T

The P x P matrix is never formed. The operator is stored as the centred factor
``F = [Kbar_i - Kmean]_i`` (P x M n_L, kept as its transpose ``Ft`` [M n_L, P]) and a
"core" acting on the base-point axis::

    OP    = F (I/M) F^T
    OP_xi = F ((L_xi (x) I_{n_L}) / M^2) F^T,   L_xi = diag(xi_s 1) - xi_s,  xi_s = (xi + xi^T)/2

(the Laplacian form follows by expanding the square; with ``xi = 1`` it reduces to OP
because the centred factor sums to zero). The spectrum comes from the smaller Gram matrix
of F (P x P or M n_L x M n_L, whichever is smaller): its eigenvectors V span range(F), and
``OP = V (B^T core B) V^T`` with ``B = F^T V`` is an r x r eigenproblem, r <= min(P, M n_L).

Arrays are NumPy float64; the heavy products and eigendecompositions run through TensorFlow
(Eigen threads), which stays fast when the CPU is shared, where multi-threaded OpenBLAS
(NumPy's eigh) slowed down 10-50x in our measurements.
"""

import numpy as np
import tensorflow as tf

from dualssl_tf.analysis import connections


def _eigh(m):
    """Eigen-decomposition of a symmetric float64 matrix (ascending), via TensorFlow."""
    values, vectors = tf.linalg.eigh(tf.constant(m, tf.float64))
    return values.numpy(), vectors.numpy()


def _gram(a, transpose_a):
    """a^T a (transpose_a) or a a^T, float64, via TensorFlow."""
    a = tf.constant(a, tf.float64)
    return tf.matmul(a, a, transpose_a=transpose_a, transpose_b=not transpose_a).numpy()


def averaged_connections(conn, x_aug):
    """Kbar_i^T = 1/A sum_a K_l(x_{i,a})^T for each base point.

    Args:
      conn: a :class:`connections.Connection`.
      x_aug: [M, A, ...] inputs.
    Returns:
      numpy float64 [M, n_L, P].
    """
    x_aug = np.asarray(x_aug)
    m, a = x_aug.shape[:2]
    # Average over augmentations chunk by chunk so only [chunk, n_L, P] is alive.
    per_chunk = max(1, conn.chunk_size // a)
    kbar = []
    for s in range(0, m, per_chunk):
        block = x_aug[s:s + per_chunk]
        k_t = conn(block.reshape((-1,) + x_aug.shape[2:])).numpy()
        kbar.append(k_t.reshape((block.shape[0], a) + k_t.shape[1:]).mean(axis=1))
    return np.concatenate(kbar, axis=0).astype(np.float64)


class CovarianceOperator:
    """Low-rank covariance operator of averaged connections.

    Args:
      kbar: array [M, n_L, P], ``Kbar_i^T`` for each base point (augmentation-averaged
        connection, transposed as returned by :func:`connections.connection`).
      xi: optional [M, M] weights of Theorem 4 (symmetrised; ``None`` = Theorem 3's OP).

    Raises:
      ValueError naming ``M`` when fewer than 2 base points are given, ``xi`` when its
      shape does not match.

    Example:
      >>> op = CovarianceOperator.from_model(model, "dense", x_aug)   # x_aug [M, A, d]
      >>> values, vectors = op.top_eigen(5)
      >>> op.alignment(op.weight_vector, k=1)
    """

    def __init__(self, kbar, xi=None, weight_vector=None):
        kbar = np.asarray(kbar, dtype=np.float64)
        if kbar.ndim != 3:
            raise ValueError(f"kbar: expected [M, n_L, P], got shape {kbar.shape}")
        m, n_out, p = kbar.shape
        if m < 2:
            raise ValueError(f"M: need at least 2 base points to estimate a covariance, got {m}")
        self.num_points, self.out_dim, self.num_params = m, n_out, p
        self.mean = kbar.mean(axis=0)                                      # [n_L, P]
        self._ft = (kbar - self.mean).reshape(m * n_out, p)               # F^T [M n_L, P]
        self.xi = None
        if xi is not None:
            xi = np.asarray(xi, dtype=np.float64)
            if xi.shape != (m, m):
                raise ValueError(f"xi: expected shape ({m}, {m}) for M={m} base points, "
                                 f"got {xi.shape}")
            self.xi = 0.5 * (xi + xi.T)
        self._basis = None
        self._eig = None
        #: vec(W_l) at the time the connections were taken (set by from_model), or None.
        self.weight_vector = None if weight_vector is None else np.asarray(
            weight_vector, np.float64).reshape(-1)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_model(cls, model, layer, x_aug, output_fn=None, index=None, xi=None,
                   chunk_size=512, connection_fn=None):
        """Estimates OP_l from inputs ``x_aug`` [M, A, ...] (A augmentations of M points).

        Args:
          model, layer, output_fn, index, chunk_size: as :class:`connections.Connection`.
          x_aug: [M, A, ...] array/tensor.
          xi: optional [M, M] Theorem-4 weights.
          connection_fn: an existing :class:`connections.Connection` to reuse (then
            model/layer/output_fn/index are ignored).
        Returns:
          CovarianceOperator with ``weight_vector`` = vec(W_l) (float64).
        """
        x_aug = np.asarray(x_aug)
        if x_aug.ndim < 2:
            raise ValueError(f"x_aug: expected [M, A, ...], got shape {x_aug.shape}")
        m, a = x_aug.shape[:2]
        if m < 2:
            raise ValueError(f"M: need at least 2 base points to estimate a covariance, got {m}")
        conn = connection_fn or connections.Connection(model, layer, output_fn, index,
                                                       chunk_size)
        return cls(averaged_connections(conn, x_aug), xi=xi,
                   weight_vector=conn.weight_vector().numpy())

    def weighted(self, xi):
        """The Theorem-4 operator ``OP_xi`` on the same connections. xi: [M, M]."""
        op = CovarianceOperator.__new__(CovarianceOperator)
        op.__dict__.update(self.__dict__)
        op._eig = None
        op.xi = None
        xi = np.asarray(xi, dtype=np.float64)
        if xi.shape != (self.num_points,) * 2:
            raise ValueError(f"xi: expected shape ({self.num_points}, {self.num_points}), "
                             f"got {xi.shape}")
        op.xi = 0.5 * (xi + xi.T)
        return op

    # ----------------------------------------------------------------- core algebra
    def _apply_core(self, u):
        """core applied to u [M n_L, k] (rows grouped by base point)."""
        m, n = self.num_points, self.out_dim
        if self.xi is None:
            return u / m
        u3 = u.reshape(m, n, -1)
        lap_u = self.xi.sum(axis=1)[:, None, None] * u3 - np.einsum("ij,jnk->ink", self.xi, u3)
        return lap_u.reshape(m * n, -1) / m ** 2

    @property
    def factor_t(self):
        """F^T, the centred factor transposed: [M n_L, P]."""
        return self._ft

    def apply(self, v):
        """OP v. v: [P] or [P, k] -> same shape."""
        v = np.asarray(v, dtype=np.float64)
        vec = v.ndim == 1
        v2 = v[:, None] if vec else v
        if v2.shape[0] != self.num_params:
            raise ValueError(f"v: expected {self.num_params} rows, got {v2.shape[0]}")
        out = self._ft.T @ self._apply_core(self._ft @ v2)
        return out[:, 0] if vec else out

    def _range_basis(self):
        """Orthonormal V [P, r] spanning range(F) and the eigenvalues of F F^T ([r], desc).

        From the smaller Gram matrix: ``F F^T`` (P x P) when P <= M n_L, else ``F^T F``
        (M n_L x M n_L, mapped back by ``V = F U / sigma``), so a big layer never has a
        P x P matrix. eigh of a Gram matrix is ~10x faster than a thin SVD (and far less
        sensitive to BLAS thread contention); only eigenvalues below 1e-12 of the largest are
        dropped, which the callers (norms, top eigenpairs) do not need.
        """
        if self._basis is None:
            ft = self._ft
            mn, p = ft.shape
            if p <= mn:
                values, vecs = _eigh(_gram(ft, transpose_a=True))
            else:
                values, u = _eigh(_gram(ft, transpose_a=False))
                vecs = None
            values = values[::-1]
            keep = values > max(values[0], 0.0) * 1e-12 if values.size and values[0] > 0 \
                else np.zeros(values.shape, bool)
            values = values[keep]
            if vecs is None:
                vecs = (ft.T @ u[:, ::-1][:, keep]) / np.sqrt(values)[None, :]
            else:
                vecs = vecs[:, ::-1][:, keep]
            self._basis = (vecs, values)
        return self._basis

    def _eigen(self):
        if self._eig is None:
            vecs, sq = self._range_basis()
            if self.xi is None:
                values, vectors = sq / self.num_points, vecs
            else:
                # OP_xi = V (B^T core B) V^T with B = F^T V, V spanning range(F).
                b = self._ft @ vecs
                inner = b.T @ self._apply_core(b)
                values, q = _eigh(0.5 * (inner + inner.T))
                values, vectors = values[::-1], vecs @ q[:, ::-1]
            self._eig = (values, vectors)
        return self._eig

    def spectrum(self):
        """All non-zero eigenvalues of OP, descending. [r]."""
        return self._eigen()[0].copy()

    def top_eigen(self, k):
        """Top-k eigenpairs: (values [k], vectors [P, k]); columns are unit eigenvectors."""
        values, vectors = self._eigen()
        k = min(int(k), values.size)
        return values[:k].copy(), vectors[:, :k].copy()

    def frobenius_norm(self):
        """||OP||_F = sqrt(sum of squared eigenvalues)."""
        return float(np.sqrt(np.sum(self._eigen()[0] ** 2)))

    def trace(self):
        """tr OP (total variance of the averaged connection across base points)."""
        return float(np.sum(self._eigen()[0]))

    def alignment(self, vec_w=None, k=1):
        """|cos| between vec(W_l) and each of OP's top-k eigenvectors. Returns [k].

        vec_w: [P]; default the weight vector recorded by :meth:`from_model`.
        (Eigenvectors have arbitrary sign, hence the absolute value.)
        """
        w = self._vec(vec_w)
        _, vectors = self.top_eigen(k)
        return np.abs(vectors.T @ w) / (np.linalg.norm(w) + 1e-300)

    def subspace_alignment(self, vec_w=None, k=1):
        """||P_k vec(W)|| / ||vec(W)|| with P_k the projector on the top-k eigenvectors."""
        return float(np.linalg.norm(self.alignment(vec_w, k)))

    def rayleigh_quotient(self, vec_w=None):
        """w^T OP w / (||w||^2 lambda_max): 1 when vec(W) is the top eigenvector."""
        w = self._vec(vec_w)
        top = self._eigen()[0][0] if self._eigen()[0].size else 0.0
        return float(w @ self.apply(w) / (w @ w * top + 1e-300))

    def dense(self):
        """The P x P matrix (small layers / tests only)."""
        if self.num_params > 4096:
            raise ValueError(f"dense: refusing to materialise a {self.num_params}^2 operator")
        return self.apply(np.eye(self.num_params))

    def _vec(self, vec_w):
        w = self.weight_vector if vec_w is None else np.asarray(vec_w, np.float64).reshape(-1)
        if w is None:
            raise ValueError("vec_w: no weight vector given and none recorded by from_model")
        if w.size != self.num_params:
            raise ValueError(f"vec_w: expected {self.num_params} entries, got {w.size}")
        return w


def batched_summary(kbar, weight_vectors):
    """||OP||_F, top eigenvalue and top-1 alignment for G operators of equal size at once.

    For per-epoch monitoring of every group of a grouped layer: one batched Gram product and
    one batched eigh instead of G separate operators. Equivalent to building
    ``CovarianceOperator(kbar[g], weight_vector=weight_vectors[g])`` and calling
    ``frobenius_norm()``, ``top_eigen(1)`` and ``alignment(k=1)`` (tested).

    Args:
      kbar: [G, M, n_L, P] averaged connections per group (M >= 2).
      weight_vectors: [G, P] vec(W) per group.
    Returns:
      dict of numpy [G] arrays: ``frobenius``, ``top_value``, ``alignment``.
    """
    if np.shape(kbar)[1] < 2:
        raise ValueError("M: need at least 2 base points to estimate a covariance, got "
                         f"{np.shape(kbar)[1]}")
    out = batched_summary_tf(tf.convert_to_tensor(kbar), tf.convert_to_tensor(weight_vectors))
    return {k: v.numpy() for k, v in out.items()}


def batched_summary_tf(kbar, weight_vectors):
    """Graph-friendly core of :func:`batched_summary` (tensors in, float64 tensors out)."""
    kbar = tf.cast(kbar, tf.float64)
    g, m, n, p = kbar.shape
    ft = tf.reshape(kbar - tf.reduce_mean(kbar, axis=1, keepdims=True), [g, m * n, p])
    # Nonzero spectrum of F F^T / M from the smaller Gram matrix.
    if p <= m * n:
        gram = tf.matmul(ft, ft, transpose_a=True) / m                     # [G, P, P]
    else:
        gram = tf.matmul(ft, ft, transpose_b=True) / m                     # [G, Mn, Mn]
    values, vectors = tf.linalg.eigh(gram)
    top_value = values[:, -1]
    top = vectors[:, :, -1]
    if p > m * n:   # map the top eigenvector of F^T F back into weight space
        top = tf.einsum("gkp,gk->gp", ft, top)
        top = top / (tf.norm(top, axis=1, keepdims=True) + 1e-300)
    w = tf.cast(weight_vectors, tf.float64)
    align = tf.abs(tf.reduce_sum(top * w, axis=1)) / (tf.norm(w, axis=1) + 1e-300)
    align = tf.where(top_value > 0, align, tf.zeros_like(align))
    return {"frobenius": tf.norm(gram, axis=[1, 2]), "top_value": top_value,
            "alignment": align}
