"""ResNet-18 SimCLR train-step throughput at 32 px, and its fraction of fp32 matmul peak.

    PYTHONPATH=. python benchmarks/resnet_step.py [--steps=6] [--warmup=2]

Three figures, measured in one process on the same (shared) CPU:

* fp32 matmul peak: best GFLOP/s of a 2048^3 tf.matmul in a tf.function;
* bare step: a hand-written tf.function (encoder + head on both views in one batch,
  NT-Xent tau 0.5, SGD momentum) on a fixed in-memory batch;
* fit path: DualModel.fit with the online probe and every metric, same batch repeated.

FLOPs per image: 6.7 GFLOP (1.11 GFLOP forward per view, x3 for training, x2 views).
Other processes share the CPU, so the figures are pessimistic.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from dualssl_tf import losses  # noqa: E402
from dualssl_tf.dual import DualModel  # noqa: E402
from dualssl_tf.models import heads, resnet  # noqa: E402

flags.DEFINE_integer("steps", 6, "Timed train steps per path.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing).")
flags.DEFINE_integer("batch_size", 128, "Pairs per step.")
flags.DEFINE_integer("image_size", 32, "Image side.")
flags.DEFINE_float("width_multiplier", 1.0, "ResNet width (1.0 = the paper's ResNet-18).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile both steps.")
FLAGS = flags.FLAGS

GFLOP_PER_IMAGE = 6.7


def matmul_peak(n=2048, reps=5):
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    f = tf.function(lambda a, b: tf.matmul(a, b))
    f(a, b).numpy()
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        f(a, b).numpy()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def networks():
    keras.utils.set_random_seed(0)
    enc = resnet.resnet(18, image_size=FLAGS.image_size, stem="cifar",
                        width_multiplier=FLAGS.width_multiplier)
    head = heads.projection_head(enc.output_shape[-1], 512, 128)
    return enc, head


def batch():
    s, b = FLAGS.image_size, FLAGS.batch_size
    return {"view1": tf.random.uniform([b, s, s, 3]), "view2": tf.random.uniform([b, s, s, 3]),
            "label": tf.random.uniform([b], 0, 10, tf.int32)}


def bare_rate(data):
    enc, head = networks()
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    loss_fn = losses.get_loss_fn("ntxent", 0.5, 0.0, 0.0, dim=128)
    variables = enc.trainable_variables + head.trainable_variables
    opt.build(variables)

    @tf.function(jit_compile=FLAGS.jit_compile)
    def step(x1, x2):
        with tf.GradientTape() as tape:
            z = head(enc(tf.concat([x1, x2], 0), training=True), training=True)
            z = z / (tf.norm(z, axis=-1, keepdims=True) + 1e-4)
            n = tf.shape(x1)[0]
            r_pos, r_neg = losses.in_batch_distances(z[:n], z[n:])
            loss = tf.reduce_mean(loss_fn(r_pos, r_neg))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    for _ in range(FLAGS.warmup):
        step(data["view1"], data["view2"]).numpy()
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        step(data["view1"], data["view2"]).numpy()
    return FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)


class _Clock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())


def fit_rate(data):
    enc, head = networks()
    probe = heads.LinearProbe(10)
    model = DualModel(enc, head, loss="ntxent", temperature=0.5, probe=probe)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  jit_compile=FLAGS.jit_compile)
    clock = _Clock()
    ds = tf.data.Dataset.from_tensors(data).repeat()
    model.fit(ds, epochs=1, steps_per_epoch=FLAGS.warmup + FLAGS.steps, callbacks=[clock],
              verbose=0)
    t = clock.times
    return FLAGS.steps * FLAGS.batch_size / (t[-1] - t[FLAGS.warmup - 1])


def main(_):
    peak = matmul_peak()
    data = batch()
    bare = bare_rate(data)
    fit = fit_rate(data)
    peak_after = matmul_peak()
    peak = max(peak, peak_after)
    scale = GFLOP_PER_IMAGE * FLAGS.width_multiplier ** 2 * (FLAGS.image_size / 32) ** 2
    print(f"\nResNet-18 SimCLR step, {FLAGS.image_size}px, batch {FLAGS.batch_size}, width "
          f"{FLAGS.width_multiplier}, {FLAGS.steps} timed steps, jit {FLAGS.jit_compile} "
          f"({os.cpu_count()} shared CPUs)")
    print(f"fp32 matmul peak: {peak:.0f} GFLOP/s")
    print(f"{'path':<28} {'images/s':>9} {'GFLOP/s':>9} {'of peak':>8} {'vs bare':>8}")
    for name, r in (("bare tf.function step", bare), ("DualModel.fit + probe", fit)):
        print(f"{name:<28} {r:9.1f} {r * scale:9.0f} {r * scale / peak:8.0%} "
              f"{r / bare:8.0%}")


if __name__ == "__main__":
    app.run(main)
