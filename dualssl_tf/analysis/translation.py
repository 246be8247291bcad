"""Figure 3 analysis of the 1-D translation toy: do trained filters line up with OP at init?

The toy encoder's output j depends only on filter j (pooling is per channel), so the
covariance operator of the conv kernel is block diagonal with one k x k block per filter.
For each filter we take the top eigenvector of its block *at initialisation* and measure
``|cos|`` with the filter's weights after training (and, as a baseline, at init). Theorem 3
says gradient descent amplifies ``OP vec(W)``, so trained filters should point along OP's top
eigendirections computed before training.
"""

import numpy as np

from dualssl_tf.analysis import sampling
from dualssl_tf.analysis.covariance import CovarianceOperator
from dualssl_tf.tasks.translation1d.task import filter_selectivity


def conv_operator(encoder, toy, layer="conv"):
    """OP of the conv kernel from both objects at every location (exact Kbar). M = 2."""
    x_aug = sampling.translation1d_augmented(toy)
    return CovarianceOperator.from_model(encoder, layer, x_aug)


def filter_op_alignment(encoder_init, encoder_final, toy, layer="conv"):
    """Per-filter alignment of trained filters with OP's top eigenvector at init.

    Args:
      encoder_init, encoder_final: the toy encoder before / after training (same
        architecture); toy: :class:`Translation1D`.
    Returns:
      dict with per-filter lists (``None`` where OP's block is zero: a filter dead at init):
      ``align_final`` |cos(top eigvec of OP_jj at init, w_j trained)|,
      ``align_init`` the same with w_j at init (baseline), ``selectivity_init``,
      ``selectivity_final``, and ``global_align_final`` / ``global_align_init``: the
      fraction of ||vec W|| inside the span of OP's top-F eigenvectors (F = #filters).
    """
    op = conv_operator(encoder_init, toy, layer)
    kernel_init = np.asarray(encoder_init.get_layer(layer).kernel.numpy(), np.float64)
    kernel_final = np.asarray(encoder_final.get_layer(layer).kernel.numpy(), np.float64)
    filters = kernel_init.shape[-1]
    dense = op.dense()
    align_final, align_init = [], []
    for j in range(filters):
        block = dense[j::filters, j::filters]            # entries of filter j in vec(W)
        values, vectors = np.linalg.eigh(block)
        if values[-1] <= 1e-12 * max(np.abs(dense).max(), 1e-300):
            align_final.append(None)
            align_init.append(None)
            continue
        u = vectors[:, -1]
        for w, out in ((kernel_final[..., j].ravel(), align_final),
                       (kernel_init[..., j].ravel(), align_init)):
            out.append(float(abs(u @ w) / (np.linalg.norm(w) + 1e-300)))
    return {"align_final": align_final, "align_init": align_init,
            "selectivity_init": filter_selectivity(encoder_init, toy).tolist(),
            "selectivity_final": filter_selectivity(encoder_final, toy).tolist(),
            "op_spectrum_init": op.spectrum().tolist(),
            "global_align_final": op.subspace_alignment(kernel_final.ravel(), filters),
            "global_align_init": op.subspace_alignment(kernel_init.ravel(), filters)}
