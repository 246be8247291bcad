"""The PyTorch reference of benchmarks/results.py: SimCLR, BYOL and SimSiam trained in
PyTorch on the very view pairs our run trains on, then the encoder's features of the probe
images written out, so that our linear / kNN probes score them (only training differs).

    python benchmarks/reference_torch.py --method=byol --data=DIR --recipe=R.json --out=OUT

Run by ``benchmarks/results.py --reference=torch`` through ``--torch_python`` (a Python with
torch: ``pip install -e '.[bench]'``); TensorFlow is not imported here. ``DIR`` is written by
results.py's TensorFlow side: ``views.npy`` [steps, 2, B, S, S, 3] float16 (the two-view
training batches of our input pipeline, step by step, in our order), ``probe.npz``
(``train_x`` [N, S, S, 3], ``test_x`` [M, S, S, 3] float32 un-augmented probe images and
their labels). ``R.json`` holds the run's typed train.py flags (``flags``) and its
``steps_per_epoch``. Writes ``OUT/features.npz`` (``train`` [N, R], ``test`` [M, R]
float32: the encoder in eval mode, as linear_eval.py extracts ours) and
``OUT/reference.json`` (mean loss per epoch, wall times, versions, which loss code ran).

How each piece is matched to ours (tools/train.py with the same config):

* Data and views: the same arrays. Ours renders the views in float32; they travel here as
  float16 (relative rounding 2^-11, far below the generated images' pixel noise of 0.05).
  The same steps and batch order; an epoch is ``steps_per_epoch`` batches (drop remainder).
* Encoder (dualssl_tf/models/resnet.py): ResNet-18, basic blocks, CIFAR stem (3x3 conv
  stride 1, BN, ReLU, no max-pool), stage widths ``max(1, round(64 w)) * (1, 2, 4, 8)``,
  conv -> BN -> ReLU, the shortcut conv1x1 -> BN where the shape changes, ReLU after the
  add, global average pool. Padding as TensorFlow's ``same`` (asymmetric for the stride-2
  3x3 convs: nothing before, one pixel after), not torch's symmetric ``padding=1``.
* Initialisation: distributions, not values (another RNG). Convs He-normal fan-out
  untruncated (Keras VarianceScaling(2, fan_out, untruncated_normal) = torch
  kaiming_normal_(fan_out, relu)); Dense/Linear Glorot-uniform kernels and zero biases
  (Keras' default, not torch's kaiming-uniform(a=sqrt 5)); BN gamma 1, beta 0.
* BatchNorm: eps 1e-5, momentum 0.1 (= Keras 0.9: torch weighs the new batch, Keras the
  old value); torch's running variance is the unbiased batch variance, Keras' the biased
  one (n = B H W >= 64 here: a relative 1/n in eval-mode features only). Train mode for the
  online and the target networks, eval mode for the features, as ours.
* Heads (dualssl_tf/models/heads.py): projector ``proj_layers - 1`` blocks of
  Linear(no bias)-BN-ReLU then Linear(bias); BYOL/SimSiam predictor the same 2-layer
  shape ``D -> pred_hidden_dim -> D``.
* Batches through BatchNorm: SimCLR embeds both views in one call (statistics over 2B, as
  ContrastiveMethod.forward); BYOL/SimSiam one call per view (SiameseMethod.forward).
* Losses: lightly's own code where it imports (``NTXentLoss``, ``NegativeCosineSimilarity``),
  plain torch otherwise (recorded in reference.json). NT-Xent with the config's temperature
  on both views' 2B anchors (equal to ours). BYOL ``(2 - 2 cos(p1, t2)) + (2 - 2 cos(p2,
  t1))`` written as ``4 + 2 (ncs(p1, t2) + ncs(p2, t1))`` so its scale is ours (lightly's
  examples use a quarter of it; under Adam the scale matters only through epsilon);
  SimSiam ``(ncs(p1, t2) + ncs(p2, t1)) / 2`` as ours and lightly's.
* BYOL target: a copy of the online encoder + projector, moved after each optimizer step
  by lightly's ``update_momentum`` with tau from lightly's ``cosine_schedule(k, K + 1,
  base, final)`` (lightly divides by ``max_steps - 1``: K + 1 gives our
  ``1 - (1 - base)(cos(pi k / K) + 1) / 2`` at 0-based step k of K); only parameters move
  (BN running statistics are the target's own, as ours).
* Optimizer: Adam (``--optimizer=adam``, beta 0.9 / 0.999), the config's learning rate,
  constant schedule; the predictor in its own parameter group at ``pred_lr_mult`` x the
  rate (ours: optim/rate_groups.py). Epsilon 1e-7 as Keras', but Keras adds it to
  sqrt(v) before the bias correction (= torch's eps / sqrt(1 - beta2^t)): differs only
  for gradients near 1e-7 in the first steps. Weight decay: ``--weight_decay=0`` only
  (the configs'); other optimizers, schedules and decays are refused (not matched yet).
* Not matched: our online probe (trained beside the encoder on stop_gradient features: it
  does not change the encoder) is not run, so there is no probe_test_acc curve; the RNG
  streams of initialisation differ, so runs agree in distribution, not bit for bit.
* ``--init=NPZ`` (a check, not used by results.py) starts the encoder and projector from
  our run's initial values instead: from the same values the two frameworks' train-mode
  encoder and projector outputs agree to 6e-6 (scale 4.7, generated-images recipe), and
  BYOL / SimSiam seeds that stalled with torch's own draw learned as ours did.
"""

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("simclr", "byol", "simsiam")


