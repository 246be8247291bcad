"""The 1-D translation toy (Figure 3; docs/theory.md section 5): options.

TensorFlow-free; data, encoder and the selectivity metric are in
:mod:`dualssl_tf.tasks.translation1d.task`, the analysis hooks in
:mod:`dualssl_tf.tasks.translation1d.analysis`.
"""

import dataclasses

from dualssl_tf.options import Section, choice, option, require
from dualssl_tf.tasks.base import TaskSpec


@dataclasses.dataclass
class Translation1DOptions(Section):
    """The circular signal and the one-layer circular-conv encoder."""
    prefix = "translation1d_"
    length: int = option(12, "Translation toy: circular signal length d (>= 4).")
    filters: int = option(8, "Translation toy: filters of the one-layer conv encoder.")
    kernel: int = option(3, "Translation toy: conv kernel size (1..length).")
    pooling: str = option("max", "Translation toy: pooling over positions, max or avg.")
    bias: bool = option(True, "Translation toy: conv bias (a threshold; without it no "
                        "filter can fire for '11' alone).")

    def validate(self, cfg):
        require(self.length >= 4, "translation1d_length",
                f"must be >= 4 to hold the object '101', got {self.length}")
        require(self.filters >= 1, "translation1d_filters",
                f"must be >= 1, got {self.filters}")
        require(1 <= self.kernel <= self.length, "translation1d_kernel",
                f"must be in [1, --translation1d_length={self.length}], got {self.kernel}")
        choice(self.pooling, ("max", "avg"), "translation1d_pooling")
        if cfg.method.method == "contrastive":  # the contrastive method's options only
            require(cfg.contrastive.negatives != "explicit", "negatives",
                    "translation1d has no explicit negatives; use --negatives=auto or batch")


def _validate(cfg):
    cfg.translation1d.validate(cfg)


SPEC = TaskSpec("translation1d", {"translation1d": Translation1DOptions},
                serves=lambda name: name == "translation1d", validate=_validate,
                module="dualssl_tf.tasks.translation1d.task",
                analysis="dualssl_tf.tasks.translation1d.analysis",
                datasets=(("translation1d", "the 1-D translation toy of Figure 3"),))
