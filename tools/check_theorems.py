"""Print the theorem-check residuals: python tools/check_theorems.py [--points=6 --augs=3]

Builds a small bias-free float64 ReLU MLP, M base points with A enumerated Gaussian
augmentations, and reports relative errors ||grad - closed form|| / ||closed form|| for
Theorem 1 (pair gradient), Theorem 3 (L_simp = OP vec W), Theorem 4 (L_cov = OP_xi vec W)
per layer and tower mode, and the Theorem-4 augmentation residue of L_nce / L_tri as the
augmentation strength grows. Bad flags: one line on stderr, exit 2.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import cli  # noqa: E402

TOOL = "check_theorems.py"

flags.DEFINE_integer("points", 6, "Base points M (>= 2).")
flags.DEFINE_integer("augs", 3, "Enumerated augmentations A per point (>= 1).")
flags.DEFINE_float("strength", 0.5, "Augmentation noise scale for Theorems 1, 3, 4-cov.")
flags.DEFINE_list("strengths", ["0", "0.1", "0.3", "1.0"], "Strengths for the residue.")
flags.DEFINE_float("temperature", 0.5, "tau of L_cov / L_nce / L_tri.")
flags.DEFINE_float("margin", 0.2, "r0 of L_tri.")
flags.DEFINE_integer("seed", 1, "Seed of the points and the network.")
FLAGS = flags.FLAGS


def fail(message):
    cli.fail(TOOL, message)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}")
    if FLAGS.points < 2:
        fail(f"--points: must be >= 2 (Theorem 3 needs a covariance), got {FLAGS.points}")
    if FLAGS.augs < 1:
        fail(f"--augs: must be >= 1, got {FLAGS.augs}")
    if FLAGS.temperature <= 0:
        fail(f"--temperature: must be > 0, got {FLAGS.temperature}")
    try:
        strengths = [float(s) for s in FLAGS.strengths]
    except ValueError:
        fail(f"--strengths: expected numbers, got {','.join(FLAGS.strengths)}")
    cli.import_tensorflow()  # its C++ start-up lines captured (--tf_log shows them)
    import numpy as np
    from dualssl_tf.analysis import theorems

    model = theorems.bias_free_mlp([7, 6, 4], input_dim=5, seed=FLAGS.seed)
    rng = np.random.default_rng(FLAGS.seed)
    x0 = rng.standard_normal((FLAGS.points, 5))
    x_aug = theorems.enumerated_augmentations(x0, FLAGS.augs, FLAGS.strength, FLAGS.seed + 1)
    layers = ["dense_0", "dense_1", "dense_2"]
    print(f"float64 bias-free ReLU MLP 5-7-6-4, M={FLAGS.points}, A={FLAGS.augs}, "
          f"strength={FLAGS.strength}; relative errors")
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
                                                    FLAGS.temperature, towers=towers)[
                                                        "rel_error"])
    for name, values in rows.items():
        print(f"{name:<34} " + " ".join(f"{v:>9.1e}" for v in values))
    print("\nTheorem 4 augmentation residue ||grad - OP_xi vec W|| / ||OP_xi vec W||, dense_1, "
          "anchor tower")
    print(f"{'strength':>9} {'L_nce':>9} {'L_tri':>9}")
    res = {loss: theorems.residue_vs_strength(model, "dense_1", x0, strengths, FLAGS.augs,
                                              loss, FLAGS.temperature, FLAGS.margin,
                                              seed=FLAGS.seed + 1)
           for loss in ("nce", "tri")}
    for k, s in enumerate(strengths):
        print(f"{s:>9.2f} {res['nce'][k]['rel_residue']:>9.1e} "
              f"{res['tri'][k]['rel_residue']:>9.1e}")


def parse_flags(argv):
    return cli.parse_flags(TOOL, argv)


if __name__ == "__main__":
    cli.run(main, TOOL)
