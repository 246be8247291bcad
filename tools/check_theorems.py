"""Print the theorem-check residuals: python tools/check_theorems.py [--points=6 --augs=3]

Builds a small bias-free float64 ReLU MLP, M base points with A enumerated Gaussian
augmentations, and reports relative errors ||grad - closed form|| / ||closed form|| for
Theorem 1 (pair gradient), Theorem 3 (L_simp = OP vec W), Theorem 4 (L_cov = OP_xi vec W)
per layer and tower mode, and the Theorem-4 augmentation residue of L_nce / L_tri as the
augmentation strength grows. Bad flags: one line on stderr, exit 2.
"""

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import cli  # noqa: E402
from dualssl_tf.options import ConfigError, Section, option, require  # noqa: E402

TOOL = "check_theorems.py"


@dataclasses.dataclass
class CheckOptions(Section):
    """The flags of tools/check_theorems.py (validated before TensorFlow is imported)."""
    points: int = option(6, "Base points M (>= 2).")
    augs: int = option(3, "Enumerated augmentations A per point (>= 1).")
    strength: float = option(0.5, "Augmentation noise scale for Theorems 1, 3, 4-cov.")
    strengths: str = option("0,0.1,0.3,1.0", "Strengths for the residue (comma-separated).")
    temperature: float = option(0.5, "tau of L_cov / L_nce / L_tri.")
    margin: float = option(0.2, "r0 of L_tri.")
    seed: int = option(1, "Seed of the points and the network.")

    def strength_values(self):
        """--strengths as floats; ConfigError naming it when one is not a number."""
        try:
            return [float(s) for s in cli.parse_list(self.strengths)]
        except ValueError:
            raise ConfigError("strengths", f"expected numbers, got "
                              f"{','.join(cli.parse_list(self.strengths))}") from None

    def validate(self, cfg):
        require(self.points >= 2, "points",
                f"must be >= 2 (Theorem 3 needs a covariance), got {self.points}")
        require(self.augs >= 1, "augs", f"must be >= 1, got {self.augs}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        self.strength_values()


cli.define_option_flags(CheckOptions.flag_fields())


def fail(message):
    cli.fail(TOOL, message)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}")
    opts = cli.validated_section(TOOL, CheckOptions)   # one line and exit 2 when bad
    strengths = opts.strength_values()
    cli.import_tensorflow()  # its C++ start-up lines captured (--tf_log shows them)
    import numpy as np
    from dualssl_tf.analysis import theorems

    model = theorems.bias_free_mlp([7, 6, 4], input_dim=5, seed=opts.seed)
    rng = np.random.default_rng(opts.seed)
    x0 = rng.standard_normal((opts.points, 5))
    x_aug = theorems.enumerated_augmentations(x0, opts.augs, opts.strength, opts.seed + 1)
    layers = ["dense_0", "dense_1", "dense_2"]
    print(f"float64 bias-free ReLU MLP 5-7-6-4, M={opts.points}, A={opts.augs}, "
          f"strength={opts.strength}; relative errors")
    print(f"{'check':<34} " + " ".join(f"{l:>9}" for l in layers))
    x_pair = x_aug.reshape(-1, 5)
    rows = {"Thm 1 one tower": [], "Thm 1 both towers": [], "Thm 3 L_simp anchor tower": [],
            "Thm 3 L_simp all towers (2 OP)": [], "Thm 4 L_cov anchor tower": [],
            "Thm 4 L_cov all towers (2 OP_xi)": []}
    for i, layer in enumerate(layers, start=1):
        print(f"  [{i}/3] {layer}", file=sys.stderr)
        t1 = theorems.theorem1_check(model, layer, x_pair[0::2][:8], x_pair[1::2][:8])
        rows["Thm 1 one tower"].append(t1["one_tower"])
        rows["Thm 1 both towers"].append(t1["both_towers"])
        for towers, k3, k4 in (("anchor", "Thm 3 L_simp anchor tower",
                                "Thm 4 L_cov anchor tower"),
                               ("all", "Thm 3 L_simp all towers (2 OP)",
                                "Thm 4 L_cov all towers (2 OP_xi)")):
            rows[k3].append(theorems.theorem3_check(model, layer, x_aug, towers)["rel_error"])
            rows[k4].append(theorems.theorem4_check(model, layer, x_aug, x0, "cov",
                                                    opts.temperature, towers=towers)[
                                                        "rel_error"])
    for name, values in rows.items():
        print(f"{name:<34} " + " ".join(f"{v:>9.1e}" for v in values))
    print("\nTheorem 4 augmentation residue ||grad - OP_xi vec W|| / ||OP_xi vec W||, dense_1, "
          "anchor tower")
    print(f"{'strength':>9} {'L_nce':>9} {'L_tri':>9}")
    res = {loss: theorems.residue_vs_strength(model, "dense_1", x0, strengths, opts.augs,
                                              loss, opts.temperature, opts.margin,
                                              seed=opts.seed + 1)
           for loss in ("nce", "tri")}
    for k, s in enumerate(strengths):
        print(f"{s:>9.2f} {res['nce'][k]['rel_residue']:>9.1e} "
              f"{res['tri'][k]['rel_residue']:>9.1e}")


def parse_flags(argv):
    return cli.parse_flags(TOOL, argv)


if __name__ == "__main__":
    cli.run(main, TOOL)
