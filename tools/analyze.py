"""Analyse a finished run: python tools/analyze.py --model_dir=runs/hltm [--layers=depth_1,..]

Reads the run's flags.txt, metrics.jsonl and saved_model/, rebuilds the networks at
initialisation and after training, and writes into --out_dir (default MODEL_DIR/analysis):

  analysis.json        every number below
  emergence.png        per-depth best correlation vs epoch (HLTM) / filter selectivity (toy)
  lucky_nodes.png      |corr| of every unit at init vs after training (HLTM)
  selectivity.png      per-filter selectivity init vs trained (translation toy)
  op_spectrum.png      spectrum of the covariance operator OP_l per layer, init and trained
  alignment.png        alignment of W_l with OP_l's top eigenvector (per epoch if the run
                       used --analysis_every, else init vs trained)
  filter_alignment.png (toy) trained filters vs OP's top eigenvectors at init
  lucky_nodes_by_hid.png (HLTM, with --lucky_hids) best |corr| at init vs group width

An image run is read from its metrics.jsonl (the matrix-free monitor of --analysis_every;
--layers picks among the monitored layers; --points, --augmentations, --top_k unused):

  op_alignment.png     cos(-grad L, OP_l vec W_l) per layer over epochs (dashed: Theorem 4's
                       cos(-grad L, OP_xi vec W_l), where the loss has its weights)
  op_norm.png          ||OP_l vec W_l|| per layer over epochs
  op_residue.png       the reversibility residue ||f - K_l^T vec W_l|| / ||f|| per layer
  op_spectrum_estimates.png  lambda_max(OP_l) estimate per layer
  op_xi_residue_share.png    Theorem 4: the gradient's share OP_xi vec W_l does not explain
                       (ntxent, nce, cov, tri runs)
  collapse.png         embed_std, effective_rank (also for the toys, when logged)

An image run trained without the monitor: one line says so, and the collapse figure is
drawn.

Bad input ends with one line on stderr naming the flag, and exit status 2.
"""

import os
import shutil
import sys
import tempfile

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import cli  # noqa: E402

TOOL = "analyze.py"

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", "", "Run directory written by tools/train.py.")
flags.DEFINE_list("layers", [], "Layers to analyse (names; default: every layer with a "
                  "kernel, e.g. depth_1..depth_5 of the HLTM net, conv of the toy).")
flags.DEFINE_integer("points", 512, "Base points M for the covariance operator (>= 2; the "
                     "translation toy always uses its 2 objects at every location).")
flags.DEFINE_integer("augmentations", 8, "Augmentations A per base point (>= 1).")
flags.DEFINE_integer("top_k", 20, "Eigenvalues kept per operator (>= 1).")
flags.DEFINE_list("lucky_hids", [], "HLTM only: also measure best |corr| at init for these "
                  "group widths, e.g. 2,10,50 (Theorem 5).")
flags.DEFINE_string("out_dir", "", "Output directory (default MODEL_DIR/analysis).")
flags.DEFINE_integer("seed", 0, "Seed of the analysis sample.")


def fail(message):
    cli.fail(TOOL, message)


def parse_flags(argv):
    return cli.parse_flags(TOOL, argv)


def _flag_error(e):
    """Maps a library ValueError ("arg: message") onto the flag that supplied it."""
    text = str(e).splitlines()[0]
    arg, _, rest = text.partition(": ")
    names = {"layer": "layers", "M": "points", "model_dir": "model_dir", "index": "layers"}
    if arg in names:
        return f"--{names[arg]}: {rest}"
    return text


