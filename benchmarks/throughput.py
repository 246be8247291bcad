"""SimCLR throughput on this machine's device: pairs/s, achieved TFLOP/s and MFU (issue 15).

    PYTHONPATH=. python benchmarks/throughput.py [--image_size=32] [--batch_size=128]
        [--encoder=resnet18|resnet50|vit_tiny|vit_small|vit_base] [--patch_size=0]
        [--width_multiplier=1] [--mixed_precision=none|bfloat16]
        [--jit_compile] [--augment_on=host|device|auto] [--steps=10] [--json_out=FILE]

One table for the device TensorFlow trains on (the first GPU, else the CPU), rows:

* host pipeline alone: the tf.data SimCLR pipeline (crop, flip, colour jitter, grayscale,
  blur with --blur) of ``dualssl_tf.data.pipeline.pretrain_dataset`` on random uint8 images
  of the CIFAR/STL/ImageNet shape held in memory (no download);
* device augmentations alone (``dualssl_tf.data.device_augment``): its
  ``device_view_pairs`` on a uint8 batch already on the device, compiled as the step is;
* train step alone: ``ContrastiveMethod.train_step`` (ResNet or ViT, projection head
  512-128, NT-Xent tau 0.5, SGD momentum 0.9, the online probe) in a tf.function on fixed
  views already on the device;
* model.fit, views in memory: Keras' fit loop on the same fixed batch (fit's own cost);
* model.fit end to end: fit fed by the host pipeline (--augment_on=host) or by uint8
  batches augmented inside the compiled step (--augment_on=device);
* PyTorch: benchmarks/throughput_torch.py, the same step on the same fixed views, in a
  subprocess with the same thread count, when torch imports (one line otherwise); the
  ratio column is ours / PyTorch.

FLOPs are counted from the model (``dualssl_tf.models.flops``), analytically: every Conv2D
/ Dense layer's multiply-adds from its kernel and output shapes (x2 FLOPs; a ViT's Dense
layers once per token, and its attention matmuls), both views, x3 for training (forward,
input gradient, weight gradient; the stem's / patch embedding's input gradient is not
computed and not counted), plus the probe; BatchNorm, LayerNorm, ReLU, GELU, softmax,
pooling and the loss are not counted. The PyTorch row runs the same network (timm's
VisionTransformer for a ViT), so the same count. MFU is achieved
FLOP/s over the device's dense peak for the step's precision (a table of vendor figures for
GPUs, see PEAK_TFLOPS; on a CPU the best tf.matmul rate measured here, in the compute
dtype, which is a measurement, not a vendor peak). Each figure is the best of --repeats
timed blocks of --steps steps after --warmup untimed steps, the rows' blocks interleaved
(one block of every row per round, PyTorch's too) so that a shared machine's load hits
them alike; the load average is printed: on a shared machine every figure is pessimistic.
"""

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the tools (tools/cli.py)

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

flags.DEFINE_integer("image_size", 32, "Image and view side (32 CIFAR, 96 STL-10, 224).")
flags.DEFINE_integer("batch_size", 128, "Pairs per step.")
flags.DEFINE_enum("encoder", "resnet18", ["resnet18", "resnet50", "vit_tiny", "vit_small",
                                          "vit_base"], "ResNet depth or ViT size.")
flags.DEFINE_integer("patch_size", 0, "ViT patch side (0: 4 up to 32 px, 8 up to 96, else 16).")
flags.DEFINE_enum("stem", "auto", ["auto", "cifar", "imagenet"],
                  "ResNet stem (auto: imagenet from 96 px, as the image task).")
flags.DEFINE_float("width_multiplier", 1.0, "ResNet width (1 = 64..512 channels).")
flags.DEFINE_enum("mixed_precision", "none", ["none", "bfloat16", "float16"],
                  "Keras dtype policy of the networks (losses stay float32).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the step (and device augmentations).")
flags.DEFINE_enum("augment_on", "auto", ["auto", "host", "device"],
                  "Where model.fit's views are made: auto = device on a GPU, else host.")
