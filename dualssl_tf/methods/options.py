"""Option sections of the training methods (TensorFlow-free).

One :class:`~dualssl_tf.options.Section` per method, registered beside the method's module
in :data:`dualssl_tf.methods.METHODS`. A method's options are validated only when
``--method`` selects it.
"""

import dataclasses
import math

from dualssl_tf.options import ConfigError, Section, choice, option, require

# The paper's losses on the distances (r+, r-) of a dual network: docs/theory.md section 2.
# alpha_cl: the pair-weighted loss of the authors' follow-up (Tian 2022; docs/methods.md).
LOSS_NAMES = ("simp", "tri", "nce", "ntxent", "cov", "nce_batch", "alpha_cl")
# --alpha_cl_form (dualssl_tf.losses.ALPHA_CL_FORMS; this module stays TensorFlow-free).
ALPHA_CL_FORMS = ("exp", "inverse")
NEGATIVES = ("auto", "batch", "explicit")
# ln(65504): e^x overflows float16 (max 65504) above this.
FLOAT16_MAX_EXP = math.log(65504.0)


def max_loss_exponent(loss, temperature, margin=0.0):
    """Largest exponent e^x the loss forms for unit embeddings (distances in [0, 2]).

    nce/ntxent: logsumexp of -r/tau; cov: sigmoid(-r/tau); tri: (r+ - r- + r0)/tau; simp,
    nce_batch (batch means divided by the width) and alpha_cl (its weights from
    logarithms, in float32) form no large exponent: 0.
    """
    if loss in ("nce", "ntxent", "cov"):
        return 2.0 / temperature
    if loss == "tri":
        return (2.0 + margin) / temperature
    return 0.0


ALPHA_CL_OPTIONS = ("alpha_cl_form", "alpha_cl_exponent", "alpha_cl_eps",
                    "alpha_cl_inverse_exponent", "alpha_cl_pos_weight")


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
    # alpha-CL (--loss=alpha_cl): the official code's nce_loss options, with its defaults.
    alpha_cl_form: str = option("exp", "alpha-CL pair weight w(x) of x = r_k^p: exp "
                                "(e^{-x/tau}) | inverse (1/(x + tau)^q); --loss=alpha_cl "
                                "only.")
    alpha_cl_exponent: float = option(1.0, "alpha-CL p of x = r_k^p (> 0; 1: InfoNCE's "
                                      "weights, 2: the paper's p = 4 in d); --loss=alpha_cl "
                                      "only.")
    alpha_cl_eps: float = option(0.1, "alpha-CL constant in the normaliser, alpha_k = w_k / "
                                 "(sum_j w_j + eps H) (>= 0); --loss=alpha_cl only.")
    alpha_cl_inverse_exponent: float = option(1.0, "alpha-CL q of the inverse form (> 0); "
                                              "--alpha_cl_form=inverse only.")
    alpha_cl_pos_weight: float = option(0.0, "alpha-CL weight of the positive pair's w(r+) "
                                        "in the normaliser (>= 0; 1 with the exp form, p "
                                        "1 and eps 0: InfoNCE's gradient exactly); "
                                        "--loss=alpha_cl only.")

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
        self._validate_alpha_cl()

    def _validate_alpha_cl(self):
        defaults = {f: type(self).__dataclass_fields__[f].default for f in ALPHA_CL_OPTIONS}
        if self.loss != "alpha_cl":
            for flag, default in defaults.items():
                require(getattr(self, flag) == default, flag,
                        f"only --loss=alpha_cl uses it, got --{flag}={getattr(self, flag)} "
                        f"with --loss={self.loss}; drop --{flag}")
            return
        choice(self.alpha_cl_form, ALPHA_CL_FORMS, "alpha_cl_form")
        for flag, low, strict in (("alpha_cl_exponent", 0, True), ("alpha_cl_eps", 0, False),
                                  ("alpha_cl_inverse_exponent", 0, True),
                                  ("alpha_cl_pos_weight", 0, False)):
            value = getattr(self, flag)
            ok = math.isfinite(value) and (value > low if strict else value >= low)
            require(ok, flag, f"must be {'>' if strict else '>='} {low}, got {value}")
        require(self.alpha_cl_form == "inverse" or self.alpha_cl_inverse_exponent == 1.0,
                "alpha_cl_inverse_exponent", "only --alpha_cl_form=inverse uses it; drop "
                "--alpha_cl_inverse_exponent or set --alpha_cl_form=inverse")

    def alpha_cl(self):
        """The keyword arguments of :func:`dualssl_tf.losses.alpha_cl_loss` (beside tau)."""
        return {"form": self.alpha_cl_form, "exponent": self.alpha_cl_exponent,
                "eps": self.alpha_cl_eps, "inverse_exponent": self.alpha_cl_inverse_exponent,
                "pos_weight": self.alpha_cl_pos_weight}

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


