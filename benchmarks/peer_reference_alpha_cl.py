"""Reference values of alpha-CL from the authors' own code (facebookresearch/luckmatters).

Runs ``NTXentLoss`` of ``ssl/real-dataset/loss/nt_xent.py`` (imported as it is from a
checkout or a bare mirror of the repository; it needs only torch and numpy) with
``loss_type=dual2`` on fixed embeddings, L2-normalised first as its ``simclr_trainer.py``
does, and writes the loss and its gradient with respect to the raw embeddings to
``tests/methods/data/alpha_cl_reference.json``; ``tests/methods/test_alpha_cl.py`` compares
:func:`dualssl_tf.losses.alpha_cl_loss` with them. Tests never import torch.

    /work/venv-bench/bin/python benchmarks/peer_reference_alpha_cl.py \\
        --luckmatters=/path/to/luckmatters   # a checkout, or a bare git directory

The official forward puts ``zjs`` first (``cat([zjs, zis])``); ours puts ``z1`` first, so
``z1 = zjs``, ``z2 = zis`` gives the same anchor and negative order.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SOURCE = "ssl/real-dataset/loss/nt_xent.py"
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "methods", "data",
                   "alpha_cl_reference.json")
# (name, temperature, alpha_type, alpha_exponent, alpha_eps, inverse_exponent): the
# official defaults (exp, 1, 0.1, 1), its README's alpha-CL recipe (exponent 2, eps 0) and
# the inverse form.
CASES = [
    ("default", 0.5, "exp", 1.0, 0.1, 1.0),
    ("readme_pow", 0.5, "exp", 2.0, 0.0, 1.0),
    ("exp_t01", 0.1, "exp", 1.0, 0.1, 1.0),
    ("inverse", 0.5, "inverse", 1.0, 0.1, 1.0),
    ("inverse_pow", 0.2, "inverse", 2.0, 0.05, 2.0),
]
BATCH, DIM, SEED = 4, 8, 0


def load_official(path):
    """The module ``nt_xent`` from a checkout (``path/SOURCE``) or a bare git directory;
    returns ``(module, commit)``."""
    git = ["git", "-C", path]
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    file = os.path.join(path, SOURCE)
    if not os.path.exists(file):
        text = subprocess.run(git + ["show", f"HEAD:{SOURCE}"], capture_output=True,
                              text=True, check=True).stdout
        file = os.path.join(tempfile.mkdtemp(), "nt_xent.py")
        with open(file, "w") as f:
            f.write(text)
    spec = importlib.util.spec_from_file_location("nt_xent", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, commit


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--luckmatters", required=True)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F

    nt_xent, commit = load_official(args.luckmatters)
    rng = np.random.default_rng(SEED)
    z1 = rng.normal(size=(BATCH, DIM))
    z2 = z1 + 0.7 * rng.normal(size=(BATCH, DIM))  # positives nearer than most negatives
    cases = []
    for name, tau, alpha_type, exponent, eps, inv in CASES:
        params = {"temperature": tau, "use_cosine_similarity": True, "beta": 0.0,
                  "add_one_in_neg": False, "loss_type": "dual2",
                  "exact_cov_unaug_sim": False, "alpha_type": alpha_type,
                  "alpha_exponent": exponent, "alpha_eps": eps, "inverse_exponent": inv,
                  "low_rank": None}
        crit = nt_xent.NTXentLoss("cpu", BATCH, params)
        zj = torch.tensor(z1, dtype=torch.float64, requires_grad=True)
        zi = torch.tensor(z2, dtype=torch.float64, requires_grad=True)
        loss, _, _ = crit(F.normalize(zi, dim=1), F.normalize(zj, dim=1), None)
        loss.backward()
        cases.append({"name": name, "temperature": tau, "form": alpha_type,
                      "exponent": exponent, "eps": eps, "inverse_exponent": inv,
                      "loss": loss.item(), "grad_z1": zj.grad.numpy().tolist(),
                      "grad_z2": zi.grad.numpy().tolist()})
        print(f"{name:12s} loss {float(loss): .10f}")
    record = {"source": f"facebookresearch/luckmatters {SOURCE} @ {commit}",
              "loss_type": "dual2", "dtype": "float64", "torch": torch.__version__,
              "z1": z1.tolist(), "z2": z2.tolist(), "cases": cases}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print("wrote", os.path.normpath(args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
