"""The HLTM task (the paper's Section 6; docs/theory.md section 4): generated tree data,
the tree-matched network, and the per-depth best-correlation metric."""

import functools

import tensorflow as tf

from dualssl_tf import correlation
from dualssl_tf.data.hltm import HLTM
from dualssl_tf.models.tree_net import TreeNet
from dualssl_tf.run import distribute
from dualssl_tf.run.callbacks import EmbeddingSpread, EpochMetric
from dualssl_tf.tasks.base import Task

# Held-out samples of the collapse monitor (embed_std, effective_rank).
SPREAD_SAMPLES = 256
# Seed stream for the held-out correlation sample; distinct from every training batch seed.
EVAL_SEED_OFFSET = 1_000_003
# Seeds of the evaluation samples (label = root latent): distinct from every training batch
# (seed, step) and from the correlation sample.
PROBE_TRAIN_SEED_OFFSET = 2_000_003
PROBE_TEST_SEED_OFFSET = 2_000_004


def tree_of(cfg):
    """The run's HLTM tree (its polarities are drawn from ``--seed``)."""
    o = cfg.hltm
    return HLTM(o.depth, o.children, o.delta_lower, o.delta_upper, seed=cfg.run.seed)


def build(cfg, start_step=0):
    tree = tree_of(cfg)
    net = TreeNet(cfg.hltm.depth, cfg.hltm.children, cfg.hltm.hid, name="tree_net")
    net(tf.zeros([1, tree.num_leaves]))
    x_eval, latents = tree.sample(cfg.hltm.eval_samples, seed=[cfg.run.seed, EVAL_SEED_OFFSET])
    steps = cfg.optim.steps_per_epoch or cfg.hltm.samples_per_epoch // cfg.optim.batch_size
    return Task(
        make_data=functools.partial(_data, tree, cfg.contrastive.num_negatives, cfg.run.seed,
                                    steps, start_step),
        steps_per_epoch=steps,
        encoder=net,
        input_shape=(tree.num_leaves,),
        callbacks=[HLTMCorrelation(net, x_eval, latents),
                   EmbeddingSpread(net, None, x_eval[:SPREAD_SAMPLES])],
        metadata={"hltm": tree.to_dict()},
        summarize=functools.partial(correlation_table, num_children=cfg.hltm.children))


def _data(tree, num_negatives, seed, steps, start_step, batch_size, input_context=None):
    """HLTM batches of one input pipeline (:attr:`Task.make_data`).

    The pipeline's seed folds in its id; its replicas take consecutive batches, so one
    epoch of ``steps`` global steps is ``steps * replicas_per_pipeline`` batches of this
    stream (sampled in one call), and ``start_step`` resumes at batch
    ``start_step * replicas_per_pipeline``.
    """
    per_pipeline = (1 if input_context is None else
                    input_context.num_replicas_in_sync // input_context.num_input_pipelines)
    return tree.dataset(batch_size, num_negatives, distribute.replica_seed(seed, input_context),
                        steps * per_pipeline, start_step=start_step * per_pipeline)


def eval_data(cfg, batch_size=256, num_train=10000, num_test=5000, tree=None):
    """``(train, test, 2)``: fresh samples of the run's tree labelled by the root latent."""
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

    Evaluated on a fixed held-out HLTM sample (never trained on), so epochs are comparable
    (docs/theory.md section 7 defines the metric).

    Args:
      net: the :class:`TreeNet` being trained.
      x: [n, c**L] held-out leaves; latents: dict depth -> [n, c**(L-d)].
    """

    def __init__(self, net, x, latents):
        super().__init__()
        self.net = net
        self.x = x
        self.latents = latents
        # Compiled once: the held-out sample has a fixed shape, so there is one trace.
        self._pre_activations = tf.function(net.pre_activations)

    def compute(self, epoch=0):
        corr = correlation.best_correlation_by_depth(self._pre_activations, self.x,
                                                     self.latents)
        return {f"best_corr/{d}": v for d, v in corr.items()}


def correlation_table(initial, final, num_children=2):
    """Per-depth table of mean best correlation, at initialisation and after training.

    initial, final: dicts with ``best_corr/<d>`` keys (d = 1 lowest latents .. L root).
    Returns a printable string.
    """
    depths = sorted(int(k.split("/")[1]) for k in initial if k.startswith("best_corr/"))
    top = max(depths)
    rows = ["depth     latents    init   final  change",
            "--------  -------  ------  ------  ------"]
    for d in depths:
        a, b = initial[f"best_corr/{d}"], final[f"best_corr/{d}"]
        label = f"{d} (root)" if d == top else str(d)
        rows.append(f"{label:<8}  {num_children ** (top - d):>7}  {a:6.3f}  {b:6.3f}  "
                    f"{b - a:+6.3f}")
    return "\n".join(rows)
