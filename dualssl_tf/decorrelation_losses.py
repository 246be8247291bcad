"""Barlow Twins and VICReg: losses of the global batch's feature statistics, as pure functions.

Both compare two views' projections ``z1, z2`` [N, D] through per-dimension statistics over
the batch (means, variances, a D x D correlation or covariance), not example by example, so
a loss is a scalar of the whole batch and cannot be split into per-example terms.

Global batch. Under a distribution strategy each replica holds n of the N = R n rows. Every
statistic here is a sum over rows divided by a count, and each sum goes through ``sum_fn``:
the elementwise sum over the replicas of this replica's partial sum (the method passes
``cross_replica.replica_sum``; the default, identity, is one device). So a matrix statistic is
one [D, D] matmul of the replica's rows plus one all-reduce, never a [N, D, D] tensor, and
the loss is the global batch's on every replica. ``sum_fn`` must be differentiable (an
all-reduce SUM is: its gradient is the SUM of the replicas' upstream gradients).

Half-precision inputs are promoted to float32 (losses in float32 under mixed precision);
float64 stays float64 (exact checks). This module imports nothing of the package.

Which code each loss follows (checked against lightly 1.6 and solo-learn in
tests/methods/test_decorrelation_losses.py, values from
benchmarks/peer_reference_barlow_vicreg.py):

* Barlow Twins (Zbontar et al. 2021; facebookresearch/barlowtwins): standardisation by a
  BatchNorm without affine (biased variance, eps 1e-5) over the *global* batch (the official
  code converts it to SyncBatchNorm), ``C = n1^T n2 / N``, ``sum_i (1 - C_ii)^2 + lambda
  sum_{i != j} C_ij^2`` with lambda 0.0051, times ``scale`` (1 in the paper and lightly;
  solo-learn's ``scale_loss``, 0.1 in its CIFAR recipe). lightly and solo-learn standardise
  over each GPU's batch and average C; on one device all agree.
* VICReg (Bardes et al. 2022; facebookresearch/vicreg): ``sim * MSE(z1, z2) + std *
  (v(z1) + v(z2)) / 2 + cov * (c(z1) + c(z2))`` with ``v(z) = mean_d relu(1 - sqrt(Var_d +
  1e-4))`` (unbiased variance, gamma 1) and ``c(z)`` the squared off-diagonal entries of the
  unbiased covariance over D; defaults 25 / 25 / 1. The official code and lightly halve the
  variance sum; solo-learn does not (its loss is ours with ``std`` doubled).
"""

import tensorflow as tf

# BatchNorm1d's eps, which standardises in the official Barlow Twins code (and in lightly's
# and solo-learn's copies).
BARLOW_EPS = 1e-5
# eps under VICReg's square root of the variance (official code, lightly, solo-learn).
VICREG_EPS = 1e-4


def _wide(x):
    """Half-precision inputs promoted to float32; float32/float64 unchanged."""
    x = tf.convert_to_tensor(x)
    return tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x


def _identity(x):
    return x


def _global_rows(z, sum_fn):
    """N, the global batch's row count, as z's dtype (z: this replica's rows [n, D])."""
    return sum_fn(tf.cast(tf.shape(z)[0], z.dtype))


def _centred(z, n, sum_fn):
    """z minus its global-batch mean per dimension: [n, D] -> [n, D]."""
    return z - sum_fn(tf.reduce_sum(z, axis=0)) / n


def standardize(z, sum_fn=_identity, eps=BARLOW_EPS):
    """Per-dimension standardisation over the global batch, ``(z - mean) / sqrt(var + eps)``
    with the biased variance (BatchNorm1d(affine=False) in training mode).

    z: [n, D] this replica's rows -> [n, D]."""
    z = _wide(z)
    n = _global_rows(z, sum_fn)
    centred = _centred(z, n, sum_fn)
    var = sum_fn(tf.reduce_sum(tf.square(centred), axis=0)) / n
    return centred * tf.math.rsqrt(var + eps)