def _stale_export(model_dir):
    """True when a local run's saved_model/ predates its newest checkpoint and the run has
    no finished.json (the trainer writes it last, after the export): a run resumed after an
    earlier finish and then killed, whose export is of fewer epochs than its metrics."""
    if os.path.exists(os.path.join(model_dir, "finished.json")):
        return False
    import glob
    checkpoints = glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index"))
    exported = os.path.join(model_dir, "saved_model", "saved_model.pb")
    if not checkpoints or not os.path.exists(exported):
        return False
    return os.path.getmtime(exported) < max(os.path.getmtime(c) for c in checkpoints)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    if not FLAGS.model_dir:
        fail("--model_dir: is required (a run directory written by tools/train.py)")
    # A URL (gs://) --model_dir is checked by runs.load_run once TensorFlow is imported.
    remote = "://" in FLAGS.model_dir
    if not remote and not os.path.isdir(FLAGS.model_dir):
        fail(f"--model_dir: {FLAGS.model_dir} is not a directory")
    if not remote and not os.path.exists(os.path.join(FLAGS.model_dir, "metrics.jsonl")):
        fail(f"--model_dir: no metrics.jsonl in {FLAGS.model_dir}; point it at a run written "
             "by tools/train.py")
    if not remote and not os.path.isdir(os.path.join(FLAGS.model_dir, "saved_model")):
        fail(f"--model_dir: {FLAGS.model_dir} holds an unfinished or killed run (no "
             "saved_model/); finish it by re-running tools/train.py with "
             f"--flagfile={os.path.join(FLAGS.model_dir, 'flags.txt')}, or export its last "
             "checkpoint with tools/export.py")
    if not remote and _stale_export(FLAGS.model_dir):
        fail(f"--model_dir: {FLAGS.model_dir} holds an unfinished or killed run (no "
             "finished.json, and its saved_model/ is older than its newest checkpoint); "
             "finish it by re-running tools/train.py with "
             f"--flagfile={os.path.join(FLAGS.model_dir, 'flags.txt')}, or export that "
             "checkpoint with tools/export.py")
    if FLAGS.points < 2:
        fail(f"--points: must be >= 2 (a covariance needs M >= 2 base points), got "
             f"{FLAGS.points}")
    if FLAGS.augmentations < 1:
        fail(f"--augmentations: must be >= 1, got {FLAGS.augmentations}")
    if FLAGS.top_k < 1:
        fail(f"--top_k: must be >= 1, got {FLAGS.top_k}")
    try:
        hids = [int(h) for h in FLAGS.lucky_hids]
    except ValueError:
        fail(f"--lucky_hids: expected integers, got {','.join(FLAGS.lucky_hids)}")
    if any(h < 1 for h in hids):
        fail("--lucky_hids: every hid must be >= 1")

    cli.import_tensorflow()  # its C++ start-up lines captured (--tf_log shows them)
    import json  # noqa: E402
    import tensorflow as tf  # noqa: E402  (TensorFlow only when the flags are valid)
    from dualssl_tf import runfiles  # noqa: E402
    from dualssl_tf.analysis import collapse, report, runs  # noqa: E402
    # Retracing / pfor-fallback notices are expected here (one connection function per layer).
    tf.get_logger().setLevel("ERROR")

    out_dir = FLAGS.out_dir or os.path.join(FLAGS.model_dir, "analysis")
    tmp = None
    try:
        cfg = runs.read_flagfile(os.path.join(FLAGS.model_dir, "flags.txt"))
        # ValueError("model_dir: ...") for unsupported tasks
        matrix_free = getattr(report.task_hooks(cfg), "MATRIX_FREE", False)
        if matrix_free:   # images: the monitor's curves from metrics.jsonl, no rebuild
            result = report.monitor_report(FLAGS.model_dir, cfg, runs.read_metrics(
                os.path.join(FLAGS.model_dir, "metrics.jsonl")), FLAGS.layers)
            if result.get("note"):
                print(f"{TOOL}: {FLAGS.model_dir}: {result['note']}", flush=True)
        else:
            run = runs.load_run(FLAGS.model_dir)
            layers = FLAGS.layers or report.default_layers(run.init.encoder)
            report.check_layers(run.init.encoder, layers)
            result = report.analyze_run(run, layers, FLAGS.points, FLAGS.augmentations,
                                        FLAGS.top_k, FLAGS.seed, hids)
        # Write into a temporary directory and rename: never a half-written output. Figures
        # are drawn to local files, so a URL (gs://) out_dir gets a local one, copied over.
        if runfiles.is_remote(out_dir):
            tmp = tempfile.mkdtemp(prefix="dualssl_analysis-")
        else:
            tmp = out_dir.rstrip("/") + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        paths = (report.monitor_figures(result, tmp) if matrix_free
                 else report.make_figures(result, tmp))
        # Every method's collapse monitor (embed_std, effective_rank), when the run has it.
        figure = collapse.run_figure(FLAGS.model_dir, tmp, f"--method={cfg.method.method}")
        if figure:
            paths["collapse"] = figure
        with open(os.path.join(tmp, "analysis.json"), "w") as f:
            json.dump(result, f, indent=1)
    except BaseException as e:
        if tmp:   # nothing half-written is left behind
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ValueError):
            fail(_flag_error(e))
        raise
    runfiles.rmtree(out_dir)
    runfiles.rename_dir(tmp, out_dir)   # local: atomic rename; URL: copy (see runfiles)
    print(f"analysis.json and {len(paths)} figures written to {out_dir}:")
    for name in sorted(paths):
        print(f"  {os.path.join(out_dir, os.path.basename(paths[name]))}")


if __name__ == "__main__":
    cli.run(main, TOOL)
