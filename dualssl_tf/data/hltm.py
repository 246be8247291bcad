"""Hierarchical latent tree model (HLTM) of Tian et al. (2020), Section 6 (theory.md sec. 4).

Binary latents ``z_mu`` on a tree of depth L with ``c`` children per node: the root sits at
depth L, the observed leaves at depth 0, so depth d holds ``c**(L - d)`` nodes. Each edge
``mu -> nu`` has a polarity ``rho`` drawn once (``sign * U[delta_lower, delta_upper]``) and
``P(z_nu = z_mu) = (1 + rho) / 2``. Augmentation keeps the root and resamples the rest;
negatives are independent samples.

Sampling is vectorised over the batch and stateless: the same ``seed`` gives the same sample,
so a run can regenerate any step's batch (fresh data every step, yet reproducible).
"""

import json

import numpy as np
import tensorflow as tf


class HLTM:
    """A fixed HLTM tree; samples whole batches in a few tensor ops.

    Args:
      depth: L >= 1, number of edges from root to leaves.
      num_children: c >= 2.
      delta_lower, delta_upper: 0 <= lower <= upper <= 1, range of |rho|.
      seed: int seed for the polarities.

    Attributes:
      rho: list indexed by depth d = 0..L-1 of float32 arrays [c**(L-d)], the polarity of the
        edge from each depth-d node to its parent (node i's parent is node i // c).

    Example:
      >>> tree = HLTM(depth=5, num_children=2, delta_lower=0.8, seed=1)
      >>> x, latents = tree.sample(128, seed=(1, 0))   # x: [128, 32], latents[5]: [128, 1]
    """

    def __init__(self, depth=5, num_children=2, delta_lower=0.8, delta_upper=1.0, seed=0,
                 rho=None):
        if depth < 1 or num_children < 2:
            raise ValueError("HLTM needs depth >= 1 and num_children >= 2.")
        if not 0.0 <= delta_lower <= delta_upper <= 1.0:
            raise ValueError("HLTM needs 0 <= delta_lower <= delta_upper <= 1.")
        self.depth = depth
        self.num_children = num_children
        self.delta_lower = delta_lower
        self.delta_upper = delta_upper
        self.seed = seed
        if rho is None:
            rng = np.random.default_rng(seed)
            rho = []
            for d in range(depth):
                n = self.num_nodes(d)
                sign = rng.choice([-1.0, 1.0], size=n)
                rho.append((sign * rng.uniform(delta_lower, delta_upper, size=n)))
        self.rho = [np.asarray(r, np.float32) for r in rho]
        self._keep_prob = [tf.constant((1.0 + r) / 2.0) for r in self.rho]

    @property
    def num_leaves(self):
        return self.num_children ** self.depth

    def num_nodes(self, d):
        """Number of latents at depth d (0 = leaves, L = root)."""
        return self.num_children ** (self.depth - d)

    def sample(self, n, seed, root=None):
        """Samples the tree top-down.

        Args:
          n: batch size.
          seed: shape-[2] int seed for stateless ops.
          root: optional [n, 1] int32 root values to keep (augmentation).
        Returns:
          (x [n, c**L] float32 leaves in {0, 1}, latents dict depth -> [n, c**(L-d)] int32
          for d = 0..L).
        """
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64),
                                                       self.depth + 1)
        if root is None:
            root = tf.cast(tf.random.stateless_uniform([n, 1], seeds[0]) < 0.5, tf.int32)
        z = tf.cast(root, tf.int32)
        latents = {self.depth: z}
        for d in range(self.depth - 1, -1, -1):
            parent = tf.repeat(z, self.num_children, axis=1)
            u = tf.random.stateless_uniform([n, self.num_nodes(d)], seeds[d + 1])
            z = tf.where(u < self._keep_prob[d], parent, 1 - parent)
            latents[d] = z
        return tf.cast(z, tf.float32), latents

    def training_batch(self, batch_size, num_negatives, seed):
        """One contrastive batch (ARCHITECTURE.md): anchor, positive, H negatives.

        Returns dict ``view1`` [B, c**L], ``view2`` [B, c**L] (same root, all else resampled),
        ``negatives`` [B, H, c**L] (independent samples).
        """
        s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
        x1, lat = self.sample(batch_size, s[0])
        x2, _ = self.sample(batch_size, s[1], root=lat[self.depth])
        xn, _ = self.sample(batch_size * num_negatives, s[2])
        return {"view1": x1, "view2": x2,
                "negatives": tf.reshape(xn, [batch_size, num_negatives, self.num_leaves])}

    def dataset(self, batch_size, num_negatives, seed, steps_per_epoch, start_step=0):
        """Endless tf.data of training batches, fresh samples every step.

        Epoch e is drawn in one vectorised call with seed (seed, e) and cut into
        ``steps_per_epoch`` batches: far cheaper than one sampling call per batch, and the
        stream is reproducible from any ``start_step`` (for resuming).
        """
        return forest_dataset([self], batch_size, num_negatives, [seed], steps_per_epoch,
                              start_step)

    def to_dict(self):
        """JSON-able description, polarities included, so a run's tree can be rebuilt."""
        return {"depth": self.depth, "num_children": self.num_children,
                "delta_lower": self.delta_lower, "delta_upper": self.delta_upper,
                "seed": self.seed, "rho": [r.tolist() for r in self.rho]}

    @classmethod
    def from_dict(cls, d):
        return cls(d["depth"], d["num_children"], d["delta_lower"], d["delta_upper"],
                   d["seed"], rho=d["rho"])

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls.from_dict(json.load(f))


def forest_dataset(trees, batch_size, num_negatives, seeds, steps_per_epoch, start_step=0):
    """Endless tf.data of S trees' training batches side by side (:meth:`HLTM.dataset`).

    Batch k holds batch k of every ``trees[i].dataset(..., seeds[i], ...)`` concatenated on
    the last axis (``view1`` [B, S * c**L], ``negatives`` [B, H, S * c**L]), so tree i's
    stream is exactly the single-tree one. The concatenation happens once per epoch, on the
    whole epoch's sample, not per batch: S zipped per-batch streams cost S times the
    per-element tf.data overhead (S = 20 made the input 20x slower than one tree).
    """
    steps = steps_per_epoch
    first_epoch = start_step // steps

    def epoch_batches(e):
        parts = [tree.training_batch(steps * batch_size, num_negatives,
                                     tf.stack([tf.cast(seed, tf.int64), e]))
                 for tree, seed in zip(trees, seeds)]
        b = {k: parts[0][k] if len(parts) == 1 else tf.concat([p[k] for p in parts], -1)
             for k in parts[0]}
        b = {k: tf.reshape(v, tf.concat([[steps, batch_size], tf.shape(v)[1:]], 0))
             for k, v in b.items()}
        return tf.data.Dataset.from_tensor_slices(b)

    ds = tf.data.Dataset.counter(start=first_epoch).flat_map(epoch_batches)
    # No prefetch: a prefetching thread draws the next epoch's sample while the steps run,
    # and on a few CPU cores the two slow each other far more than the draw costs alone
    # (20 seeds: 85 -> 45 ms a step with the draw done at the epoch's start; one seed
    # 2.9 -> 2.6 ms). The batches are the same either way.
    return ds.skip(start_step - first_epoch * steps)