def fail(message):
    print(f"reference_torch.py: {message}", file=sys.stderr)
    sys.exit(2)


# -- networks -------------------------------------------------------------------------------

class SameConv2d(nn.Conv2d):
    """Conv2d without bias, TensorFlow ``padding="same"``: total padding
    ``max((ceil(H / s) - 1) s + k - H, 0)``, its smaller half before. x: [B, C, H, W]."""

    def __init__(self, cin, cout, kernel, stride):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, bias=False)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        k, s = self.kernel_size[0], self.stride[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):          # F.pad: last dim first
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def bn2d(c):
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
    """dualssl_tf.models.resnet._basic_block: [B, cin, H, W] -> [B, cout, H/s, W/s]."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = SameConv2d(cin, cout, 3, stride), bn2d(cout)
        self.conv2, self.bn2 = SameConv2d(cout, cout, 3, 1), bn2d(cout)
        self.down = (nn.Sequential(SameConv2d(cin, cout, 1, stride), bn2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class ResNet18(nn.Module):
    """CIFAR-stem ResNet-18 of width w: [B, 3, S, S] -> [B, 8 max(1, round(64 w))]."""

    def __init__(self, width_multiplier):
        super().__init__()
        base = max(1, int(round(64 * width_multiplier)))
        self.stem = nn.Sequential(SameConv2d(3, base, 3, 1), bn2d(base), nn.ReLU())
        blocks, cin = [], base
        for stage in range(4):
            for b in range(2):
                cout = base * 2 ** stage
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.dim = cin

    def forward(self, x):
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


def dense(cin, cout, bias):
    layer = nn.Linear(cin, cout, bias=bias)
    nn.init.xavier_uniform_(layer.weight)      # Keras' glorot_uniform
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def mlp(cin, hidden, cout, num_layers, batch_norm=True):
    """dualssl_tf.models.heads.projection_head: [B, cin] -> [B, cout]."""
    layers, d = [], cin
    for _ in range(num_layers - 1):
        layers.append(dense(d, hidden, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden, eps=1e-5, momentum=0.1))
        layers.append(nn.ReLU())
        d = hidden
    layers.append(dense(d, cout, bias=True))
    return nn.Sequential(*layers)


# -- losses (lightly's where it imports) ----------------------------------------------------

def loss_functions(temperature):
    """(ntxent(z1, z2), ncs(p, t), source): lightly's modules or plain torch."""
    try:
        from lightly.loss import NegativeCosineSimilarity, NTXentLoss
        import lightly
        return (NTXentLoss(temperature=temperature), NegativeCosineSimilarity(),
                f"lightly {lightly.__version__}")
    except ImportError:
        pass

    def ntxent(z1, z2):
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        b = z1.shape[0]
        sim = z @ z.t() / temperature
        sim.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
        return F.cross_entropy(sim, target)

    def ncs(p, t):
        return -F.cosine_similarity(p, t, dim=1).mean()
    return ntxent, ncs, "plain torch (lightly not installed)"


