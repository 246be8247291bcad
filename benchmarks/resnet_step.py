"""ResNet-18 SimCLR train-step throughput at 32 px, and its fraction of fp32 matmul peak.

    PYTHONPATH=. python benchmarks/resnet_step.py [--steps=6] [--warmup=2] [--kernels]
    TF_ENABLE_ONEDNN_OPTS=0 PYTHONPATH=. python benchmarks/resnet_step.py   # Eigen kernels

Figures, measured in one process on the same (shared) CPU:

* fp32 matmul peak: best GFLOP/s of 2048^3 and 3072^3 tf.matmul, sampled before, between
  and after the timed steps (best kept), with every core TensorFlow uses;
* bare step: a hand-written tf.function (encoder + head on both views in one batch,
  NT-Xent tau 0.5, SGD momentum) on a fixed in-memory batch;
* fit path: ContrastiveMethod.fit with the online probe and every metric, same batch repeated;
* with --kernels: each convolution shape of the network alone (forward, gradient of the
  input, gradient of the filter), in GFLOP/s and % of the peak: the ceiling of the step.

FLOPs per image: 6.7 GFLOP (1.11 GFLOP forward per view, x3 for training, x2 views).
TensorFlow enables oneDNN by itself only on AVX-512/AMX CPUs; like the tools (tools/cli.py),
this script turns it on unless TF_ENABLE_ONEDNN_OPTS is set. Other processes share the CPU,
so the figures are pessimistic; steps and peak are best-of-N to filter the noise.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # read once, when TF is imported

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from dualssl_tf import losses  # noqa: E402
from dualssl_tf.methods import contrastive
from dualssl_tf.methods.contrastive import ContrastiveMethod  # noqa: E402
from dualssl_tf.models import heads, resnet  # noqa: E402

flags.DEFINE_integer("steps", 6, "Timed train steps per path.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing).")
flags.DEFINE_integer("batch_size", 128, "Pairs per step.")
flags.DEFINE_integer("image_size", 32, "Image side.")
flags.DEFINE_float("width_multiplier", 1.0, "ResNet width (1.0 = the paper's ResNet-18).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile both steps.")
flags.DEFINE_bool("kernels", False, "Also time each convolution shape alone (the ceiling).")
FLAGS = flags.FLAGS

GFLOP_PER_IMAGE = 6.7


def _best_time(fn, reps):
    """Best wall time of ``fn()`` over ``reps`` calls after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


class MatmulPeak:
    """Best fp32 GFLOP/s seen of an n^3 tf.matmul: the machine's usable peak.

    Other jobs share the CPU, so the peak is sampled many times (``sample()`` before,
    between and after the timed steps) and the best sample is kept: the steps, also
    best-of-N, are then compared with a peak measured under the same kind of load.
    """

    def __init__(self, sizes=(2048, 3072)):
        self.best = 0.0
        self._cases = []
        for n in sizes:
            a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
            f = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
            f(a, b).numpy()
            self._cases.append((2 * n ** 3 / 1e9, lambda f=f, a=a, b=b: f(a, b).numpy()))

    def sample(self, reps=1):
        for gflop, run in self._cases:
            for _ in range(reps):
                start = time.perf_counter()
                run()
                self.best = max(self.best, gflop / (time.perf_counter() - start))
        return self.best


# (input side, in channels, out channels, kernel, stride, how many in ResNet-18 CIFAR).
_CONV_SHAPES = ((32, 3, 64, 3, 1, 1), (32, 64, 64, 3, 1, 4), (32, 64, 128, 3, 2, 1),
                (32, 64, 128, 1, 2, 1), (16, 128, 128, 3, 1, 3), (16, 128, 256, 3, 2, 1),
                (16, 128, 256, 1, 2, 1), (8, 256, 256, 3, 1, 3), (8, 256, 512, 3, 2, 1),
                (8, 256, 512, 1, 2, 1), (4, 512, 512, 3, 1, 3))


def conv_kernels(images, reps=3):
    """GFLOP/s of each conv shape alone: rows (shape, count, GFLOP, fwd, d_input, d_filter)."""
    rows = []
    for size, cin, cout, k, stride, count in _CONV_SHAPES:
        shape = [images, size, size, cin]
        x = tf.random.normal(shape)
        w = tf.random.normal([k, k, cin, cout]) * 0.05
        strides = [1, stride, stride, 1]
        dy = tf.random.normal([images, size // stride, size // stride, cout])
        gflop = 2 * images * (size // stride) ** 2 * cin * cout * k * k / 1e9
        fwd = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, w, strides, "SAME")))
        d_in = tf.function(lambda: tf.reduce_sum(tf.raw_ops.Conv2DBackpropInput(
            input_sizes=shape, filter=w, out_backprop=dy, strides=strides, padding="SAME")))
        d_filt = tf.function(lambda: tf.reduce_sum(tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=[k, k, cin, cout], out_backprop=dy, strides=strides,
            padding="SAME")))
        rates = [gflop / _best_time(lambda f=f: f().numpy(), reps) for f in (fwd, d_in, d_filt)]
        rows.append((f"{size}px {cin}->{cout} {k}x{k}/{stride}", count, gflop, *rates))
    return rows


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