flags.DEFINE_integer("steps_per_execution", 1, "model.fit steps per execution.")
flags.DEFINE_integer("steps", 10, "Steps per timed block.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, compilation, caches).")
flags.DEFINE_integer("repeats", 3, "Timed blocks per row (best kept).")
flags.DEFINE_integer("num_images", 512, "Distinct random uint8 images held in memory.")
flags.DEFINE_float("color_jitter_strength", 0.5, "SimCLR jitter strength (0.5 CIFAR).")
flags.DEFINE_bool("blur", False, "Gaussian blur in the augmentations (STL-10 style).")
flags.DEFINE_integer("threads", 0, "CPU threads for TensorFlow and PyTorch (0 = every core).")
flags.DEFINE_list("rows", ["host", "device", "step", "fit_memory", "fit", "torch"],
                  "Rows to run.")
flags.DEFINE_enum("torch_channels_last", "auto", ["auto", "true", "false"],
                  "PyTorch row's memory format; auto: the faster of NCHW and channels-last "
                  "for the shape (one step each).")
flags.DEFINE_float("peak_tflops", 0.0, "Override the device's dense peak (TFLOP/s).")
flags.DEFINE_string("json_out", "", "Also write the rows as JSON to this file.")
FLAGS = flags.FLAGS

# Dense (no sparsity) vendor peaks in TFLOP/s: (bfloat16/float16 tensor cores, float32 as
# TensorFlow runs it: TF32 tensor cores on Ampere and later, plain FP32 before). Matched
# by substring of the device name, longest first. SXM figures for H100/H200.
PEAK_TFLOPS = {
    "H200": (989.0, 494.0), "H100 PCIe": (756.0, 378.0), "H100 NVL": (835.0, 418.0),
    "H100": (989.0, 494.0), "A100": (312.0, 156.0), "L40S": (362.0, 183.0),
    "L4": (121.0, 60.0), "A10": (125.0, 62.5), "RTX A6000": (154.8, 77.4),
    "V100": (125.0, 15.7), "T4": (65.0, 8.1),
}
LOSS = dict(loss="ntxent", temperature=0.5)


def load_average():
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average n/a"


def device_augment_module():
    """``dualssl_tf.data.device_augment`` (issue 15 parts 1-2) or None when absent."""
    try:
        from dualssl_tf.data import device_augment
    except ImportError:
        return None
    return device_augment if hasattr(device_augment, "device_view_pairs") else None


# -- the device and its peak -----------------------------------------------------------------

def device_info(tf):
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "GPU", details.get("device_name", "GPU"), len(gpus)
    return "CPU", f"CPU ({os.cpu_count()} cores)", 0


def matmul_peak(tf, dtype, n=2048, reps=5):
    """Best tf.matmul TFLOP/s of an n^3 product in ``dtype`` on the default device."""
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    f = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    f(a, b).numpy()
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        f(a, b).numpy()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e12)
    return best


def peak_tflops(tf, kind, name, compute_dtype):
    """(peak TFLOP/s or None, how it was obtained)."""
    if FLAGS.peak_tflops:
        return FLAGS.peak_tflops, "given by --peak_tflops"
    half = compute_dtype in ("bfloat16", "float16")
    if kind == "GPU":
        for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
            if key in name:
                value = PEAK_TFLOPS[key][0 if half else 1]
                what = "bf16/fp16 dense" if half else "TF32/FP32 dense"
                return value, f"vendor {what} peak of {key}"
        return None, f"unknown GPU {name!r}: pass --peak_tflops"
    dtype = tf.bfloat16 if compute_dtype == "bfloat16" else tf.float32
    value = matmul_peak(tf, dtype)
    return value, f"measured: best 2048^3 tf.matmul in {dtype.name} here (not a vendor peak)"


# -- the model -------------------------------------------------------------------------------

def patch_size():
    """The ViT's patch side: --patch_size, else the image task's default for the size."""
    from dualssl_tf.models import stems
    return FLAGS.patch_size or stems.default_patch_size(FLAGS.image_size)


def networks():
    import keras
    from dualssl_tf.models import heads, resnet, vit
    keras.utils.set_random_seed(0)
    if FLAGS.encoder.startswith("vit_"):
        enc = vit.vit(FLAGS.encoder, image_size=FLAGS.image_size, patch_size=patch_size())
    else:
        depth = 18 if FLAGS.encoder == "resnet18" else 50
        enc = resnet.resnet(depth, image_size=FLAGS.image_size, stem=FLAGS.stem,
                            width_multiplier=FLAGS.width_multiplier)
    rep = enc.output_shape[-1]
    head = heads.projection_head(rep, 512, 128)
    probe = heads.LinearProbe(10, name="probe")
    probe.build((None, rep))
    return enc, head, probe, rep


