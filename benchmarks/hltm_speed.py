"""Seconds per HLTM epoch (configs/hltm.cfg settings), split into sampling, training, metric.

    python benchmarks/hltm_speed.py [--epochs=3]

Sampling: drawing 64000 fresh (anchor, positive, negative) triples through the tf.data
pipeline. Training: one Keras fit epoch (500 steps of batch 128) on pre-drawn batches, so
sampling is not counted twice. Metric: best correlation per depth on 64000 held-out samples.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("epochs", 3, "Epochs to time (the first, with tracing, is reported apart).")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
FLAGS = flags.FLAGS


def main(_):
    import keras
    import tensorflow as tf

    from dualssl_tf import config
    from dualssl_tf.run import trainer
    from dualssl_tf.experiments import hltm

    cfg = config.TrainConfig(model_dir="/tmp/unused", steps_per_execution=50,
                             jit_compile=FLAGS.jit_compile)
    keras.utils.set_random_seed(cfg.run.seed)
    exp = hltm.build(cfg)
    model = trainer.build_model(cfg, exp)
    steps = exp.steps_per_epoch
    cb = exp.callbacks[0]

    rows = []
    stream = iter(exp.train_data)
    for _ in range(FLAGS.epochs + 1):
        t0 = time.perf_counter()
        batches = [next(stream) for _ in range(steps)]
        t1 = time.perf_counter()
        data = tf.data.Dataset.from_tensor_slices(
            {k: tf.stack([b[k] for b in batches]) for k in batches[0]})
        t2 = time.perf_counter()
        model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
        t3 = time.perf_counter()
        cb.compute()
        t4 = time.perf_counter()
        rows.append((t1 - t0, t3 - t2, t4 - t3))

    print(f"HLTM epoch (depth {cfg.hltm.depth}, hid {cfg.hltm.hid}, {steps} steps of "
          f"batch {cfg.optim.batch_size}, metric on {cfg.hltm.eval_samples} samples, "
          f"jit_compile={cfg.run.jit_compile}), "
          f"{os.cpu_count()} cores")
    print(f"{'epoch':>8} {'sampling s':>11} {'training s':>11} {'metric s':>9} {'total s':>8}")
    for i, (s, t, m) in enumerate(rows):
        label = "1 (trace)" if i == 0 else str(i + 1)
        print(f"{label:>8} {s:11.2f} {t:11.2f} {m:9.2f} {s + t + m:8.2f}")
    steady = rows[1:]
    mean = [sum(r[i] for r in steady) / len(steady) for i in range(3)]
    print(f"{'mean':>8} {mean[0]:11.2f} {mean[1]:11.2f} {mean[2]:9.2f} {sum(mean):8.2f}")
    print("Official PyTorch code on this machine: ~330 s per epoch (issue 2); "
          f"speed-up {330 / sum(mean):.0f}x.")


if __name__ == "__main__":
    app.run(main)
