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
    (normalisation happens in :class:`dualssl_tf.methods.contrastive.ContrastiveMethod`).

    Args:
      depth: L, tree depth.
      num_children: c.
      hid: units per latent group.
      use_bias: biases in every group (the paper's network has them).
      seed: int seed of the initial weights (depth d's layer draws from
        ``derive_seed(seed, d)``), or None for Keras' global seed stream. A list of S
        seeds makes a forest of S independent tree networks side by side (one per HLTM
        seed): input [B, S * c**L] (the S trees' leaves concatenated), output
        [B, S, hid]; tree s is initialised exactly as ``TreeNet(..., seed=seeds[s])``.

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
        self.seed = list(seed) if isinstance(seed, (list, tuple)) else seed
        self.num_seeds = len(self.seed) if isinstance(self.seed, list) else None

        def level_seed(d):
            if isinstance(self.seed, list):
                return [derive_seed(s, d) for s in self.seed]
            return None if seed is None else derive_seed(seed, d)

        self.levels = [GroupedDense(num_children ** (depth - d), hid, use_bias=use_bias,
                                    seed=level_seed(d), name=f"depth_{d}")
                       for d in range(1, depth + 1)]

    def pre_activations(self, x, tree=None):
        """x: [B, S * c**L] -> list over depth d = 1..L of [B, S * c**(L-d), hid].

        With ``tree=s`` (int or scalar int tensor) x is tree s's leaves [B, c**L] alone, and
        only its weights are applied: [B, c**(L-d), hid] per depth.
        """
        b = ops.shape(x)[0]
        trees = 1 if tree is not None else (self.num_seeds or 1)
        c, L = self.num_children, self.depth
        h = ops.reshape(x, (b, trees * c ** (L - 1), c))
        pres = []
        for d, layer in enumerate(self.levels, start=1):
            pre = layer(h, block=tree)
            pres.append(pre)
            if d < L:
                h = ops.reshape(ops.relu(pre), (b, trees * c ** (L - d - 1), c * self.hid))
        return pres

    def call(self, x):
        root = self.pre_activations(x)[-1]          # [B, S, hid]
        return root if self.num_seeds is not None else root[:, 0, :]

    def get_config(self):
        return {"depth": self.depth, "num_children": self.num_children, "hid": self.hid,
                "use_bias": self.use_bias, "seed": self.seed, "name": self.name}