def make_model(augment=None):
    """ContrastiveMethod on fresh networks, compiled; ``augment(images_uint8, step,
    replica_id) -> (view1, view2)`` is the method's ``device_views`` (the package's own
    --augment_on=device hook, SSLMethod.make_views): the views are made inside the step
    from a batch's ``image``."""
    import keras
    import tensorflow as tf
    from dualssl_tf.methods.contrastive import ContrastiveMethod

    enc, head, probe, _ = networks()
    model = ContrastiveMethod(enc, head, probe=probe, **LOSS)
    model.device_views = augment
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  steps_per_execution=FLAGS.steps_per_execution,
                  jit_compile=FLAGS.jit_compile)
    model(tf.zeros([1, FLAGS.image_size, FLAGS.image_size, 3]))  # built before fit
    model.build_optimizers()
    return model


def fixed_batch(tf):
    s, b = FLAGS.image_size, FLAGS.batch_size
    return {"view1": tf.random.uniform([b, s, s, 3], seed=1),
            "view2": tf.random.uniform([b, s, s, 3], seed=2),
            "label": tf.random.uniform([b], 0, 10, tf.int32, seed=3)}


def random_uint8(n, side):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8),
            rng.integers(0, 10, size=n).astype(np.int32))


def host_pipeline():
    """The training pipeline of the image task on in-memory uint8 images."""
    import tensorflow as tf
    from dualssl_tf.data import pipeline
    from dualssl_tf.data.sources.base import ImageSource
    arr, labels = random_uint8(FLAGS.num_images, FLAGS.image_size)
    src = ImageSource(
        name=f"random{FLAGS.image_size}",
        elements=tf.data.Dataset.from_tensor_slices((arr, labels)),
        decode=lambda a: tf.image.convert_image_dtype(a, tf.float32),
        num_examples=FLAGS.num_images, num_classes=10,
        image_shape=(FLAGS.image_size, FLAGS.image_size, 3))
    return pipeline.pretrain_dataset(src, FLAGS.batch_size, FLAGS.image_size, seed=0,
                                     color_jitter_strength=FLAGS.color_jitter_strength,
                                     blur=FLAGS.blur)


