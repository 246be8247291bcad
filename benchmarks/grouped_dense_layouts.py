"""Why 20 HLTM seeds cost 10-13x one seed on CPU: the forest's grouped matmuls, timed in the
layouts TensorFlow offers, against a dense matmul on the same machine.

    python benchmarks/grouped_dense_layouts.py [--seeds=20] [--hid=10]

Prints one table: milliseconds for the five GroupedDense layers of a depth-5, 2-children
forest of S trees (groups 16S, 8S, 4S, 2S, S; fan-in 2 then 2 * hid; hid units), for a
training step (forward + kernel gradients, batch 384 = two views and one negative of 128,
XLA) and an evaluation chunk (forward, 8192 samples, no XLA), and the GFLOP/s each reaches.

Layouts: ``einsum`` (ours, "bgi,giu->bgu"), ``g-major`` (transpose to [g, B, i], batched
matmul), ``B-last`` (activations kept [g, i, B] throughout: [u, i] x [i, B] per group, the
long axis last), ``broadcast`` (multiply and reduce), ``unrolled`` (a sum over i).

Measured (issue 12, this 2-core machine, S = 20, hid 10; dense 8192x512x512: 84 GFLOP/s):

| layout | train step ms | GFLOP/s | eval chunk ms | GFLOP/s |
| --- | --- | --- | --- | --- |
| einsum (ours) | 16.3 | 9.4 | 479 | 2.3 |
| g-major | 16.3 | 9.4 | 452 | 2.4 |
| B-last | 15.1 | 10.2 | 167 | 6.5 |
| broadcast | 56.0 | 2.7 | 1542 | 0.7 |
| unrolled | 105.8 | 1.4 | 1233 | 0.9 |

(The train step here takes kernel gradients only, not input gradients.) Each group's
product is tiny ([B, 20] x [20, 10]) and TF's CPU kernels pay per group: at best a tenth
of a dense matmul's rate. B-last would cut the evaluation's forward pass by 2.9x and the
step by 7%; neither brings 20 seeds near 3x one seed's time (benchmarks/hltm_seeds.py
has where an epoch goes), so the layout stays as it is.
"""

import argparse
import time

import tensorflow as tf


def layers(seeds, hid):
    return [(16 * seeds, 2, hid)] + [(g * seeds, 2 * hid, hid) for g in (8, 4, 2, 1)]


def einsum(x, k):
    return tf.einsum("bgi,giu->bgu", x, k)


def g_major(x, k):
    return tf.transpose(tf.linalg.matmul(tf.transpose(x, [1, 0, 2]), k), [1, 0, 2])


def broadcast(x, k):
    return tf.reduce_sum(x[..., None] * k[None], axis=2)


def unrolled(x, k):
    y = x[:, :, 0, None] * k[None, :, 0, :]
    for i in range(1, k.shape[1]):
        y = y + x[:, :, i, None] * k[None, :, i, :]
    return y


def b_last(x, k):  # x [g, i, B] -> [g, u, B]
    return tf.linalg.matmul(k, x, transpose_a=True)


LAYOUTS = {"einsum (ours)": einsum, "g-major": g_major, "B-last": b_last,
           "broadcast": broadcast, "unrolled": unrolled}


def time_ms(fn, shapes, batch, train, repeats):
    last = fn is b_last
    xs = [tf.random.normal([g, i, batch] if last else [batch, g, i]) for g, i, _ in shapes]
    ks = [tf.Variable(tf.random.normal([g, i, u])) for g, i, u in shapes]

    @tf.function(jit_compile=train)
    def step():
        with tf.GradientTape() as tape:
            total = tf.add_n([tf.reduce_sum(tf.square(fn(x, k))) for x, k in zip(xs, ks)])
        if not train:
            return total
        return total + tf.add_n([tf.reduce_sum(g) for g in tape.gradient(total, ks)])

    step().numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        out = step()
    out.numpy()
    return (time.perf_counter() - start) / repeats * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--hid", type=int, default=10)
    a = p.parse_args()
    shapes = layers(a.seeds, a.hid)
    macs = sum(g * i * u for g, i, u in shapes)   # per sample
    x, w = tf.random.normal([8192, 512]), tf.random.normal([512, 512])
    dense = tf.function(lambda: tf.reduce_sum(x @ w))
    dense().numpy()
    start = time.perf_counter()
    for _ in range(10):
        dense().numpy()
    dense_ms = (time.perf_counter() - start) / 10 * 1e3
    print(f"dense 8192x512x512: {2 * 8192 * 512 * 512 / dense_ms / 1e6:.0f} GFLOP/s")
    print("| layout | train step ms | GFLOP/s | eval chunk ms | GFLOP/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, fn in LAYOUTS.items():
        train = time_ms(fn, shapes, 384, True, 100)
        evaluate = time_ms(fn, shapes, 8192, False, 5)
        print(f"| {name} | {train:.1f} | {3 * 2 * 384 * macs / train / 1e6:.1f} | "
              f"{evaluate:.0f} | {2 * 8192 * macs / evaluate / 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
