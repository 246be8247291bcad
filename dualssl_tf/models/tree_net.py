"""The ReLU network matched to an HLTM tree (docs/theory.md section 4)."""

import keras
from keras import ops

from dualssl_tf.models.grouped_dense import GroupedDense, derive_seed


@keras.saving.register_keras_serializable(package="dualssl_tf")
class TreeNet(keras.Model):
    """One group of ``hid`` ReLU units per non-leaf latent, wired like the tree.

    Depth d = 1..L has ``c**(L-d)`` groups; group g at depth d is fully connected (with
    bias) to the concatenated ReLU outputs of its c children's groups at depth d-1 (the leaf
    inputs directly for d = 1). The output is the root group's pre-activation [B, hid]
    (normalisation happens in :class:`dualssl_tf.dual.ContrastiveMethod`).

    Args:
      depth: L, tree depth.
      num_children: c.
      hid: units per latent group.
      use_bias: biases in every group (the paper's network has them).
      seed: int seed of the initial weights (depth d's layer draws from
        ``derive_seed(seed, d)``), or None for Keras' global seed stream.

    Example:
      >>> net = TreeNet(depth=5, num_children=2, hid=10)
      >>> f = net(keras.ops.zeros([8, 32]))          # [8, 10]
      >>> pre = net.pre_activations(x)                # list: depth d -> [8, 2**(5-d), 10]
    """

    def __init__(self, depth=5, num_children=2, hid=10, use_bias=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth
        self.num_children = num_children
        self.hid = hid
        self.use_bias = use_bias
        self.seed = seed
        self.levels = [GroupedDense(num_children ** (depth - d), hid, use_bias=use_bias,
                                    seed=None if seed is None else derive_seed(seed, d),
                                    name=f"depth_{d}") for d in range(1, depth + 1)]

    def pre_activations(self, x):
        """x: [B, c**L] -> list over depth d = 1..L of [B, c**(L-d), hid]."""
        b = ops.shape(x)[0]
        h = ops.reshape(x, (b, self.num_children ** (self.depth - 1), self.num_children))
        pres = []
        for d, layer in enumerate(self.levels, start=1):
            pre = layer(h)
            pres.append(pre)
            if d < self.depth:
                h = ops.reshape(ops.relu(pre),
                                (b, self.num_children ** (self.depth - d - 1),
                                 self.num_children * self.hid))
        return pres

    def call(self, x):
        return self.pre_activations(x)[-1][:, 0, :]

    def get_config(self):
        return {"depth": self.depth, "num_children": self.num_children, "hid": self.hid,
                "use_bias": self.use_bias, "seed": self.seed, "name": self.name}
