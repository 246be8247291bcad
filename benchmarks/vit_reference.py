"""Reference values of timm's Vision Transformer for tests/models/test_vit.py, computed with
timm and PyTorch (the bench venv: /work/venv-bench/bin/python benchmarks/vit_reference.py).

Writes tests/models/data/vit_reference.json:
* ``params``: trainable parameter counts of timm's ViT-T/S/B with ``num_classes=0`` at
  patch 4 / 32 px and patch 16 / 224 px (``{"vit_tiny_p4_s32": n, ...}``);
* ``resample``: timm's ``resample_abs_pos_embed`` (bicubic, antialiased, [CLS] kept) of a
  fixed position embedding [1, 1 + g^2, D] from grid g to other grids, with its input.
"""

import json
import os
import sys

import numpy as np
import timm
import torch
from timm.layers import resample_abs_pos_embed

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "models", "data",
                   "vit_reference.json")
MODELS = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
          "vit_base": "vit_base_patch16_224"}


def main():
    params = {}
    for name, timm_name in MODELS.items():
        for patch, size in ((4, 32), (16, 224)):
            model = timm.create_model(timm_name, pretrained=False, num_classes=0,
                                      patch_size=patch, img_size=size)
            params[f"{name}_p{patch}_s{size}"] = sum(p.numel() for p in model.parameters()
                                                      if p.requires_grad)
    rng = np.random.default_rng(0)
    grid, dim = 4, 3
    pos = rng.standard_normal([1, 1 + grid * grid, dim]).astype(np.float64)
    resample = {"grid": grid, "pos_embed": pos.tolist(), "to": {}}
    for new in (2, 3, 4, 6, 7):
        out = resample_abs_pos_embed(torch.tensor(pos), new_size=[new, new],
                                     old_size=[grid, grid], num_prefix_tokens=1)
        resample["to"][str(new)] = out.numpy().tolist()
    meta = {"timm": timm.__version__, "torch": torch.__version__.split("+")[0]}
    with open(OUT, "w") as f:
        json.dump({"versions": meta, "params": params, "resample": resample}, f, indent=1)
        f.write("\n")
    print(json.dumps(params), file=sys.stderr)


if __name__ == "__main__":
    main()
