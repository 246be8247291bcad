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


# -- the non-contrastive dual networks (BYOL, SimSiam; DirectPred as a predictor) ----------

# --byol_predictor / --simsiam_predictor: a trained MLP, none (the online projection is
# compared with the target directly), or DirectPred's linear predictor set in closed form.
PREDICTORS = ("mlp", "none", "directpred")


@dataclasses.dataclass
class _PredictorOptions(Section):
    """Fields shared by BYOL and SimSiam (each method has its own prefixed copy).

    The predictor's output size is the projection's (``--proj_dim`` for images, the
    representation without a head), the only size whose cosine to the target exists.

    Within a method, the options of a switch that is off are ignored, not refused (the
    mlp predictor's width with ``--*_predictor=none``, the momentum with ``--nobyol_ema``):
    a switch can then be flipped on top of a flagfile, as the collapse study does.
    """
    predictor: str = option("mlp", "Predictor on the online projection: mlp (trained "
                            "Linear-BN-ReLU-Linear) | none | directpred (linear, not trained: "
                            "set from the eigen-decomposition of the moving-average "
                            "correlation F of the online projections; Tian et al. 2021).")
    pred_hidden_dim: int = option(512, "Hidden width of the mlp predictor (>= 1; mlp only).")
    pred_bn: bool = option(True, "BatchNorm in the mlp predictor's hidden layer (mlp only; "
                           "off: the BN-free predictor of the collapse study).")
    directpred_rate: float = option(0.3, "DirectPred: F <- rate * F + (1 - rate) * "
                                    "E[z z^T] every step (rho, in [0, 1)).")
    directpred_every: int = option(1, "DirectPred: set the predictor from F every k steps "
                                   "(>= 1).")
    directpred_eps: float = option(0.01, "DirectPred: s_j = sqrt(p_j) / max sqrt(p) + eps "
                                   "(>= 0).")
    pred_lr_mult: float = option(1.0, "The mlp predictor's learning rate = the rest's x this "
                                 "(> 0; the relative predictor rate alpha_p of Tian, Chen & "
                                 "Ganguli 2021's analysis). Needs --weight_decay=0 or "
                                 "--weight_decay_mode=coupled (or lars).")
    pred_fixed_lr: bool = option(False, "The mlp predictor's rate unscheduled: the base rate "
                                 "(after --lr_scaling, x the multiplier) at every step, "
                                 "warmup included (SimSiam's fix_lr, solo-learn's "
                                 "static_lr).")

    def validate(self, cfg):
        p = self.prefix
        choice(self.predictor, PREDICTORS, p + "predictor")
        require(self.pred_hidden_dim >= 1, p + "pred_hidden_dim",
                f"must be >= 1 (the predictor's hidden width), got {self.pred_hidden_dim}")
        require(0 <= self.directpred_rate < 1, p + "directpred_rate",
                f"must be in [0, 1), got {self.directpred_rate}")
        require(self.directpred_every >= 1, p + "directpred_every",
                f"must be >= 1 (steps), got {self.directpred_every}")
        require(self.directpred_eps >= 0, p + "directpred_eps",
                f"must be >= 0, got {self.directpred_eps}")
        require(self.pred_lr_mult > 0, p + "pred_lr_mult",
                f"must be > 0, got {self.pred_lr_mult}")
        o = cfg.optim
        grouped = self.predictor == "mlp" and (self.pred_lr_mult != 1 or self.pred_fixed_lr)
        if grouped and o.weight_decay and o.optimizer != "lars" and (
                o.optimizer == "adamw" or o.weight_decay_mode == "decoupled"):
            flag = p + ("pred_lr_mult" if self.pred_lr_mult != 1 else "pred_fixed_lr")
            raise ConfigError(flag, "Keras' decoupled weight decay runs at one rate for all "
                              "variables, so the predictor's rate cannot apply to it; set "
                              "--weight_decay_mode=coupled (sgd, adam) or --weight_decay=0")


@dataclasses.dataclass
class BYOLOptions(_PredictorOptions):
    """BYOL (Grill et al. 2020): a predictor and a moving-average target
    (:class:`dualssl_tf.methods.byol.BYOLMethod`)."""
    prefix = "byol_"
    pred_hidden_dim: int = option(4096, "Hidden width of the mlp predictor (>= 1; mlp "
                                  "only; BYOL: 4096).")
    base_momentum: float = option(0.996, "Target momentum tau at the first step, in [0, 1] "
                                  "(BYOL: 0.996); it rises to --byol_final_momentum by a "
                                  "cosine over the run (with --byol_ema only).")
    final_momentum: float = option(1.0, "Target momentum at the last step, in [0, 1] "
                                   "(BYOL: 1).")
    ema: bool = option(True, "Moving-average target; --nobyol_ema: the target is the online "
                       "network under stop-gradient (SimSiam's target with BYOL's loss).")

    def validate(self, cfg):
        super().validate(cfg)
        for flag, value in (("byol_base_momentum", self.base_momentum),
                            ("byol_final_momentum", self.final_momentum)):
            require(0.0 <= value <= 1.0, flag, f"must be in [0, 1], got {value}")