def momentum_schedule(step, total_steps, base, final):
    """BYOL's tau after 0-based step ``step`` of ``total_steps`` (see the docstring)."""
    try:
        from lightly.utils.scheduler import cosine_schedule
        return cosine_schedule(step, total_steps + 1, base, final)
    except ImportError:
        return final - (final - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


@torch.no_grad()
def ema_update(online, target, tau):
    try:
        from lightly.models.utils import update_momentum
        update_momentum(online, target, tau)
    except ImportError:
        for t, o in zip(target.parameters(), online.parameters()):
            t.mul_(tau).add_(o, alpha=1.0 - tau)


# -- training -------------------------------------------------------------------------------

def check_recipe(f, method):
    """The config's settings this reference matches; anything else ends with exit 2."""
    refused = []
    if f["optimizer"] != "adam":
        refused.append(f"--optimizer={f['optimizer']} (adam only)")
    if f["lr_schedule"] != "constant" or f.get("warmup_epochs", 0):
        refused.append(f"--lr_schedule={f['lr_schedule']} (constant, no warmup only)")
    if f["weight_decay"]:
        refused.append(f"--weight_decay={f['weight_decay']} (0 only)")
    if f["encoder"] != "resnet18" or f["stem"] != "cifar":
        refused.append(f"--encoder={f['encoder']} --stem={f['stem']} (resnet18 cifar only)")
    if f.get("lr_scaling", "none") != "none":
        refused.append(f"--lr_scaling={f['lr_scaling']} (none only)")
    if method == "simclr" and (f["loss"] != "ntxent" or f["negatives"] not in ("auto",
                                                                              "batch")):
        refused.append(f"--loss={f['loss']} (ntxent with in-batch negatives only)")
    if method in ("byol", "simsiam"):
        p = method + "_"
        if f[p + "predictor"] != "mlp" or f.get(p + "pred_fixed_lr"):
            refused.append(f"--{p}predictor={f[p + 'predictor']} (a scheduled mlp only)")
        if method == "byol" and not f["byol_ema"]:
            refused.append("--nobyol_ema (the moving-average target only)")
        if method == "simsiam" and not f["simsiam_stop_gradient"]:
            refused.append("--nosimsiam_stop_gradient (stop-gradient only)")
    if refused:
        fail("the recipe sets what the PyTorch reference does not match yet: "
             + "; ".join(refused) + "; run results.py without --reference for it")


def build(method, f):
    """(modules dict, parameter groups) of a method."""
    encoder = ResNet18(f["width_multiplier"])
    head = (mlp(encoder.dim, f["proj_hidden_dim"], f["proj_dim"], f["proj_layers"],
                f["proj_bn"]) if f["proj_layers"] > 0 else nn.Identity())
    dim = f["proj_dim"] if f["proj_layers"] > 0 else encoder.dim
    nets = {"encoder": encoder, "head": head}
    lr = f["learning_rate"]
    groups = [{"params": list(encoder.parameters()) + list(head.parameters()), "lr": lr}]
    if method in ("byol", "simsiam"):
        p = method + "_"
        nets["predictor"] = mlp(dim, f[p + "pred_hidden_dim"], dim, 2, f[p + "pred_bn"])
        groups.append({"params": list(nets["predictor"].parameters()),
                       "lr": lr * f[p + "pred_lr_mult"]})
    if method == "byol":
        nets["target"] = copy.deepcopy(nn.Sequential(encoder, head))
        for q in nets["target"].parameters():
            q.requires_grad_(False)
    return nets, groups


@torch.no_grad()
def load_initial(encoder, head, path):
    """Starts ``encoder`` and ``head`` from our run's initial values: ``path`` an npz of
    arrays ``0``, ``1``, ... in the order of the run's ``initial/weights`` checkpoint
    (encoder, then projector; each conv / dense kernel then its BatchNorm's gamma, beta,
    moving mean and variance). Kernels are transposed (HWIO -> OIHW, [in, out] ->
    [out, in]); a conv takes the first unused kernel of its shape, so the order of a
    block's convs and its shortcut may differ between the two frameworks."""
    arrays = np.load(path)
    values = [arrays[str(i)] for i in range(len(arrays.files))]
    groups, i = [], 0                       # (kernel, [bias] or [gamma, beta, mean, var])
    while i < len(values):
        j = i + 1
        while j < len(values) and values[j].ndim == 1:
            j += 1
        groups.append((values[i], values[i + 1:j]))
        i = j
    used = set()
    modules = [m for m in list(encoder.modules()) + list(head.modules())
               if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d))]
    for n, m in enumerate(modules):
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        want = (tuple(m.weight.shape[2:]) + (m.weight.shape[1], m.weight.shape[0])
                if isinstance(m, nn.Conv2d) else (m.weight.shape[1], m.weight.shape[0]))
        k = next(k for k, g in enumerate(groups) if k not in used and g[0].shape == want)
        used.add(k)
        kernel, rest = groups[k]
        m.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4
                                        else kernel.T))
        if m.bias is not None:
            m.bias.copy_(torch.from_numpy(rest[0]))
        elif rest:
            bn = modules[n + 1]
            for t, v in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), rest):
                t.copy_(torch.from_numpy(v))
    if len(used) != len(groups):
        fail(f"--init: {path} has {len(groups)} kernels, the networks use {len(used)}")