def uint8_batches():
    """What the host gives the device path: shuffled, batched uint8 images and labels."""
    import tensorflow as tf
    arr, labels = random_uint8(FLAGS.num_images, FLAGS.image_size)
    ds = tf.data.Dataset.from_tensor_slices({"image": arr, "label": labels})
    ds = ds.repeat().shuffle(FLAGS.num_images, seed=0)
    return ds.batch(FLAGS.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def device_augment_fn(module):
    def augment(images, step, replica_id=0):
        return module.device_view_pairs(
            images, seed=0, step=step, replica_id=replica_id, size=FLAGS.image_size,
            color_jitter_strength=FLAGS.color_jitter_strength, blur=FLAGS.blur)

    return augment


# -- timing ------------------------------------------------------------------------------------
#
# Each row is prepared (built, traced/compiled, warmed up) first; then the rows' timed blocks
# run interleaved, --repeats rounds of one block per row, PyTorch's included (its process
# waits between blocks), and each row keeps its best block: a shared machine's load hits
# every row alike.

class Row:
    """A benchmark row: ``block()`` runs one timed block, returns (seconds, pairs)."""

    def __init__(self, name, block, counts_flops=True):
        self.name, self.block, self.counts_flops = name, block, counts_flops
        self.best = None   # pairs/s
        self.note = ""

    def time_once(self):
        seconds, pairs = self.block()
        rate = pairs / seconds
        self.best = rate if self.best is None else max(self.best, rate)


def timed(fn):
    """``fn()`` -> (seconds, pairs) with ``fn`` returning pairs (synchronised at its end)."""
    def block():
        start = time.perf_counter()
        pairs = fn()
        return time.perf_counter() - start, pairs
    return block


def host_row():
    """A fresh iterator per block (the prefetch buffer would otherwise fill while the other
    rows run): --warmup batches untimed, then max(--steps, 20) batches timed."""
    data = host_pipeline()
    n = max(FLAGS.steps, 20)

    def block():
        it = iter(data)
        for _ in range(FLAGS.warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(n):
            batch = next(it)
        batch["view1"].numpy()
        return time.perf_counter() - start, n * FLAGS.batch_size

    return Row("host pipeline alone (tf.data, CPU)", block, counts_flops=False)


def device_augment_row(module):
    import tensorflow as tf
    arr, _ = random_uint8(FLAGS.batch_size, FLAGS.image_size)
    images = tf.constant(arr)
    aug = device_augment_fn(module)

    @tf.function(jit_compile=FLAGS.jit_compile)
    def views(step):
        v1, v2 = aug(images, step)
        return tf.reduce_sum(v1[:, 0, 0, 0]) + tf.reduce_sum(v2[:, 0, 0, 0])

    counter = [0]

    def run(n=FLAGS.steps):
        out = None
        for _ in range(n):
            out = views(tf.constant(counter[0], tf.int64))
            counter[0] += 1
        out.numpy()
        return n * FLAGS.batch_size

    run(FLAGS.warmup)
    return Row("device augmentations alone", timed(run), counts_flops=False)


def step_row():
    import tensorflow as tf
    model = make_model()
    batch = fixed_batch(tf)
    step = tf.function(model.train_step, jit_compile=FLAGS.jit_compile, autograph=False)

    def run(n=FLAGS.steps):
        logs = None
        for _ in range(n):
            logs = step(batch)
        float(logs["loss"])
        return n * FLAGS.batch_size

    run(FLAGS.warmup)
    return Row("train step alone (views in memory)", timed(run))


def _batch_clock():
    """Keras callback: the time at the end of every execution (fit has synchronised by
    then: it converts the logs of each execution's last step)."""
    import keras

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            if logs and "loss" in logs:
                float(logs["loss"])
            self.ends.append(time.perf_counter())

    return Clock()


def fit_row(name, data, augment=None):
    """model.fit over ``data``: a warm-up fit, then one fit per block; a block is timed from
    the end of its first execution to the end of its last (the iterator's start-up and the
    first execution are left out)."""
    spe = FLAGS.steps_per_execution
    executions = max(-(-FLAGS.steps // spe), 1) + 1
    model = make_model(augment)
    model.fit(data, epochs=1, steps_per_epoch=max(-(-FLAGS.warmup // spe), 1) * spe,
              verbose=0)
    clock = _batch_clock()

    def block():
        model.fit(data, epochs=1, steps_per_epoch=executions * spe, verbose=0,
                  callbacks=[clock])
        return clock.ends[-1] - clock.ends[0], (len(clock.ends) - 1) * spe * FLAGS.batch_size

    return Row(name, block)


def torch_row(kind):
    """The PyTorch row (a persistent benchmarks/throughput_torch.py --serve process), or
    (None, why it was skipped)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return None, f"PyTorch row skipped: torch does not import ({e})"
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "throughput_torch.py")
    from dualssl_tf.models import stems
    stem = stems.resolve_stem(FLAGS.stem, FLAGS.image_size)
    args = [sys.executable, script, "--serve", f"--image_size={FLAGS.image_size}",
            f"--batch_size={FLAGS.batch_size}", f"--encoder={FLAGS.encoder}", f"--stem={stem}",
            f"--width_multiplier={FLAGS.width_multiplier}", f"--steps={FLAGS.steps}",
            f"--warmup={FLAGS.warmup}", f"--threads={FLAGS.threads or os.cpu_count()}",
            f"--channels_last={FLAGS.torch_channels_last}",
            f"--patch_size={patch_size()}"]
    if FLAGS.mixed_precision == "bfloat16":
        args.append("--bf16")
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)

    def read():
        line = proc.stdout.readline()
        if not line:
            err = (proc.stderr.read().strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"PyTorch process ended (exit {proc.wait()}): {err}")
        return json.loads(line)

    try:
        info = read()
    except RuntimeError as e:
        return None, f"PyTorch row failed: {e}"

    def block():
        proc.stdin.write("run\n")
        proc.stdin.flush()
        out = read()
        return out["seconds"], out["pairs"]

    row = Row("PyTorch step (views in memory)", block)
    row.note = (f"PyTorch {info['torch']} on {info['device']}, {info['threads']} threads, network: "
                f"{info['network']}, channels_last {info['channels_last']}, bf16 autocast "
                f"{info['bf16']}")
    row.proc = proc
    return row, ""


# -- main ----------------------------------------------------------------------------------------

def main(_):
    import keras
    import tensorflow as tf
    from dualssl_tf.models import flops
    from dualssl_tf.run import distribute

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    kind, name, _ = device_info(tf)
    module = device_augment_module()
    augment_on = FLAGS.augment_on
    if augment_on == "auto":
        augment_on = "device" if (kind != "CPU" and module is not None) else "host"
    distribute.set_precision(FLAGS.mixed_precision)
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    load_before = load_average()
    notes = []

    enc, head, _, _ = networks()
    flop_pair, flop_fwd = flops.simclr_train_flops(enc, head, probe_classes=10)
    del enc, head
    peak, peak_note = peak_tflops(tf, kind, name, compute_dtype)

    rows = []
    want = set(FLAGS.rows)
    if "host" in want:
        rows.append(host_row())
    if "device" in want:
        if module is None:
            notes.append("device augmentations: not available in this checkout")
        else:
            rows.append(device_augment_row(module))
    if "step" in want:
        rows.append(step_row())
    if "fit_memory" in want:
        rows.append(fit_row("model.fit, views in memory",
                            tf.data.Dataset.from_tensors(fixed_batch(tf)).repeat()))
    if "fit" in want:
        if augment_on == "device" and module is None:
            notes.append("--augment_on=device: dualssl_tf.data.device_augment is not in "
                         "this checkout; the end-to-end row uses the host pipeline")
            augment_on = "host"
        if augment_on == "device":
            rows.append(fit_row("model.fit end to end (device augment)", uint8_batches(),
                                device_augment_fn(module)))
        else:
            rows.append(fit_row("model.fit end to end (host augment)", host_pipeline()))
    torch = None
    if "torch" in want:
        torch, why = torch_row(kind)
        if torch is None:
            notes.append(why)
        else:
            rows.append(torch)
    for _ in range(FLAGS.repeats):
        for row in rows:
            row.time_once()
    if torch is not None:
        torch.proc.stdin.close()
        torch.proc.wait(timeout=60)
        notes.append(torch.note)
    load_after = load_average()
    torch_rate = torch.best if torch is not None else None

    shape = (f"patch {patch_size()}" if FLAGS.encoder.startswith("vit_")
             else f"width {FLAGS.width_multiplier:g}")
    print(f"\nSimCLR throughput on {name} ({kind}); {FLAGS.encoder} {shape}, "
          f"{FLAGS.image_size} px, batch {FLAGS.batch_size}, "
          f"{compute_dtype} compute, XLA {'on' if FLAGS.jit_compile else 'off'}, "
          f"steps_per_execution {FLAGS.steps_per_execution}, fit views on {augment_on}")
    print(f"FLOPs per pair (analytic, conv/dense MACs x2, 2 views, x3 training): "
          f"{flop_pair / 1e9:.2f} GFLOP ({flop_fwd / 1e9:.3f} GFLOP forward per view)")
    print("peak: " + (f"{peak:.4g} TFLOP/s, {peak_note}" if peak else f"n/a ({peak_note})"))
    print(f"{load_before} (start), {load_after} (end); best of {FLAGS.repeats} interleaved "
          f"blocks of {FLAGS.steps} steps after {FLAGS.warmup} warm-up")
    head_line = f"{'row':<40} {'pairs/s':>9} {'TFLOP/s':>8} {'MFU':>7} {'vs PyTorch':>10}"
    print(head_line)
    print("-" * len(head_line))
    results = []
    for row in rows:
        rate = row.best
        tflops = rate * flop_pair / 1e12 if row.counts_flops else None
        mfu = tflops / peak if (tflops is not None and peak) else None
        ratio = rate / torch_rate if (row.counts_flops and torch_rate) else None
        cells = [f"{rate:9.1f}",
                 f"{tflops:8.4g}" if tflops is not None else f"{'':>8}",
                 f"{mfu:7.1%}" if mfu is not None else f"{'':>7}",
                 f"{ratio:9.2f}x" if ratio is not None else f"{'':>10}"]
        print(f"{row.name:<40} " + " ".join(cells))
        results.append({"row": row.name, "pairs_per_s": rate, "tflops": tflops, "mfu": mfu,
                        "vs_pytorch": ratio})
    for note in notes:
        print(note)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump({"device": name, "kind": kind, "flags": {
                k: FLAGS[k].value for k in ("image_size", "batch_size", "encoder",
                                            "patch_size", "width_multiplier", "mixed_precision",
                                            "jit_compile", "steps_per_execution", "steps")},
                "augment_on": augment_on, "gflop_per_pair": flop_pair / 1e9,
                "peak_tflops": peak, "peak": peak_note, "load": [load_before, load_after],
                "rows": results, "notes": notes}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
