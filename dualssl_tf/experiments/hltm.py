"""The paper's HLTM experiment (Section 6): generated tree data, the tree-matched network,
and the per-depth best-correlation metric."""

import functools

import tensorflow as tf

from dualssl_tf import callbacks, distribute
from dualssl_tf.data.hltm import HLTM
from dualssl_tf.experiments import Experiment
from dualssl_tf.models.tree_net import TreeNet

# Seed stream for the held-out correlation sample; distinct from every training batch seed.
EVAL_SEED_OFFSET = 1_000_003


def build(cfg, start_step=0):
    tree = HLTM(cfg.hltm_depth, cfg.hltm_children, cfg.hltm_delta_lower,
                cfg.hltm_delta_upper, seed=cfg.seed)
    net = TreeNet(cfg.hltm_depth, cfg.hltm_children, cfg.hltm_hid, name="tree_net")
    net(tf.zeros([1, tree.num_leaves]))
    x_eval, latents = tree.sample(cfg.hltm_eval_samples, seed=[cfg.seed, EVAL_SEED_OFFSET])
    steps = cfg.steps_per_epoch or cfg.hltm_samples_per_epoch // cfg.batch_size
    return Experiment(
        train_data=tree.dataset(cfg.batch_size, cfg.num_negatives, cfg.seed, steps,
                                start_step=start_step),
        steps_per_epoch=steps,
        encoder=net,
        callbacks=[callbacks.HLTMCorrelation(net, x_eval, latents)],
        input_shape=(tree.num_leaves,),
        norm_eps=1e-4,
        metadata={"hltm": tree.to_dict()},
        summarize=functools.partial(correlation_table,
                                    num_children=cfg.hltm_children),
        make_train_data=functools.partial(_replica_data, tree, cfg.num_negatives, cfg.seed,
                                          steps, start_step))


def _replica_data(tree, num_negatives, seed, steps, start_step, batch_size, input_context):
    """Per-replica HLTM batches for one input pipeline (Experiment.make_train_data).

    The pipeline's seed folds in its id; its replicas take consecutive batches, so one
    epoch of ``steps`` global steps is ``steps * replicas_per_pipeline`` batches of this
    stream (sampled in one call), and ``start_step`` resumes at batch
    ``start_step * replicas_per_pipeline``.
    """
    per_pipeline = input_context.num_replicas_in_sync // input_context.num_input_pipelines
    return tree.dataset(batch_size, num_negatives, distribute.replica_seed(seed, input_context),
                        steps * per_pipeline, start_step=start_step * per_pipeline)


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
