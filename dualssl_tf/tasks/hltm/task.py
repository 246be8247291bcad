"""The HLTM task (the paper's Section 6; docs/theory.md section 4): generated tree data,
the tree-matched network, and the per-depth best-correlation metric."""

import functools

import numpy as np
import tensorflow as tf

from dualssl_tf import correlation, cross_replica
from dualssl_tf.data.hltm import HLTM, forest_dataset
from dualssl_tf.models.tree_net import TreeNet
from dualssl_tf.monitors.base import EpochMetric
from dualssl_tf.monitors.collapse import EmbeddingSpread
from dualssl_tf.tasks.base import Task

# Held-out samples of the collapse monitor (embed_std, effective_rank).
SPREAD_SAMPLES = 256
# Seed stream for the held-out correlation sample; distinct from every training batch seed.
EVAL_SEED_OFFSET = 1_000_003
# Seeds of the evaluation samples (label = root latent): distinct from every training batch
# (seed, step) and from the correlation sample.
PROBE_TRAIN_SEED_OFFSET = 2_000_003
PROBE_TEST_SEED_OFFSET = 2_000_004


def seeds_of(cfg):
    """The run's seeds: seed i of ``--hltm_seeds=S`` is ``--seed + i``, i = 0..S-1."""
    return [cfg.run.seed + i for i in range(cfg.hltm.seeds)]


def tree_of(cfg, seed=None):
    """The HLTM tree of ``seed`` (default ``--seed``): its polarities are drawn from it."""
    o = cfg.hltm
    return HLTM(o.depth, o.children, o.delta_lower, o.delta_upper,
                seed=cfg.run.seed if seed is None else seed)


def build(cfg, start_step=0):
    """One tree, network, data stream and held-out sample per seed; S = 1 is the classic
    run (encoder output [B, hid]), S > 1 a forest (encoder [B, S * c**L] -> [B, S, hid])."""
    seeds = seeds_of(cfg)
    trees = [tree_of(cfg, s) for s in seeds]
    net = TreeNet(cfg.hltm.depth, cfg.hltm.children, cfg.hltm.hid,
                  seed=seeds[0] if len(seeds) == 1 else seeds, name="tree_net")
    net(tf.zeros([1, len(seeds) * trees[0].num_leaves]))
    held_out = [tree.sample(cfg.hltm.eval_samples, seed=[s, EVAL_SEED_OFFSET])
                for tree, s in zip(trees, seeds)]
    steps = cfg.optim.steps_per_epoch or cfg.hltm.samples_per_epoch // cfg.optim.batch_size
    metadata = {"hltm": trees[0].to_dict()}
    if len(seeds) > 1:
        metadata["hltm_trees"] = [t.to_dict() for t in trees]
    return Task(
        make_data=functools.partial(_data, trees, cfg.contrastive.num_negatives, seeds,
                                    steps, start_step),
        steps_per_epoch=steps,
        encoder=net,
        input_shape=(len(seeds) * trees[0].num_leaves,),
        # The collapse monitor reads one network's [N, hid] embedding: one seed only.
        callbacks=[HLTMCorrelation(net, [x for x, _ in held_out],
                                   [lat for _, lat in held_out])]
        + ([EmbeddingSpread(net, None, held_out[0][0][:SPREAD_SAMPLES])]
           if len(seeds) == 1 else []),
        metadata=metadata,
        summarize=functools.partial(correlation_table, num_children=cfg.hltm.children))


