"""The PyTorch side of benchmarks/throughput.py: the same SimCLR train step, timed alone.

    python benchmarks/throughput_torch.py --image_size=32 --batch_size=128 [--encoder=resnet18]

Run by throughput.py in a subprocess (same process tree, same thread count) with --serve,
which times one block per request so that throughput.py interleaves them with its rows;
alone it prints one JSON line (best of --repeats blocks). The step is the one throughput.py times
on the TensorFlow side: a ViT (timm's VisionTransformer, the same size and patch, no
classifier, [CLS] token) or ResNet-18/50 with
the same stem (cifar: 3x3/1, no max-pool; imagenet: 7x7/2 + max-pool) and width, the
projection head Linear(R, 512, no bias)-BN-ReLU-Linear(512, 128), NT-Xent (tau 0.5) over
the 2B views of the batch, SGD momentum 0.9, plus the online linear probe (a BatchNorm
without affine + Linear(R, 10), Adam 1e-3, on the detached representation of view 1), on
fixed augmentation-free views in memory. The network is torchvision's ResNet when
torchvision imports; otherwise (e.g. a CUDA torchvision next to a CPU torch) this file's
re-declaration of the same architecture (torchvision v1.5 blocks), said so in the output.
The memory format is PyTorch's faster one for the shape (--channels_last=auto: NCHW and
channels-last timed one step each), on the GPU when torch sees one.
"""

import argparse
import json
import os
import sys
import time


# The ViT sizes of dualssl_tf.models.vit by their timm names (patch and image size set).
TIMM_VIT = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
            "vit_base": "vit_base_patch16_224"}


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--encoder", choices=("resnet18", "resnet50") + tuple(TIMM_VIT),
                   default="resnet18")
    p.add_argument("--patch_size", type=int, default=4, help="ViT patch side.")
    p.add_argument("--stem", choices=("cifar", "imagenet"), default="cifar")
    p.add_argument("--width_multiplier", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="0 = every core (os.cpu_count()).")
    p.add_argument("--bf16", action="store_true", help="autocast the step to bfloat16.")
    p.add_argument("--channels_last", choices=("auto", "true", "false"), default="auto",
                   help="memory format; auto: the faster of the two for this shape.")
    p.add_argument("--serve", action="store_true",
                   help="after the warm-up print one JSON line (the set-up), then time one "
                        "block of --steps steps per 'run' line on stdin (one JSON line "
                        "each: seconds, pairs) until stdin closes: throughput.py "
                        "interleaves these blocks with its own rows.")
    return p.parse_args()