# -- momentum contrast (MoCo v2, MoCo v3) ---------------------------------------------------


@dataclasses.dataclass
class _MomentumContrastOptions(Section):
    """Fields shared by MoCo v2 and v3 (each method has its own prefixed copy, as BYOL and
    SimSiam: a method's flags are refused with another method)."""
    temperature: float = option(0.2, "tau of the InfoNCE loss (> 0; MoCo v2 and v3: 0.2).")
    base_momentum: float = option(0.99, "Key (momentum) encoder momentum at the first step, "
                                  "in [0, 1]; it moves to the final momentum by a cosine "
                                  "over the run (equal values: constant).")
    final_momentum: float = option(1.0, "Key encoder momentum at the last step, in [0, 1].")

    def validate(self, cfg):
        p = self.prefix
        require(self.temperature > 0, p + "temperature",
                f"must be > 0, got {self.temperature}")
        for name in ("base_momentum", "final_momentum"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, p + name, f"must be in [0, 1], got {value}")


@dataclasses.dataclass
class MoCoV2Options(_MomentumContrastOptions):
    """MoCo v2 (He et al. 2020; Chen et al. 2020): a queue of keys from a momentum encoder
    (:class:`dualssl_tf.methods.moco.MoCoV2Method`)."""
    prefix = "mocov2_"
    base_momentum: float = option(0.999, "Key encoder momentum at the first step, in [0, 1] "
                                  "(MoCo v2: 0.999, constant; solo-learn's mocov2plus: 0.99 "
                                  "-> 0.999 by a cosine).")
    final_momentum: float = option(0.999, "Key encoder momentum at the last step, in [0, 1] "
                                   "(MoCo v2: 0.999).")
    queue_size: int = option(65536, "K, keys in the queue of negatives (>= 1, a multiple of "
                             "--batch_size; MoCo v2: 65536).")
    symmetric: bool = option(False, "Both view orders, one queue of keys per view (solo-learn's "
                             "mocov2plus); off: MoCo v2's query of view 1 against the key of "
                             "view 2.")

    def validate(self, cfg):
        super().validate(cfg)
        require(self.queue_size >= 1, "mocov2_queue_size",
                f"must be >= 1, got {self.queue_size}")
        batch = cfg.optim.batch_size
        require(batch <= 0 or self.queue_size % batch == 0, "mocov2_queue_size",
                f"{self.queue_size} is not a multiple of the global batch --batch_size="
                f"{batch} (every step enqueues the whole batch's keys); use e.g. "
                f"{max(1, round(self.queue_size / batch)) * batch}")


@dataclasses.dataclass
class MoCoV3Options(_MomentumContrastOptions):
    """MoCo v3 (Chen, Xie & He 2021): a predictor, a momentum encoder and in-batch InfoNCE
    (:class:`dualssl_tf.methods.moco.MoCoV3Method`)."""
    prefix = "mocov3_"
    base_momentum: float = option(0.99, "Key encoder momentum at the first step, in [0, 1] "
                                  "(MoCo v3: 0.99, rising to 1 by a cosine).")
    pred_hidden_dim: int = option(4096, "Hidden width of the predictor (>= 1; MoCo v3 "
                                  "ResNet: 4096).")

    def validate(self, cfg):
        super().validate(cfg)
        require(self.pred_hidden_dim >= 1, "mocov3_pred_hidden_dim",
                f"must be >= 1 (the predictor's hidden width), got {self.pred_hidden_dim}")