def train(method, f, views, steps_per_epoch, log, init=None):
    """Trains on ``views`` [steps, 2, B, S, S, 3]; returns the encoder."""
    nets, groups = build(method, f)
    if init:
        load_initial(nets["encoder"], nets["head"], init)
        if "target" in nets:
            nets["target"].load_state_dict(nn.Sequential(nets["encoder"],
                                                         nets["head"]).state_dict())
    ntxent, ncs, log["loss_code"] = loss_functions(f["temperature"])
    opt = torch.optim.Adam(groups, betas=(0.9, 0.999), eps=1e-7)
    online = nn.Sequential(nets["encoder"], nets["head"])
    for m in nets.values():
        m.train()
    total = len(views)
    epoch_losses, running = [], []
    start = time.time()
    for step in range(total):
        batch = torch.from_numpy(np.asarray(views[step], dtype=np.float32))
        x1, x2 = (batch[i].permute(0, 3, 1, 2).contiguous() for i in (0, 1))
        if method == "simclr":
            z = online(torch.cat([x1, x2]))
            loss = ntxent(z[:len(x1)], z[len(x1):])
        else:
            z1, z2 = online(x1), online(x2)
            p1, p2 = nets["predictor"](z1), nets["predictor"](z2)
            if method == "byol":
                with torch.no_grad():
                    t1, t2 = nets["target"](x1), nets["target"](x2)
                loss = 4.0 + 2.0 * (ncs(p1, t2) + ncs(p2, t1))
            else:
                t1, t2 = z1.detach(), z2.detach()
                loss = 0.5 * (ncs(p1, t2) + ncs(p2, t1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if method == "byol":
            tau = momentum_schedule(step, total, f["byol_base_momentum"],
                                    f["byol_final_momentum"])
            ema_update(online, nets["target"], tau)
        running.append(float(loss.detach()))
        if (step + 1) % steps_per_epoch == 0 or step + 1 == total:
            epoch_losses.append(float(np.mean(running)))
            running = []
            print(f"epoch {len(epoch_losses)}: loss {epoch_losses[-1]:.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    log["epoch_loss"] = epoch_losses
    log["train_s"] = time.time() - start
    return nets["encoder"]


@torch.no_grad()
def features(encoder, images, batch=256):
    """Eval-mode representations of NHWC float32 images: [N, S, S, 3] -> [N, R]."""
    encoder.eval()
    out = [encoder(torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).contiguous())
           for i in range(0, len(images), batch)]
    return torch.cat(out).numpy().astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--data", required=True, help="views.npy and probe.npz (results.py)")
    parser.add_argument("--recipe", required=True, help="recipe JSON (results.py)")
    parser.add_argument("--out", required=True, help="folder for features.npz, reference.json")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--init", default="", help="a check: npz of our run's initial "
                        "encoder + projector values (load_initial) instead of a fresh draw; "
                        "written from RUN/initial/weights by tf.train.load_checkpoint, "
                        "array i = variables/i")
    args = parser.parse_args()
    with open(args.recipe) as fh:
        recipe = json.load(fh)
    f = recipe["flags"]
    check_recipe(f, args.method)
    views = np.load(os.path.join(args.data, "views.npy"), mmap_mode="r")
    steps = int(recipe["total_steps"])
    if len(views) < steps:
        fail(f"--data: {args.data}/views.npy holds {len(views)} steps, the recipe needs "
             f"{steps}; let results.py write it again")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(int(f["seed"]))
    log = {"method": args.method, "torch": torch.__version__, "threads":
           torch.get_num_threads(), "steps": steps}
    encoder = train(args.method, f, views[:steps], int(recipe["steps_per_epoch"]), log,
                    args.init)
    log["init"] = args.init or "fresh draw"
    start = time.time()
    probe = np.load(os.path.join(args.data, "probe.npz"))
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, "features.npz"), train=features(encoder, probe["train_x"]),
             test=features(encoder, probe["test_x"]))
    log["features_s"] = time.time() - start
    with open(os.path.join(args.out, "reference.json"), "w") as fh:
        json.dump(log, fh, indent=2, sort_keys=True)
        fh.write("\n")


if __name__ == "__main__":
    main()
