"""Reference values of Barlow Twins' and VICReg's losses from the peers' own code, written as
test data for tests/methods/test_decorrelation_losses.py (tests never import torch).

Run with the PyTorch venv (torch, lightly):

    /work/venv-bench/bin/python benchmarks/peer_reference_barlow_vicreg.py \
        [--solo_repo=DIR] [--out=tests/methods/data/peer_barlow_vicreg.json]

On fixed seeded inputs (float64 numpy, given to torch as float32) it records:

* lightly's ``BarlowTwinsLoss(lambda_param)`` and ``VICRegLoss()`` (lightly.loss, 1.6),
  each loss with its gradient with respect to ``z_a``;
* with ``--solo_repo`` (a checkout of vturrisi/solo-learn), solo-learn's
  ``barlow_loss_func`` and ``vicreg_loss_func`` read from ``solo/losses/{barlow,vicreg}.py``
  (solo's ``gather`` is the identity on one process, and is stubbed so).

One process, no distributed setup: every peer's "per GPU" statistics are the global
batch's, which is what our losses compute on any number of replicas.
"""

import argparse
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch

# (name, batch N, width D, seed, scale of z2's noise): a strongly and a weakly correlated
# pair, with widths where D > N and D < N.
CASES = [("b16_d8", 16, 8, 0, 0.3), ("b6_d12", 6, 12, 1, 1.0)]
BARLOW_LAMBDA = 0.0051


def inputs(n, d, seed, noise):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.2, 3.0, size=d)          # unequal per-dimension spreads
    z1 = rng.normal(size=(n, d)) * scale + rng.normal(size=d)
    z2 = z1 + noise * rng.normal(size=(n, d)) * scale
    return z1, z2


def solo_functions(repo):
    """solo-learn's barlow_loss_func and vicreg_loss_func, from the checkout's files (read
    from its git objects when the checkout is bare)."""
    def source(path):
        full = os.path.join(repo, path)
        if os.path.exists(full):
            with open(full) as f:
                return f.read()
        return subprocess.run(["git", "-C", repo, "show", f"HEAD:{path}"], check=True,
                              capture_output=True, text=True).stdout

    misc = types.ModuleType("solo.utils.misc")
    misc.gather = lambda x: x   # one process: the gather is the identity
    for name in ("solo", "solo.utils"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["solo.utils.misc"] = misc
    out = {}
    for mod, fn in (("barlow", "barlow_loss_func"), ("vicreg", "vicreg_loss_func")):
        namespace = {}
        exec(compile(source(f"solo/losses/{mod}.py"), f"solo/losses/{mod}.py", "exec"),
             namespace)
        out[fn] = namespace[fn]
    return out


def loss_and_grad(fn, z1, z2):
    a = torch.tensor(z1, dtype=torch.float32, requires_grad=True)
    b = torch.tensor(z2, dtype=torch.float32)
    loss = fn(a, b)
    loss.backward()
    return float(loss.detach()), a.grad.numpy().astype(float).tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--solo_repo", default=None)
    parser.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "methods", "data",
        "peer_barlow_vicreg.json"))
    args = parser.parse_args()
    import lightly
    from lightly.loss import BarlowTwinsLoss, VICRegLoss

    torch.manual_seed(0)
    solo = solo_functions(args.solo_repo) if args.solo_repo else None
    result = {"torch": torch.__version__, "lightly": lightly.__version__,
              "barlow_lambda": BARLOW_LAMBDA, "solo_learn": bool(solo), "cases": {}}
    for name, n, d, seed, noise in CASES:
        z1, z2 = inputs(n, d, seed, noise)
        case = {"z1": z1.tolist(), "z2": z2.tolist()}
        case["lightly_barlow"], case["lightly_barlow_grad"] = loss_and_grad(
            BarlowTwinsLoss(lambda_param=BARLOW_LAMBDA), z1, z2)
        case["lightly_vicreg"], case["lightly_vicreg_grad"] = loss_and_grad(
            VICRegLoss(), z1, z2)
        if solo:
            # solo-learn's defaults: lamb 5e-3 / scale 0.025 in the function; its CIFAR
            # recipe: lamb 0.0051, scale_loss 0.1.
            case["solo_barlow_scale0.1"] = loss_and_grad(
                lambda a, b: solo["barlow_loss_func"](a, b, lamb=BARLOW_LAMBDA,
                                                      scale_loss=0.1), z1, z2)[0]
            case["solo_vicreg"] = loss_and_grad(solo["vicreg_loss_func"], z1, z2)[0]
        result["cases"][name] = case
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: " + ", ".join(
        f"{k}: barlow {c['lightly_barlow']:.6g} vicreg {c['lightly_vicreg']:.6g}"
        for k, c in result["cases"].items()))


if __name__ == "__main__":
    main()