# -- the redundancy-reduction methods (Barlow Twins, VICReg): their own projector -----------


@dataclasses.dataclass
class _ProjectorOptions(Section):
    """The projector a method owns (each method has its own prefixed copy): ``layers`` Dense
    layers, BatchNorm + ReLU after each but the last (Barlow Twins' and VICReg's 3 x 8192).
    It replaces the task's ``--proj_*`` head; the head-less toy tasks (HLTM, translation1d)
    stay head-less."""
    proj_hidden_dim: int = option(8192, "Hidden width of the method's projector (>= 1; "
                                  "the paper: 8192; solo-learn's CIFAR recipe: 2048).")
    proj_dim: int = option(8192, "Output width D of the method's projector (>= 1; the paper: "
                           "8192; solo-learn's CIFAR recipe: 2048).")
    proj_layers: int = option(3, "Dense layers of the method's projector (>= 1; BatchNorm + "
                              "ReLU after all but the last; the paper: 3). It replaces the "
                              "images task's --proj_* head.")

    def validate(self, cfg):
        p = self.prefix
        for name in ("proj_hidden_dim", "proj_dim", "proj_layers"):
            value = getattr(self, name)
            require(value >= 1, p + name, f"must be >= 1, got {value}")


@dataclasses.dataclass
class BarlowOptions(_ProjectorOptions):
    """Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views'
    projections, standardised over the global batch, pushed to the identity
    (:class:`dualssl_tf.methods.barlow.BarlowTwinsMethod`)."""
    prefix = "barlow_"
    lambd: float = option(0.0051, "lambda, the weight of the off-diagonal "
                          "(redundancy-reduction) term, >= 0 (the paper: 0.0051; named as "
                          "the official code's --lambd).")
    scale_loss: float = option(1.0, "Factor of the whole loss, > 0 (the paper and lightly: "
                               "1; solo-learn's scale_loss: 0.1 in its CIFAR recipe).")

    def validate(self, cfg):
        super().validate(cfg)
        require(self.lambd >= 0, "barlow_lambd", f"must be >= 0, got {self.lambd}")
        require(self.scale_loss > 0, "barlow_scale_loss",
                f"must be > 0, got {self.scale_loss}")


@dataclasses.dataclass
class VICRegOptions(_ProjectorOptions):
    """VICReg (Bardes et al. 2022): invariance, variance and covariance terms over the
    global batch (:class:`dualssl_tf.methods.vicreg.VICRegMethod`)."""
    prefix = "vicreg_"
    sim_coeff: float = option(25.0, "lambda: weight of the invariance (mean squared error) "
                              "term, >= 0 (the paper: 25).")
    std_coeff: float = option(25.0, "mu: weight of the variance hinge, >= 0 (the paper: 25).")
    cov_coeff: float = option(1.0, "nu: weight of the covariance term, >= 0 (the paper: 1).")

    def validate(self, cfg):
        super().validate(cfg)
        for name in ("sim_coeff", "std_coeff", "cov_coeff"):
            value = getattr(self, name)
            require(value >= 0, "vicreg_" + name, f"must be >= 0, got {value}")
        # The variance and covariance are unbiased (divided by N - 1).
        require(cfg.optim.batch_size >= 2, "batch_size",
                f"--method=vicreg needs >= 2 examples per batch, got {cfg.optim.batch_size}")
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
    clip_grad: float = option(0.0, "Clip each variable's gradient to this norm (DINO's "
                              "utils.clip_gradients, the paper's 3.0; after the replicas' "
                              "sum); 0 = no clipping.")

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
        require(self.clip_grad >= 0, "dino_clip_grad",
                f"must be >= 0 (0 = no clipping), got {self.clip_grad}")