@dataclasses.dataclass
class SimSiamOptions(_PredictorOptions):
    """SimSiam (Chen & He 2021): a predictor and a stop-gradient target, no moving average
    (:class:`dualssl_tf.methods.byol.SimSiamMethod`)."""
    prefix = "simsiam_"
    stop_gradient: bool = option(True, "Stop-gradient on the target branch; "
                                 "--nosimsiam_stop_gradient: the collapsing variant of the "
                                 "SimSiam paper.")


# -- DINO (self-distillation with no labels) ------------------------------------------------

@dataclasses.dataclass
class DINOOptions(Section):
    """DINO (Caron et al. 2021): a student and a moving-average teacher with DINO heads,
    the teacher's output centred and sharpened (:class:`dualssl_tf.methods.dino.DINOMethod`).
    Defaults are the paper's (facebookresearch/dino main_dino.py; the temperature warm-up
    of its ViT-S/16 recipe); configs/dino_cifar10.cfg sets solo-learn's CIFAR recipe."""
    prefix = "dino_"
    out_dim: int = option(65536, "K, the DINO head's output (prototypes; >= 1; paper 65536, "
                          "solo-learn CIFAR 4096).")
    hidden_dim: int = option(2048, "Hidden width of the DINO head's MLP (>= 1).")
    bottleneck_dim: int = option(256, "Bottleneck of the DINO head: the MLP's output, "
                                 "L2-normalised before the last layer (>= 1).")
    head_layers: int = option(3, "Dense layers of the DINO head's MLP (>= 1; 3: "
                              "Linear-GELU-Linear-GELU-Linear).")
    head_bn: bool = option(False, "BatchNorm after the hidden Dense layers of the head "
                           "(DINO's use_bn_in_head; off in the paper and solo-learn).")
    norm_last_layer: bool = option(True, "Weight-normalised last layer with its scale fixed "
                                   "at 1 (the paper's default); --nodino_norm_last_layer: "
                                   "the scale is trained.")
    student_temp: float = option(0.1, "Student temperature (> 0).")
    teacher_temp: float = option(0.07, "Teacher temperature after the warm-up (> 0).")
    warmup_teacher_temp: float = option(0.04, "Teacher temperature at epoch 0 (> 0); it "
                                        "rises linearly to --dino_teacher_temp over "
                                        "--dino_warmup_teacher_temp_epochs, per epoch.")
    warmup_teacher_temp_epochs: int = option(30, "Epochs of the teacher-temperature "
                                             "warm-up (>= 0; 0: --dino_teacher_temp "
                                             "throughout).")
    center_momentum: float = option(0.9, "Centre <- m centre + (1 - m) mean of the global "
                                    "batch's teacher outputs (m in [0, 1)).")
    base_momentum: float = option(0.996, "Teacher momentum at the first step, in [0, 1]; "
                                  "it rises to --dino_final_momentum by a cosine over the "
                                  "run.")
    final_momentum: float = option(1.0, "Teacher momentum at the last step, in [0, 1].")
    freeze_last_layer: int = option(1, "Epochs during which the head's last layer is not "
                                    "updated (>= 0; the paper and solo-learn: 1).")

    def validate(self, cfg):
        for flag in ("out_dim", "hidden_dim", "bottleneck_dim", "head_layers"):
            value = getattr(self, flag)
            require(value >= 1, "dino_" + flag, f"must be >= 1, got {value}")
        for flag in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            value = getattr(self, flag)
            require(math.isfinite(value) and value > 0, "dino_" + flag,
                    f"must be > 0, got {value}")
        require(self.warmup_teacher_temp_epochs >= 0, "dino_warmup_teacher_temp_epochs",
                f"must be >= 0, got {self.warmup_teacher_temp_epochs}")
        require(0 <= self.center_momentum < 1, "dino_center_momentum",
                f"must be in [0, 1), got {self.center_momentum}")
        for flag in ("base_momentum", "final_momentum"):
            value = getattr(self, flag)
            require(0.0 <= value <= 1.0, "dino_" + flag, f"must be in [0, 1], got {value}")
        require(self.freeze_last_layer >= 0, "dino_freeze_last_layer",
                f"must be >= 0 (epochs), got {self.freeze_last_layer}")
