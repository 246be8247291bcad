"""The optimiser choices and the batch-size scaling of the learning rate (TF-free, so
``config.py`` validates with the same names and numbers the optimizer factory uses)."""

import math

OPTIMIZERS = ("sgd", "adam", "adamw", "lars")
WEIGHT_DECAY_MODES = ("decoupled", "coupled")
LR_SCALINGS = ("none", "linear", "sqrt")
LR_SCHEDULES = ("constant", "cosine")


def scale_learning_rate(learning_rate, batch_size, scaling="none"):
    """Batch-size scaling of a base rate: ``none``, ``linear`` (lr B / 256) or ``sqrt``
    (lr sqrt(B), SimCLR's rule for small batches)."""
    if scaling == "none":
        return float(learning_rate)
    if scaling == "linear":
        return learning_rate * batch_size / 256.0
    if scaling == "sqrt":
        return learning_rate * math.sqrt(batch_size)
    raise ValueError(f"lr_scaling={scaling!r}: allowed {', '.join(LR_SCALINGS)}")
