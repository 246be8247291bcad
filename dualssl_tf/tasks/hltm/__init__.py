"""The paper's hierarchical latent tree model (docs/theory.md section 4): options.

TensorFlow-free; the data, the tree-matched network and the correlation metric are in
:mod:`dualssl_tf.tasks.hltm.task`, the analysis hooks in :mod:`dualssl_tf.tasks.hltm.analysis`.
"""

import dataclasses

from dualssl_tf.options import Section, option, require
from dualssl_tf.tasks.base import TaskSpec

MAX_LEAVES = 2 ** 20  # c**L inputs; beyond this one batch no longer fits in memory


@dataclasses.dataclass
class HLTMOptions(Section):
    """The tree (depth, children, polarity range) and the network matched to it."""
    prefix = "hltm_"
    depth: int = option(5, "HLTM depth L (>= 1).")
    children: int = option(2, "HLTM children per latent (>= 2).")
    hid: int = option(10, "Hidden units per latent group of the tree network (>= 1).")
    delta_lower: float = option(0.8, "Lower bound of |polarity| in [0, 1].")
    delta_upper: float = option(1.0, "Upper bound of |polarity| in [0, 1].")
    samples_per_epoch: int = option(64000, "Fresh HLTM samples per training epoch.")
    eval_samples: int = option(64000, "Held-out HLTM samples for the correlation metric.")
    seeds: int = option(1, "Independent HLTM experiments S trained at once as one model "
                        "(a seed axis in the network and the data, one loss per seed, "
                        "summed): seed i = 0..S-1 is the single-seed run with --seed=<seed>+i "
                        "(its own tree, initial weights and data stream).")

    def validate(self, cfg):
        require(self.depth >= 1, "hltm_depth", f"must be >= 1, got {self.depth}")
        require(self.children >= 2, "hltm_children", f"must be >= 2, got {self.children}")
        require(self.hid >= 1, "hltm_hid", f"must be >= 1, got {self.hid}")
        for flag, value in (("hltm_delta_lower", self.delta_lower),
                            ("hltm_delta_upper", self.delta_upper)):
            require(0.0 <= value <= 1.0, flag, f"must be in [0, 1], got {value}")
        require(self.children ** self.depth <= MAX_LEAVES, "hltm_depth",
                f"--hltm_children={self.children} ** --hltm_depth={self.depth} leaves "
                f"exceed {MAX_LEAVES}; use a smaller tree")
        require(cfg.data.encoder == "auto", "encoder",
                f"hltm trains its tree network; use --encoder=auto, got {cfg.data.encoder!r}")
        require(self.delta_lower <= self.delta_upper, "hltm_delta_lower",
                f"must be <= --hltm_delta_upper ({self.delta_upper}), got {self.delta_lower}")
        require(self.samples_per_epoch >= cfg.optim.batch_size, "hltm_samples_per_epoch",
                f"must be >= --batch_size ({cfg.optim.batch_size}), got "
                f"{self.samples_per_epoch}")
        require(self.eval_samples >= 2, "hltm_eval_samples",
                f"must be >= 2, got {self.eval_samples}")
        require(self.seeds >= 1, "hltm_seeds", f"must be >= 1, got {self.seeds}")
        if self.seeds > 1:
            require(cfg.optim.optimizer != "lars", "hltm_seeds",
                    "LARS's layer-wise trust ratio would couple the seeds (one norm over "
                    "every seed's weights); use --optimizer=sgd, adam or adamw")
            require(not cfg.analysis.every, "hltm_seeds",
                    "--analysis_every monitors one tree network; use --hltm_seeds=1")
            # A predictor/projector MLP would be one network shared by every seed.
            require(cfg.method.method == "contrastive", "hltm_seeds",
                    f"several seeds train --method=contrastive only (got "
                    f"--method={cfg.method.method}); use --hltm_seeds=1")
        if cfg.method.method == "contrastive":  # the contrastive method's options only
            require(cfg.contrastive.negatives != "batch"
                    or cfg.contrastive.loss != "nce_batch", "negatives",
                    "nce_batch is the official code's explicit-negative form; use "
                    "--negatives=explicit")


def _validate(cfg):
    cfg.hltm.validate(cfg)


SPEC = TaskSpec("hltm", {"hltm": HLTMOptions}, serves=lambda name: name == "hltm",
                validate=_validate, module="dualssl_tf.tasks.hltm.task",
                analysis="dualssl_tf.tasks.hltm.analysis",
                datasets=(("hltm", "generated latent tree, the default; no download"),))