def own_resnet(torch, depth, width, num_classes=1000):
    """torchvision's ResNet-18/50 (v1.5: stride in the bottleneck's 3x3), width-scaled."""
    nn = torch.nn

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != planes:
                self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, planes, stride):
            super().__init__()
            out = 4 * planes
            self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != out:
                self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                                nn.BatchNorm2d(out))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    block, layers = (Basic, (2, 2, 2, 2)) if depth == 18 else (Bottleneck, (3, 4, 6, 3))
    base = max(1, int(round(64 * width)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(base)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            stages, cin = [], base
            for i, n in enumerate(layers):
                blocks = []
                for b in range(n):
                    blocks.append(block(cin, base * 2 ** i, 2 if (i > 0 and b == 0) else 1))
                    cin = base * 2 ** i * block.expansion
                stages.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()


def encoder(torch, args):
    """(network x -> representation [B, R], R, where the architecture came from)."""
    if args.encoder in TIMM_VIT:
        import timm
        net = timm.create_model(TIMM_VIT[args.encoder], pretrained=False, num_classes=0,
                                img_size=args.image_size, patch_size=args.patch_size)
        return net, net.num_features, f"timm {timm.__version__} {TIMM_VIT[args.encoder]}"
    depth = 18 if args.encoder == "resnet18" else 50
    source = "torchvision"
    try:
        if args.width_multiplier != 1.0:
            raise ImportError("torchvision's ResNet has no width multiplier")
        import torchvision
        net = getattr(torchvision.models, args.encoder)()
    except Exception as e:  # noqa: BLE001 -- a broken torchvision raises RuntimeError too
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:120]
        source = f"throughput_torch.py's copy of torchvision's ResNet ({first})"
        net = own_resnet(torch, depth, args.width_multiplier)
    if args.stem == "cifar":
        base = net.conv1.out_channels
        net.conv1 = torch.nn.Conv2d(3, base, 3, 1, 1, bias=False)
        net.maxpool = torch.nn.Identity()
    rep = net.fc.in_features
    net.fc = torch.nn.Identity()
    return net, rep, source


def main():
    args = parse()
    import torch
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    # TensorFlow runs its kernels with denormals flushed to zero (ScopedFlushDenormal);
    # without it PyTorch's CPU step slows down by up to 100x once values become denormal.
    denormals_flushed = bool(torch.set_flush_denormal(True))
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    nn = torch.nn
    net, rep, source = encoder(torch, args)
    head = nn.Sequential(nn.Linear(rep, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(),
                         nn.Linear(512, 128))
    probe = nn.Sequential(nn.BatchNorm1d(rep, affine=False), nn.Linear(rep, 10))
    net, head, probe = net.to(dev), head.to(dev), probe.to(dev)
    params = list(net.parameters()) + list(head.parameters())

    def optimizers():
        return (torch.optim.SGD(params, lr=0.1, momentum=0.9),
                torch.optim.Adam(probe.parameters(), lr=1e-3))

    opts = list(optimizers())
    b, s = args.batch_size, args.image_size
    views = [torch.rand(b, 3, s, s, device=dev), torch.rand(b, 3, s, s, device=dev)]
    labels = torch.randint(0, 10, (b,), device=dev)
    tau = 0.5
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(dev)
    eye = torch.eye(2 * b, dtype=torch.bool, device=dev)

    def set_layout(channels_last):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        net.to(memory_format=fmt)
        views[:] = [v.contiguous(memory_format=fmt) for v in views]

    def step():
        x1, x2 = views
        opt, probe_opt = opts
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=args.bf16):
            h = net(torch.cat([x1, x2]))
            z = head(h)
        z = nn.functional.normalize(z.float(), dim=1, eps=1e-4)
        logits = (z @ z.t() / tau).masked_fill(eye, float("-inf"))
        loss = nn.functional.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        probe_loss = nn.functional.cross_entropy(probe(h[:b].detach().float()), labels)
        probe_opt.zero_grad(set_to_none=True)
        probe_loss.backward()
        probe_opt.step()
        return float(loss.detach())   # synchronises

    layouts = {"true": [True], "false": [False], "auto": [False, True]}[args.channels_last]
    if len(layouts) > 1:
        # PyTorch's faster layout for this shape (NCHW or channels-last; which one wins
        # depends on the width and the device): one warm-up and one timed step each.
        times = {}
        for cl in layouts:
            set_layout(cl)
            step()
            start = time.perf_counter()
            step()
            times[cl] = time.perf_counter() - start
        channels_last = min(times, key=times.get)
    else:
        channels_last = layouts[0]
    set_layout(channels_last)
    opts[:] = optimizers()   # fresh state in this layout (the probe's was in both)
    for _ in range(args.warmup):
        step()
    info = {"threads": threads, "torch": torch.__version__, "network": source,
            "channels_last": channels_last, "bf16": args.bf16, "device": dev,
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "flush_denormal": denormals_flushed}

    def block():
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()   # float(): synchronised
        return time.perf_counter() - start, loss

    if args.serve:
        print(json.dumps(info), flush=True)
        for line in sys.stdin:
            if line.strip() == "run":
                seconds, loss = block()
                print(json.dumps({"seconds": seconds, "pairs": args.steps * b, "loss": loss}),
                      flush=True)
        return 0
    best = float("inf")
    for _ in range(args.repeats):
        seconds, loss = block()
        best = min(best, seconds / args.steps)
    print(json.dumps({"pairs_per_s": b / best, "step_s": best, "loss": loss, **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
