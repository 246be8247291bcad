"""A BYOL run resumed from its checkpoint equals the uninterrupted run bit for bit: the
target network (moved only by the moving average), the predictor, DirectPred's F and the
optimizer state are all in the checkpoint (tiny HLTM, CPU, deterministic ops)."""


import numpy as np
import pytest

from tests.tiny_runs import TINY_HLTM, check_resume

BYOL = dict(method="byol", byol_pred_hidden_dim=8, byol_base_momentum=0.9)


def test_byol_resume_is_bit_identical(tmp_path):
    tensors = check_resume(tmp_path, **BYOL)
    model = [tensors[k] for k in sorted((k for k in tensors if k.startswith("model/")),
                                        key=lambda k: int(k.split("/")[1]))]
    # TreeNet depth 3 (6), mlp predictor (7), the target TreeNet (6).
    assert len(model) == 19
    online, target = model[:6], model[13:]
    assert all(o.shape == t.shape for o, t in zip(online, target))
    assert max(float(np.max(np.abs(o - t))) for o, t in zip(online, target)) > 1e-4


def test_predictor_rate_resume_is_bit_identical(tmp_path):
    """SimSiam with its predictor at 10x a fixed rate while a warmup + cosine schedules the
    rest: the group is configuration (no state), so the run resumes bit for bit, and the
    optimizer is the grouped SGD with the predictor's 6 trainable variables in the group."""
    from dualssl_tf import tasks
    from dualssl_tf.optim import rate_groups
    from dualssl_tf.run import trainer
    kw = dict(method="simsiam", simsiam_pred_hidden_dim=8, simsiam_pred_lr_mult=10.0,
              simsiam_pred_fixed_lr=True, lr_schedule="cosine", warmup_epochs=1)
    check_resume(tmp_path, **kw)
    cfg = TINY_HLTM.replace(model_dir=str(tmp_path / "x"), epochs=2, **kw)
    task = tasks.build(cfg)
    model = trainer.build_model(cfg, task)
    opt = model.optimizer
    assert isinstance(opt, rate_groups._RateGroup)
    assert (opt.group_multiplier, opt.group_fixed_rate) == (10.0, 0.1)
    model.build_optimizers()
    in_group = [v for v, g in zip(model.method_variables, opt._in_group) if g]
    assert [id(v) for v in in_group] == [id(v) for v in model.predictor.trainable_variables]
    assert len(in_group) >= 4   # two Dense kernels, biases and/or BatchNorm's gamma, beta


@pytest.mark.slow
def test_directpred_resume_is_bit_identical(tmp_path):
    kw = {k: v for k, v in BYOL.items() if k != "byol_pred_hidden_dim"}
    tensors = check_resume(tmp_path, byol_predictor="directpred", byol_directpred_every=2,
                            **kw)
    assert len([k for k in tensors if k.startswith("model/")]) == 6 + 3 + 6
