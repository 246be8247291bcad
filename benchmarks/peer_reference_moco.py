"""Reference values of the MoCo v2 / v3 losses from solo-learn's own loss code, as test data.

    /work/venv-bench/bin/python benchmarks/peer_reference_moco.py --solo_learn=DIR

DIR is a checkout of github.com/vturrisi/solo-learn (only ``solo/losses/mocov2plus.py`` and
``solo/losses/mocov3.py`` are read, imported from their files; the one solo-learn helper
the v3 loss imports, an all-gather, is the identity in one process and stubbed so).
Fixed seeded inputs: raw queries and keys of both views [B, D] and a queue of unit keys
[2, K, D] (this package's layout; solo-learn's is [2, D, K]); the losses as solo-learn's
methods combine them:

* ``mocov2``: ``mocov2plus_loss_func(q1, k2, queue[0])`` (MoCo v2: one queue of view-2
  keys);
* ``mocov2_symmetric``: ``(f(q1, k2, queue[1]) + f(q2, k1, queue[0])) / 2``
  (solo-learn's mocov2plus ``training_step``);
* ``mocov3``: ``mocov3_loss_func(q1, k2) + mocov3_loss_func(q2, k1)`` (its ``training_step``;
  one process, rank 0).

Queries and keys are normalised with ``F.normalize`` first (solo-learn's methods do so for
v2; its v3 loss does it itself). Writes tests/methods/data/moco_reference.json (float64
values from float64 inputs, and the float32 computation too) for tests/methods/test_moco.py.
"""

import argparse
import importlib.util
import json
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "tests", "methods", "data", "moco_reference.json")
B, D, K, TAU, SEED = 8, 16, 32, 0.2, 7


def stub_gather():
    """solo-learn's mocov3.py imports ``concat_all_gather_no_grad`` from solo/utils/misc.py,
    which needs omegaconf and timm; outside torch.distributed that function returns its
    argument, so one process gets the same from this stand-in."""
    for name in ("solo", "solo.utils"):
        sys.modules.setdefault(name, types.ModuleType(name))
    misc = types.ModuleType("solo.utils.misc")
    misc.concat_all_gather_no_grad = lambda tensor: tensor
    sys.modules["solo.utils.misc"] = misc


def load(root, name):
    path = os.path.join(root, "solo", "losses", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"solo_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def losses(v2, v3, q1, q2, k1, k2, queue):
    q1n, q2n, k1n, k2n = (F.normalize(t, dim=-1) for t in (q1, q2, k1, k2))
    f = v2.mocov2plus_loss_func
    return {
        "mocov2": float(f(q1n, k2n, queue[0].T, TAU)),
        "mocov2_symmetric": float((f(q1n, k2n, queue[1].T, TAU)
                                   + f(q2n, k1n, queue[0].T, TAU)) / 2),
        "mocov3": float(v3.mocov3_loss_func(q1, k2, TAU) + v3.mocov3_loss_func(q2, k1, TAU)),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--solo_learn", required=True, help="solo-learn checkout")
    args = p.parse_args()
    stub_gather()
    v2, v3 = load(args.solo_learn, "mocov2plus"), load(args.solo_learn, "mocov3")
    rng = np.random.default_rng(SEED)
    raw = {name: rng.normal(size=(B, D)) for name in ("q1", "q2", "k1", "k2")}
    # Queries near their keys, so the positive term matters (cosines ~0.6, not ~0).
    raw["q1"] = raw["k2"] + 0.8 * raw["q1"]
    raw["q2"] = raw["k1"] + 0.8 * raw["q2"]
    queue = rng.normal(size=(2, K, D))
    queue /= np.linalg.norm(queue, axis=-1, keepdims=True)
    out = {"source": "vturrisi/solo-learn solo/losses/mocov2plus.py, mocov3.py",
           "torch": torch.__version__, "temperature": TAU,
           "inputs": {**{k: v.tolist() for k, v in raw.items()}, "queue": queue.tolist()}}
    for dtype in (torch.float64, torch.float32):
        t = {k: torch.tensor(v, dtype=dtype) for k, v in raw.items()}
        out[str(dtype).split(".")[-1]] = losses(v2, v3, t["q1"], t["q2"], t["k1"], t["k2"],
                                                torch.tensor(queue, dtype=dtype))
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps({k: out[k] for k in ("float64", "float32")}))


if __name__ == "__main__":
    main()
