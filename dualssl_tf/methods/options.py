"""Option sections of the training methods (TensorFlow-free).

One :class:`~dualssl_tf.options.Section` per method, registered beside the method's module
in :data:`dualssl_tf.methods.METHODS`. A method's options are validated only when
``--method`` selects it.
"""

import dataclasses
import math

from dualssl_tf.options import ConfigError, Section, choice, option, require

# The paper's losses on the distances (r+, r-) of a dual network: docs/theory.md section 2.
LOSS_NAMES = ("simp", "tri", "nce", "ntxent", "cov", "nce_batch")
NEGATIVES = ("auto", "batch", "explicit")
# ln(65504): e^x overflows float16 (max 65504) above this.
FLOAT16_MAX_EXP = math.log(65504.0)


def max_loss_exponent(loss, temperature, margin=0.0):
    """Largest exponent e^x the loss forms for unit embeddings (distances in [0, 2]).

    nce/ntxent: logsumexp of -r/tau; cov: sigmoid(-r/tau); tri: (r+ - r- + r0)/tau; simp and
    nce_batch (batch means divided by the width) form no large exponent: 0.
    """
    if loss in ("nce", "ntxent", "cov"):
        return 2.0 / temperature
    if loss == "tri":
        return (2.0 + margin) / temperature
    return 0.0


@dataclasses.dataclass
class ContrastiveOptions(Section):
    """The contrastive dual network (:class:`dualssl_tf.methods.contrastive.ContrastiveMethod`)."""
    loss: str = option("nce", "Contrastive loss: " + ", ".join(LOSS_NAMES) + ".")
    negatives: str = option("auto", "auto | explicit (H sampled negatives per anchor) | "
                            "batch (SimCLR 2N-2).")
    temperature: float = option(0.1, "tau of the soft-triplet, InfoNCE, NT-Xent and cov "
                                "losses (> 0).")
    margin: float = option(-1.0, "r0 of the soft-triplet loss (>= 0); required with "
                           "--loss=tri, only there.")
    beta: float = option(0.0, "Generalised-loss weight of the positive term (nce, ntxent, "
                         "cov; > -1).")
    num_negatives: int = option(1, "H, explicit negatives per anchor.")
    local_negatives: bool = option(False, "In-batch negatives from the replica's own batch "
                                   "only (default: the global batch, gathered across "
                                   "replicas).")

    def validate(self, cfg):
        choice(self.loss, LOSS_NAMES, "loss")
        choice(self.negatives, NEGATIVES, "negatives")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        if self.loss == "tri":
            require(self.margin != -1.0, "margin", "--loss=tri needs the margin r0 given "
                    "explicitly (>= 0), e.g. --margin=0.5")
            require(self.margin >= 0, "margin", f"must be >= 0, got {self.margin}")
        else:
            require(self.margin == -1.0, "margin", f"only --loss=tri uses a margin, got "
                    f"--margin={self.margin} with --loss={self.loss}; drop --margin")
        require(self.beta > -1, "beta",
                f"must be > -1 (the loss divides by 1 + beta), got {self.beta}")
        require(self.beta == 0 or self.loss in ("nce", "ntxent", "cov"), "beta",
                f"the generalised loss exists for nce, ntxent and cov, not {self.loss!r}; "
                "set --beta=0 or change --loss")
        require(self.num_negatives >= 1, "num_negatives",
                f"must be >= 1, got {self.num_negatives}")

    def check_float16(self):
        """float16 (max 65504) cannot hold e^x for x > 11.09.

        The method computes losses in float32, so this is a conservative guard: it keeps
        every exponent the loss forms representable in the float16 compute dtype;
        bfloat16 has float32's range and has no such limit.
        """
        x = max_loss_exponent(self.loss, self.temperature, self.margin)
        if x > FLOAT16_MAX_EXP:
            need = (2.0 + (self.margin if self.loss == "tri" else 0.0)) / FLOAT16_MAX_EXP
            raise ConfigError("mixed_precision",
                              f"float16 overflows with --loss={self.loss} at --temperature="
                              f"{self.temperature} (e^{x:.1f} > 65504); use "
                              f"--mixed_precision=bfloat16 or --temperature >= "
                              f"{math.ceil(need * 1000) / 1000}")