def bare_rate(data, peak):
    enc, head = networks()
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    loss_fn = contrastive.loss_fn("ntxent", 0.5, 0.0, 0.0, dim=128)
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
    best = float("inf")
    for _ in range(FLAGS.steps):
        peak.sample()
        start = time.perf_counter()
        step(data["view1"], data["view2"]).numpy()
        best = min(best, time.perf_counter() - start)
    return FLAGS.batch_size / best


class _Clock(keras.callbacks.Callback):
    """Times each train step; samples the matmul peak between steps, outside the timing."""

    def __init__(self, peak):
        super().__init__()
        self.peak = peak
        self.durations = []
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self._start)
        self.peak.sample()


def fit_rate(data, peak):
    enc, head = networks()
    probe = heads.LinearProbe(10)
    model = ContrastiveMethod(enc, head, loss="ntxent", temperature=0.5, probe=probe)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  jit_compile=FLAGS.jit_compile)
    clock = _Clock(peak)
    ds = tf.data.Dataset.from_tensors(data).repeat()
    model.fit(ds, epochs=1, steps_per_epoch=FLAGS.warmup + FLAGS.steps, callbacks=[clock],
              verbose=0, shuffle=False)
    # Best single step, as for the bare step (a CPU step has finished when the callback runs).
    return FLAGS.batch_size / min(clock.durations[FLAGS.warmup:])


def main(_):
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-direct-tensorflow-import

    onednn = _pywrap_util_port.IsMklEnabled()
    sampler = MatmulPeak()
    sampler.sample(reps=3)
    data = batch()
    bare = bare_rate(data, sampler)
    fit = fit_rate(data, sampler)
    peak = sampler.sample(reps=3)
    scale = GFLOP_PER_IMAGE * FLAGS.width_multiplier ** 2 * (FLAGS.image_size / 32) ** 2
    print(f"\nResNet-18 SimCLR step, {FLAGS.image_size}px, batch {FLAGS.batch_size}, width "
          f"{FLAGS.width_multiplier}, best of {FLAGS.steps} steps, jit {FLAGS.jit_compile}, "
          f"oneDNN {'on' if onednn else 'off'} ({os.cpu_count()} shared CPUs)")
    print(f"fp32 matmul peak: {peak:.0f} GFLOP/s")
    print(f"{'path':<28} {'images/s':>9} {'GFLOP/s':>9} {'of peak':>8} {'vs bare':>8}")
    for name, r in (("bare tf.function step", bare), ("ContrastiveMethod.fit + probe", fit)):
        print(f"{name:<28} {r:9.1f} {r * scale:9.0f} {r * scale / peak:8.0%} "
              f"{r / bare:8.0%}")
    if FLAGS.kernels:
        rows = conv_kernels(2 * FLAGS.batch_size)
        peak = sampler.sample(reps=3)
        print(f"\nEach conv alone on {2 * FLAGS.batch_size} images: GFLOP/s (% of peak)")
        print(f"{'conv':<22} {'n':>2} {'GFLOP':>6} {'forward':>12} {'grad input':>12} "
              f"{'grad filter':>12}")
        total = [0.0, 0.0, 0.0]
        for name, count, gflop, *rates in rows:
            cells = " ".join(f"{r:6.0f} ({r / peak:3.0%})" for r in rates)
            print(f"{name:<22} {count:2d} {gflop:6.2f} {cells}")
            for i, r in enumerate(rates):
                if not (i == 1 and name.startswith("32px 3->")):  # no input grad for the image
                    total[i] += count * gflop / r
        flop = sum(c * g for _, c, g, *_ in rows)
        # The stem needs no gradient of its input: two thirds of its FLOPs in training.
        train_flop = 3 * flop - rows[0][1] * rows[0][2]
        rate = train_flop / sum(total)
        print(f"all convs of a training step at these rates: {rate:.0f} GFLOP/s "
              f"({rate / peak:.0%} of peak) = {rate / scale:.1f} images/s if nothing else ran")


if __name__ == "__main__":
    app.run(main)
