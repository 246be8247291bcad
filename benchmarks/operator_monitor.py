"""Cost and curves of the covariance-operator monitor (--analysis_every=1).

  PYTHONPATH=. python benchmarks/operator_monitor.py --config=configs/generated_images.cfg \
      --config=configs/generated_images_byol.cfg [--epochs=4] [--out_dir=/tmp/opmon]
      [--figure=docs/figures/operator_monitor_alignment.png] [--one_trace]

Trains each config with the monitor on and prints, per epoch, the training time (the epoch's
steps, measured before any epoch-end callback), the monitor's time (op_monitor_seconds on
images; the toy monitor's compute() timed here), their ratio, and the whole epoch's wall
time (every epoch-end callback included) with the monitor's share of it. With --figure, draws the
gradient-vs-OP_l vec(W_l) cosine and ||OP_l vec(W_l)|| per layer over epochs, one panel
column per config (analysis.plots.operator_monitor_panels).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("config", ["configs/generated_images.cfg"], "Flagfiles to train.")
flags.DEFINE_integer("epochs", 0, "Epochs (0 = the config's).")
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch (0 = the config's).")
flags.DEFINE_integer("budget", 1, "--analysis_budget.")
flags.DEFINE_string("out_dir", "/tmp/operator_monitor", "Where the runs go.")
flags.DEFINE_string("figure", "", "PNG of the image runs' curves (empty: none).")
flags.DEFINE_bool("one_trace", False, "Images: every layer's VJP passes in one traced "
                  "function (OperatorMonitor(one_trace=True)), to compare the epoch-0 "
                  "tracing cost.")


def main(argv):
    del argv
    import keras

    from dualssl_tf import config, training
    from dualssl_tf.analysis import callback, operator_monitor, plots, report, runs
    from dualssl_tf.run import trainer

    if FLAGS.one_trace:
        monitor_init = operator_monitor.OperatorMonitor.__init__
        operator_monitor.OperatorMonitor.__init__ = (
            lambda self, *a, **k: monitor_init(self, *a, **{**k, "one_trace": True}))

    class EpochTimer(keras.callbacks.Callback):
        """Training time per epoch; first in fit's list, so no epoch-end callback counts."""
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    class WholeEpochTimer(keras.callbacks.Callback):
        """Last in fit's list: the epoch's wall time with every epoch-end callback (the
        task's metrics, the monitor, the metrics line and checkpoint)."""
        def __init__(self, first):
            super().__init__()
            self.first, self.seconds = first, []

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.first._start)

    toy_seconds = []
    compute = callback.CovarianceMonitor.compute

    def timed(self, epoch=0):
        start = time.perf_counter()
        out = compute(self, epoch)
        toy_seconds.append(time.perf_counter() - start)
        return out
    callback.CovarianceMonitor.compute = timed

    fit_callbacks = trainer.fit_callbacks
    panels = {}
    for path in FLAGS.config:
        name = os.path.splitext(os.path.basename(path))[0]
        overrides = {"analysis_every": 1, "verbose": 0,
                     "model_dir": os.path.join(FLAGS.out_dir, name)}
        if FLAGS.epochs:
            overrides["epochs"] = FLAGS.epochs
        if FLAGS.steps_per_epoch:
            overrides["steps_per_epoch"] = FLAGS.steps_per_epoch
        cfg = config.from_flag_strings(config.read_flagfile(path)).replace(**overrides)
        if cfg.data.dataset not in ("hltm", "translation1d"):
            cfg = cfg.replace(analysis_budget=FLAGS.budget)
        timer = EpochTimer()
        whole = WholeEpochTimer(timer)
        trainer.fit_callbacks = lambda *a, **k: [timer, *fit_callbacks(*a, **k), whole]
        toy_seconds.clear()
        training.train(cfg)
        metrics = runs.read_metrics(os.path.join(cfg.run.model_dir, "metrics.jsonl"))
        monitor = ([m.get("op_monitor_seconds") for m in metrics[1:]]
                   if "op_monitor_seconds" in metrics[-1] else toy_seconds[1:])
        print(f"\n{name}: batch {cfg.optim.batch_size}; monitor sample "
              f"{cfg.analysis.points} points, budget {cfg.analysis.budget}")
        print(f"{'epoch':>5} {'train s':>9} {'monitor s':>10} {'ratio':>7} "
              f"{'whole epoch s':>14} {'share':>7}")
        for e, (t, m, w) in enumerate(zip(timer.seconds, monitor, whole.seconds), start=1):
            print(f"{e:>5} {t:>9.2f} {m:>10.2f} {m / t:>7.1%} {w:>14.2f} {m / w:>7.1%}")
        init = metrics[0].get("op_monitor_seconds", toy_seconds[0] if toy_seconds else None)
        if init is not None:
            print(f"epoch 0 (initialisation, includes tracing): {init:.2f} s")
        curves = report.image_monitor_curves(metrics)
        if curves:
            loss = f" {cfg.contrastive.loss}" if cfg.method.method == "contrastive" else ""
            panels[f"{cfg.method.method}{loss} ({name}.cfg)"] = curves
        print(json.dumps({"config": path, "train_seconds": timer.seconds,
                          "whole_epoch_seconds": whole.seconds, "monitor_seconds": monitor}))
    if FLAGS.figure and panels:
        plots.operator_monitor_panels(panels, FLAGS.figure)
        print(f"figure: {FLAGS.figure}")


if __name__ == "__main__":
    app.run(main)
