"""GroupedDense initialisation: kernel and bias are independent draws (issue 12 part 2)."""

import numpy as np

from dualssl_tf.models.grouped_dense import GroupedDense
from dualssl_tf.models.tree_net import TreeNet


def _streams_independent(kernel, bias):
    flat = kernel.ravel()[:bias.size]
    assert not np.allclose(flat, bias.ravel())
    corr = np.corrcoef(flat, bias.ravel())[0, 1]
    assert abs(corr) < 4.5 / np.sqrt(bias.size), corr


def test_bias_is_not_a_copy_of_the_kernel():
    for seed in (None, 3):
        layer = GroupedDense(groups=64, units=10, seed=seed)
        layer.build((None, 64, 20))
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        bound = 1 / np.sqrt(20)
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
        _streams_independent(kernel, bias)


def test_seeded_tree_net_is_reproducible_and_layers_differ():
    a, b = TreeNet(3, 2, 10, seed=5), TreeNet(3, 2, 10, seed=5)
    a(np.zeros([1, 8], np.float32))
    b(np.zeros([1, 8], np.float32))
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    for level in a.levels:
        _streams_independent(level.kernel.numpy(), level.bias.numpy())
    c = TreeNet(3, 2, 10, seed=6)
    c(np.zeros([1, 8], np.float32))
    assert not np.allclose(a.levels[0].kernel.numpy(), c.levels[0].kernel.numpy())