def _data(trees, num_negatives, seeds, steps, start_step, batch_size, input_context=None):
    """HLTM batches of one input pipeline (:attr:`Task.make_data`).

    The pipeline's seed folds in its id; its replicas take consecutive batches, so one
    epoch of ``steps`` global steps is ``steps * replicas_per_pipeline`` batches of this
    stream (sampled in one call), and ``start_step`` resumes at batch
    ``start_step * replicas_per_pipeline``. With several seeds, seed i's stream is the
    single-seed run's, and the batch holds the S streams' leaves side by side
    (``view1`` [B, S * c**L], ``negatives`` [B, H, S * c**L]).
    """
    per_pipeline = (1 if input_context is None else
                    input_context.num_replicas_in_sync // input_context.num_input_pipelines)
    return forest_dataset(trees, batch_size, num_negatives,
                          [cross_replica.replica_seed(seed, input_context) for seed in seeds],
                          steps * per_pipeline, start_step=start_step * per_pipeline)


def eval_data(cfg, batch_size=256, num_train=10000, num_test=5000, tree=None,
              metadata=None):
    """``(train, test, 2)``: fresh samples of the run's tree labelled by the root latent
    (``metadata`` is not needed: the flags rebuild the tree)."""
    tree = tree or tree_of(cfg)
    splits = []
    for n, offset in ((num_train, PROBE_TRAIN_SEED_OFFSET), (num_test, PROBE_TEST_SEED_OFFSET)):
        if n < 1:
            raise ValueError(f"--num_examples: the hltm split would be empty ({n} samples)")
        x, latents = tree.sample(n, seed=[cfg.run.seed, offset])
        labels = tf.cast(tf.reshape(latents[tree.depth], [-1]), tf.int64)
        splits.append(tf.data.Dataset.from_tensor_slices((x, labels)).batch(batch_size)
                      .prefetch(2))
    return splits[0], splits[1], 2


class HLTMCorrelation(EpochMetric):
    """Adds the per-depth best correlation ``best_corr/<d>`` to the epoch logs.

    Evaluated on a fixed held-out HLTM sample per seed (never trained on), so epochs are
    comparable (docs/theory.md section 7 defines the metric). One seed is evaluated as it
    always was. Several seeds are evaluated together: the S held-out samples are stacked side
    by side ([n, S * c**L], seed s's leaves in block s, as in training) and streamed through
    the forest in chunks (:func:`correlation.best_correlation_streamed`: float64 shifted
    sums over all S * groups columns; each column's statistics are its own, so seed s's
    values equal evaluating it alone, to float tolerance).

    With one seed the logs are ``best_corr/<d>`` only. With S > 1: ``best_corr/<d>`` is the
    mean over seeds, ``best_corr_sd/<d>`` the standard deviation (ddof 1),
    ``best_corr_seeds/<d>`` the S per-seed values, ``dead/<d>`` the fraction of (seed, group)
    pairs at depth d whose units are all constant on the sample (best correlation exactly
    0: no gradient can reach them through the ReLUs) and ``dead_seeds/<d>`` that fraction
    per seed.

    Args:
      net: the :class:`TreeNet` (or forest) being trained.
      x: list over seeds of [n, c**L] held-out leaves; latents: list over seeds of dicts
        depth -> [n, c**(L-d)]. (A single array and dict are one seed.)
    """

    def __init__(self, net, x, latents):
        super().__init__()
        self.net = net
        self.xs = list(x) if isinstance(x, (list, tuple)) else [x]
        self.latent_list = list(latents) if isinstance(latents, (list, tuple)) else [latents]
        self.x, self.latents = self.xs[0], self.latent_list[0]  # seed 0 (analysis hooks)
        self.num_seeds = len(self.xs)
        if self.num_seeds == 1:
            # Compiled once: the held-out sample has one fixed shape.
            self._pre_activations = tf.function(lambda x: net.pre_activations(x, tree=0))
        else:
            # [n, S * c**L]: seed s's leaves in block s, the forest's own input layout; the
            # latents likewise [n, S * c**(L-d)] per depth (seed-major columns, matching the
            # forest's [n, S * c**(L-d), hid] pre-activations).
            self._x_all = tf.concat([tf.convert_to_tensor(x) for x in self.xs], axis=-1)
            self._latents_all = {d: tf.concat([tf.convert_to_tensor(l[d])
                                               for l in self.latent_list], axis=-1)
                                 for d in self.latents}
            self._pre_activations = tf.function(lambda x: net.pre_activations(x))

    def per_seed(self):
        """{depth: [S, groups]} best correlation of every group of every seed."""
        if self.num_seeds == 1:
            groups = correlation.best_correlation_groups_by_depth(
                self._pre_activations, self.x, self.latents)
            return {d: np.asarray(v)[None] for d, v in groups.items()}
        groups = correlation.best_correlation_streamed(
            self._pre_activations, self._x_all, self._latents_all)
        return {d: np.asarray(v).reshape(self.num_seeds, -1) for d, v in groups.items()}

    def compute(self, epoch=0):
        groups = self.per_seed()
        if len(self.xs) == 1:  # the classic run's logs, computed as they always were
            return {f"best_corr/{d}": float(tf.reduce_mean(g[0])) for d, g in groups.items()}
        logs = {}
        for d, g in groups.items():
            per_seed = tf.reduce_mean(tf.constant(g, tf.float64), axis=1).numpy()  # [S]
            dead = (g == 0.0).mean(axis=1)
            logs.update({f"best_corr/{d}": float(per_seed.mean()),
                         f"best_corr_sd/{d}": float(per_seed.std(ddof=1)),
                         f"best_corr_seeds/{d}": per_seed,
                         f"dead/{d}": float(dead.mean()), f"dead_seeds/{d}": dead})
        return logs


def correlation_table(initial, final, num_children=2):
    """Per-depth table of mean best correlation, at initialisation and after training.

    initial, final: dicts with ``best_corr/<d>`` keys (d = 1 lowest latents .. L root);
    with ``best_corr_seeds/<d>`` (several seeds) the table gives mean +- sd over seeds, the
    dead fraction at initialisation and how many seeds improved.
    Returns a printable string.
    """
    depths = sorted(int(k.split("/")[1]) for k in initial if k.startswith("best_corr/"))
    top = max(depths)
    label = lambda d: f"{d} (root)" if d == top else str(d)
    if f"best_corr_seeds/{depths[0]}" not in initial:
        rows = ["depth     latents    init   final  change",
                "--------  -------  ------  ------  ------"]
        for d in depths:
            a, b = initial[f"best_corr/{d}"], final[f"best_corr/{d}"]
            rows.append(f"{label(d):<8}  {num_children ** (top - d):>7}  {a:6.3f}  {b:6.3f}  "
                        f"{b - a:+6.3f}")
        return "\n".join(rows)
    n = len(initial[f"best_corr_seeds/{depths[0]}"])
    rows = [f"{n} seeds: mean +- sd over seeds; dead = fraction of groups with every unit "
            "constant at init",
            "depth     latents  init            final           change   dead  improved",
            "--------  -------  --------------  --------------  -------  ----  --------"]
    for d in depths:
        a = np.asarray(initial[f"best_corr_seeds/{d}"])
        b = np.asarray(final[f"best_corr_seeds/{d}"])
        rows.append(f"{label(d):<8}  {num_children ** (top - d):>7}  "
                    f"{a.mean():.3f} +- {a.std(ddof=1):.3f}  {b.mean():.3f} +- "
                    f"{b.std(ddof=1):.3f}  {(b - a).mean():+.3f}  "
                    f"{initial[f'dead/{d}']:.2f}  {int((b > a).sum()):>3}/{n}")
    return "\n".join(rows)
