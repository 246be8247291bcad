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
because the centred factor sums to zero). The spectrum comes from the thin SVD
``Ft = U S V^T``: ``OP = V (S U^T core U S) V^T``, an r x r eigenproblem, r <= min(P, M n_L).

All linear algebra is NumPy float64 (this module only reads models).
"""

import numpy as np

from dualssl_tf.analysis import connections


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
        self._svd = None
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

    def _eigen(self):
        if self._eig is None:
            if self._svd is None:
                u, s, vt = np.linalg.svd(self._ft, full_matrices=False)
                keep = s > s.max() * 1e-12 if s.size and s.max() > 0 else np.zeros_like(s, bool)
                self._svd = (u[:, keep], s[keep], vt[keep])
            u, s, vt = self._svd
            if self.xi is None:
                values, vectors = s ** 2 / self.num_points, vt.T
            else:
                inner = s[:, None] * (u.T @ self._apply_core(u)) * s[None, :]
                values, q = np.linalg.eigh(0.5 * (inner + inner.T))
                values, vectors = values[::-1], vt.T @ q[:, ::-1]
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
