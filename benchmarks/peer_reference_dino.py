"""Reference values of DINO from a peer's own code, for tests/methods/test_dino.py.

Run once with the PyTorch benchmark environment (torch + lightly), never by the tests:

    /work/venv-bench/bin/python benchmarks/peer_reference_dino.py

It feeds fixed inputs (a NumPy generator, seed 0) to lightly's ``DINOLoss`` (which
"follows the code published by the authors", facebookresearch/dino main_dino.py
DINOLoss: the teacher's centred, sharpened softmax of each global crop against the
student's log-softmax of every other crop, averaged over the pairs; the centre's moving
average after each call) and to lightly's ``DINOProjectionHead`` (the DINO head: a
3-layer GELU MLP, L2 normalisation, a weight-normalised last layer), and writes the
inputs and outputs to tests/methods/data/dino_reference.json. The test recomputes them
with dualssl_tf's ``dino_loss`` / ``dino_head`` from the same inputs.

Loss case: B=5 images, 2 global + 3 local crops, K=12 outputs, 3 calls (steps) of the
loss at epochs 0, 1, 3 of a 3-epoch teacher-temperature warm-up 0.04 -> 0.07, centre
momentum 0.9; records each call's loss, teacher temperature and the centre after it.
Head case: input 6 -> hidden 10 -> bottleneck 4 -> K 7, random weights, for
norm_last_layer True (scale fixed at 1) and False (a random scale g).
"""

import json
import os

import lightly
import numpy as np
import torch
from lightly.loss import DINOLoss
from lightly.models.modules.heads import DINOProjectionHead

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                   "methods", "data", "dino_reference.json")


def loss_case(rng):
    b, global_crops, local_crops, k = 5, 2, 3, 12
    loss_fn = DINOLoss(output_dim=k, warmup_teacher_temp=0.04, teacher_temp=0.07,
                       warmup_teacher_temp_epochs=3, student_temp=0.1, center_momentum=0.9)
    steps = []
    for epoch in (0, 1, 3):
        student = rng.normal(size=(global_crops + local_crops, b, k))
        teacher = rng.normal(size=(global_crops, b, k)) * 0.5
        with torch.no_grad():
            loss = loss_fn([torch.tensor(t, dtype=torch.float64) for t in teacher],
                           [torch.tensor(s, dtype=torch.float64) for s in student],
                           epoch=epoch)
        temp = (float(loss_fn.teacher_temp_schedule[epoch])
                if epoch < loss_fn.warmup_teacher_temp_epochs else loss_fn.teacher_temp)
        steps.append({"epoch": epoch, "student": student.tolist(), "teacher": teacher.tolist(),
                      "loss": float(loss), "teacher_temp": temp,
                      "center_after": loss_fn.center.reshape(-1).tolist()})
    return {"batch": b, "crops": global_crops + local_crops, "out_dim": k,
            "student_temp": 0.1, "center_momentum": 0.9, "warmup_teacher_temp": 0.04,
            "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 3, "steps": steps}


def head_case(rng, norm_last_layer):
    torch.manual_seed(0)
    head = DINOProjectionHead(input_dim=6, hidden_dim=10, bottleneck_dim=4, output_dim=7,
                              batch_norm=False, norm_last_layer=norm_last_layer).double()
    weights = {}
    with torch.no_grad():
        linears = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
        for i, lin in enumerate(linears):
            lin.weight.copy_(torch.tensor(rng.normal(size=tuple(lin.weight.shape))))
            lin.bias.copy_(torch.tensor(rng.normal(size=tuple(lin.bias.shape)) * 0.1))
            # PyTorch's Linear weight is [out, in]; the JSON keeps it so.
            weights[f"linear{i}_weight"] = lin.weight.tolist()
            weights[f"linear{i}_bias"] = lin.bias.tolist()
        head.last_layer.weight_v.copy_(torch.tensor(rng.normal(size=(7, 4))))
        if not norm_last_layer:
            head.last_layer.weight_g.copy_(torch.tensor(rng.uniform(0.5, 2.0, size=(7, 1))))
        weights["last_v"] = head.last_layer.weight_v.tolist()
        weights["last_g"] = head.last_layer.weight_g.reshape(-1).tolist()
        x = rng.normal(size=(3, 6))
        y = head(torch.tensor(x))
    return {"norm_last_layer": norm_last_layer, "weights": weights, "x": x.tolist(),
            "y": y.tolist()}


def main():
    rng = np.random.default_rng(0)
    data = {"source": f"lightly {lightly.__version__} DINOLoss and DINOProjectionHead, "
                      f"torch {torch.__version__}, float64",
            "loss": loss_case(rng),
            "heads": [head_case(rng, True), head_case(rng, False)]}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(data, f, indent=1)
    print("wrote", OUT, [s["loss"] for s in data["loss"]["steps"]])


if __name__ == "__main__":
    main()
