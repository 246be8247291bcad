"""Train-step time of each method on the same encoder: contrastive vs BYOL, SimSiam,
BYOL with DirectPred's predictor, MoCo v2, MoCo v3, Barlow Twins, VICReg and DINO (two
crops, and with 2 local crops of 8 px: ``dino_multicrop``; images only) (the fit path: every
metric, the online probe).

    PYTHONPATH=. python benchmarks/method_step.py [--task=images|hltm] [--steps=20]

images: the ResNet-18 of configs/generated_images.cfg (16 px, width 0.125, projector
128-64, batch 64, predictors of configs/generated_images_{byol,simsiam}.cfg, Barlow Twins'
and VICReg's own 3 x 256 projector of configs/generated_images_{barlow,vicreg}.cfg, DINO head
of configs/generated_images_dino.cfg: 128-64-256); hltm: the
TreeNet of configs/hltm.cfg (depth 5, hid 10, batch 128; contrastive with one explicit
negative, BYOL with its default 4096-wide predictor). Each timing is the best of
``--repeats`` fits of ``--steps`` steps on a repeated in-memory batch, the methods
interleaved, so a shared CPU's load hits them alike; ms/step printed.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the tools (tools/cli.py)

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from dualssl_tf.methods.barlow import BarlowTwinsMethod  # noqa: E402
from dualssl_tf.methods.byol import BYOLMethod, SimSiamMethod  # noqa: E402
from dualssl_tf.methods.contrastive import ContrastiveMethod  # noqa: E402
from dualssl_tf.methods.dino import DINOMethod, dino_head  # noqa: E402
from dualssl_tf.methods.moco import MoCoV2Method, MoCoV3Method  # noqa: E402
from dualssl_tf.methods.vicreg import VICRegMethod  # noqa: E402
from dualssl_tf.models import heads, resnet, tree_net  # noqa: E402

flags.DEFINE_enum("task", "images", ["images", "hltm"], "Encoder and batch.")
flags.DEFINE_integer("steps", 20, "Steps per timed fit.")
flags.DEFINE_integer("repeats", 3, "Timed fits per method (best kept).")
FLAGS = flags.FLAGS


def _nets():
    keras.utils.set_random_seed(0)
    if FLAGS.task == "images":
        enc = resnet.resnet(18, image_size=16, stem="cifar", width_multiplier=0.125)
        head = heads.projection_head(enc.output_shape[-1], 128, 64)
        probe = heads.LinearProbe(6)
        probe.build((None, enc.output_shape[-1]))
        return enc, head, probe
    net = tree_net.TreeNet(5, 2, 10)
    net(tf.zeros([1, 32]))
    return net, None, None


def _batch():
    if FLAGS.task == "images":
        b = 64
        return {"view1": tf.random.uniform([b, 16, 16, 3]),
                "view2": tf.random.uniform([b, 16, 16, 3]),
                "label": tf.random.uniform([b], 0, 6, tf.int64)}
    b = 128
    x = lambda *s: tf.cast(tf.random.uniform([b, *s]) < 0.5, tf.float32)  # noqa: E731
    return {"view1": x(32), "view2": x(32), "negatives": x(1, 32)}


def _methods():
    images = FLAGS.task == "images"
    pred = 128 if images else 4096
    loss = dict(loss="ntxent", temperature=0.5) if images else dict(loss="nce",
                                                                    temperature=0.1)
    total = 1000
    shape = dict(input_shape=(16, 16, 3) if images else (32,))
    def dino(e, h, p):
        return DINOMethod(e, dino_head(e.output_shape[-1], 256, 128, 64), probe=p,
                          total_steps=total, **shape)

    out = {
        "contrastive": lambda e, h, p: ContrastiveMethod(e, h, probe=p, **loss),
        "byol": lambda e, h, p: BYOLMethod(e, h, pred_hidden_dim=pred, probe=p,
                                           total_steps=total, **shape),
        "simsiam": lambda e, h, p: SimSiamMethod(e, h, pred_hidden_dim=pred // 4 if images
                                                 else pred, probe=p, **shape),
        "byol_directpred": lambda e, h, p: BYOLMethod(e, h, predictor="directpred", probe=p,
                                                      total_steps=total, **shape),
        # configs/generated_images_mocov{2,3}.cfg's heads (queue 4096 per view, symmetric).
        "mocov2": lambda e, h, p: MoCoV2Method(e, h, queue_size=4096, symmetric=True,
                                               probe=p, total_steps=total, **shape),
        "mocov3": lambda e, h, p: MoCoV3Method(e, h, pred_hidden_dim=pred, probe=p,
                                               total_steps=total, **shape),
        "barlow": lambda e, h, p: BarlowTwinsMethod(e, _twin_head(e, h), probe=p),
        "vicreg": lambda e, h, p: VICRegMethod(e, _twin_head(e, h), probe=p),
    }
    if images:
        out.update(dino=dino, dino_multicrop=dino)
    return out


def _twin_head(encoder, head):
    """Barlow Twins' / VICReg's own projector (3 x 256, their CPU configs) where the task has
    a head; none on the head-less HLTM."""
    if head is None:
        return None
    return heads.projection_head(encoder.output_shape[-1], 256, 256, 3)


def main(_):
    data = tf.data.Dataset.from_tensors(_batch()).repeat()
    models = {}
    for name, make in _methods().items():
        batch = dict(_batch())
        if name != "contrastive":
            batch.pop("negatives", None)
        if name == "dino_multicrop":
            batch["local_views"] = tf.random.uniform([64, 2, 8, 8, 3])
        model = make(*_nets())
        model.compile(optimizer=keras.optimizers.Adam(1e-3) if FLAGS.task == "images"
                      else keras.optimizers.SGD(0.1))
        ds = tf.data.Dataset.from_tensors(batch).repeat()
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)   # trace
        models[name] = (model, ds)
    del data
    best = {name: float("inf") for name in models}
    for _ in range(FLAGS.repeats):
        for name, (model, ds) in models.items():
            start = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=FLAGS.steps, verbose=0)
            best[name] = min(best[name], (time.perf_counter() - start) / FLAGS.steps)
    ref = best["contrastive"]
    print(f"task={FLAGS.task}  ms/step (best of {FLAGS.repeats} x {FLAGS.steps} steps)")
    for name, t in best.items():
        print(f"{name:<16} {1000 * t:8.1f}   x{t / ref:4.2f}")


if __name__ == "__main__":
    app.run(main)
