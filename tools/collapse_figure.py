"""Collapse figure of several runs: python tools/collapse_figure.py \
    --model_dirs=runs/byol,runs/byol_nobn --labels=BYOL,"BYOL no BN" --out=collapse.png

Reads each run's metrics.jsonl (embed_std and effective_rank per epoch, written by the
collapse monitor of the image and HLTM tasks) and draws both against the epoch, one line
per run; prints each run's values at initialisation and at the end. TensorFlow-free for
local run directories. Bad input ends with one line on stderr naming the flag, exit 2.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import cli  # noqa: E402

TOOL = "collapse_figure.py"

FLAGS = flags.FLAGS
flags.DEFINE_list("model_dirs", [], "Run directories written by tools/train.py, one line "
                  "each in the figure.")
flags.DEFINE_list("labels", [], "Legend label of each run (default: the directory names).")
flags.DEFINE_string("out", "collapse.png", "Output PNG.")


def main(argv):
    from dualssl_tf.analysis import collapse
    if len(argv) > 1:
        cli.fail(TOOL, f"unexpected arguments {' '.join(argv[1:])}; flags look like "
                 "--name=value")
    if not FLAGS.model_dirs:
        cli.fail(TOOL, "--model_dirs: is required (comma-separated run directories)")
    labels = FLAGS.labels or [os.path.basename(d.rstrip("/")) for d in FLAGS.model_dirs]
    if len(labels) != len(FLAGS.model_dirs) or len(set(labels)) != len(labels):
        cli.fail(TOOL, f"--labels: need {len(FLAGS.model_dirs)} distinct labels, one per "
                 f"--model_dirs entry, got {len(labels)}")
    curves = {}
    for label, model_dir in zip(labels, FLAGS.model_dirs):
        try:
            curves[label] = collapse.read_curves(model_dir)
        except ValueError as e:
            cli.fail(TOOL, f"--model_dirs: {str(e).split(': ', 1)[1]}")
    out_dir = os.path.dirname(os.path.abspath(FLAGS.out))
    if not os.path.isdir(out_dir):
        cli.fail(TOOL, f"--out: directory {out_dir} does not exist")
    path = collapse.collapse_figure(curves, FLAGS.out)
    print(collapse.end_values(curves))
    print(f"\nFigure written to {path}")


if __name__ == "__main__":
    cli.run(main, TOOL)