def cross_correlation(z1, z2, sum_fn=_identity, eps=BARLOW_EPS):
    """Barlow Twins' cross-correlation ``C = n1^T n2 / N`` of the standardised views.

    z1, z2: [n, D] -> C [D, D] (C_ij: correlation of dimension i of view 1 with dimension j
    of view 2 over the global batch of N rows)."""
    z1, z2 = _wide(z1), _wide(z2)
    n = _global_rows(z1, sum_fn)
    n1, n2 = standardize(z1, sum_fn, eps), standardize(z2, sum_fn, eps)
    return sum_fn(tf.matmul(n1, n2, transpose_a=True)) / n


def barlow_twins_loss(z1, z2, lambd=0.0051, scale=1.0, sum_fn=_identity, eps=BARLOW_EPS):
    """Barlow Twins' loss ``scale * (on_diag + lambd * off_diag)``.

    Args:
      z1, z2: [n, D] projections of the two views (this replica's rows).
      lambd: weight of the redundancy-reduction term (the paper: 0.0051).
      scale: factor of the whole loss (the paper: 1; solo-learn's ``scale_loss``).
      sum_fn: sum over replicas of a partial statistic (module docstring).
      eps: of the standardisation.
    Returns:
      ``(loss, on_diag, off_diag)`` scalars: ``on_diag = sum_i (1 - C_ii)^2`` and
      ``off_diag = sum_{i != j} C_ij^2`` (unweighted, unscaled).
    """
    corr = cross_correlation(z1, z2, sum_fn, eps)
    diag = tf.linalg.diag_part(corr)
    on_diag = tf.reduce_sum(tf.square(1.0 - diag))
    # sum of all squares minus the diagonal's: no [D, D] mask (D is 8192 in the paper)
    off_diag = tf.reduce_sum(tf.square(corr)) - tf.reduce_sum(tf.square(diag))
    return scale * (on_diag + lambd * off_diag), on_diag, off_diag


def vicreg_variance(z, sum_fn=_identity, eps=VICREG_EPS, gamma=1.0):
    """VICReg's variance hinge ``mean_d relu(gamma - sqrt(Var_d(z) + eps))`` (unbiased
    variance over the global batch). z: [n, D] -> scalar."""
    z = _wide(z)
    n = _global_rows(z, sum_fn)
    centred = _centred(z, n, sum_fn)
    var = sum_fn(tf.reduce_sum(tf.square(centred), axis=0)) / (n - 1.0)
    return tf.reduce_mean(tf.nn.relu(gamma - tf.sqrt(var + eps)))


def vicreg_covariance(z, sum_fn=_identity):
    """VICReg's covariance term ``sum_{i != j} Cov_ij(z)^2 / D`` (unbiased covariance over
    the global batch). z: [n, D] -> scalar."""
    z = _wide(z)
    n = _global_rows(z, sum_fn)
    centred = _centred(z, n, sum_fn)
    cov = sum_fn(tf.matmul(centred, centred, transpose_a=True)) / (n - 1.0)
    off = tf.reduce_sum(tf.square(cov)) - tf.reduce_sum(tf.square(tf.linalg.diag_part(cov)))
    return off / tf.cast(tf.shape(z)[-1], z.dtype)


def vicreg_loss(z1, z2, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, sum_fn=_identity,
                eps=VICREG_EPS):
    """VICReg's loss ``sim * invariance + std * variance + cov * covariance``.

    Args:
      z1, z2: [n, D] projections of the two views (this replica's rows).
      sim_coeff, std_coeff, cov_coeff: lambda, mu, nu of the paper (25, 25, 1).
      sum_fn: sum over replicas of a partial statistic (module docstring).
      eps: under the variance's square root.
    Returns:
      ``(loss, invariance, variance, covariance)`` scalars: ``invariance`` the mean squared
      error over the global batch and the D dimensions, ``variance = (v(z1) + v(z2)) / 2``
      (:func:`vicreg_variance`), ``covariance = c(z1) + c(z2)`` (:func:`vicreg_covariance`).
    """
    z1, z2 = _wide(z1), _wide(z2)
    n = _global_rows(z1, sum_fn)
    dim = tf.cast(tf.shape(z1)[-1], z1.dtype)
    invariance = sum_fn(tf.reduce_sum(tf.square(z1 - z2))) / (n * dim)
    variance = 0.5 * (vicreg_variance(z1, sum_fn, eps) + vicreg_variance(z2, sum_fn, eps))
    covariance = vicreg_covariance(z1, sum_fn) + vicreg_covariance(z2, sum_fn)
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return loss, invariance, variance, covariance
