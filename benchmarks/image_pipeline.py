"""Input-pipeline throughput: SimCLR two-view augmentation, images/s (pairs per second).

    PYTHONPATH=. python benchmarks/image_pipeline.py [--batches=20] [--batch_size=128]

Sources are in-memory uint8 images (as tfds yields after decoding: the PNG decode of the
tfds path is included with --encoded), augmented exactly as in training (crop, flip,
colour jitter, grayscale; blur at 96 px as for STL-10), plus the generated shapes.
The CPU is shared with other processes, so these figures are pessimistic.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from dualssl_tf.data import pipeline  # noqa: E402
from dualssl_tf.data.sources.base import ImageSource  # noqa: E402
from dualssl_tf.data.sources.generated import generated_source  # noqa: E402
from dualssl_tf.data.generated_images import GeneratedImages  # noqa: E402

flags.DEFINE_integer("batches", 20, "Timed batches per configuration (after 3 warm-up).")
flags.DEFINE_integer("batch_size", 128, "Pairs per batch.")
flags.DEFINE_integer("num_images", 512, "Distinct source images held in memory.")
flags.DEFINE_bool("encoded", True, "Store PNG bytes and decode in the pipeline (as tfds).")
FLAGS = flags.FLAGS


def memory_source(side, n, encoded):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    labels = tf.constant(rng.integers(0, 10, size=n), tf.int32)
    if encoded:
        raw = tf.stack([tf.io.encode_png(a) for a in arr])
        decode = lambda b: tf.ensure_shape(  # noqa: E731
            tf.image.convert_image_dtype(tf.io.decode_png(b, channels=3), tf.float32),
            [side, side, 3])
    else:
        raw = tf.constant(arr)
        decode = lambda a: tf.image.convert_image_dtype(a, tf.float32)  # noqa: E731
    return ImageSource(name=f"memory{side}", elements=tf.data.Dataset.from_tensor_slices(
        (raw, labels)), decode=decode, num_examples=n, num_classes=10,
        image_shape=(side, side, 3))


def rate(ds, batches, batch_size):
    it = iter(ds)
    for _ in range(3):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main(_):
    b = FLAGS.batch_size
    rows = []
    for side, strength, blur in ((96, 1.0, True), (32, 0.5, False)):
        src = memory_source(side, FLAGS.num_images, FLAGS.encoded)
        ds = pipeline.pretrain_dataset(src, b, side, seed=0, color_jitter_strength=strength,
                                       blur=blur)
        rows.append((f"simclr {side}px" + (" +blur" if blur else ""),
                     rate(ds, FLAGS.batches, b)))
    gen = GeneratedImages(image_size=32, seed=0)
    src = generated_source(gen)
    rows.append(("generated 32px", rate(pipeline.pretrain_dataset(src, b, 32), FLAGS.batches,
                                        b)))
    print(f"\nTwo-view pipeline throughput (batch {b}, {os.cpu_count()} CPUs, shared; "
          f"PNG decode {'on' if FLAGS.encoded else 'off'})")
    print(f"{'pipeline':<22} {'pairs/s':>9} {'views/s':>9}")
    for name, r in rows:
        print(f"{name:<22} {r:9.0f} {2 * r:9.0f}")


if __name__ == "__main__":
    app.run(main)
