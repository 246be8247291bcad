"""Malformed invocations of tools/train.py: exit status 2, one line naming the culprit, and
the model dir untouched.

Every case goes through the tool's own code path (absl parsing, ``config.validate``, the
error printer). Most run in this process by calling the tool's ``parse_flags`` and ``main``
(TensorFlow never gets imported: a stand-in trainer fails the test if validation lets a
case through); a handful also run as real subprocesses.
"""

import os
import subprocess
import sys
import types

import pytest
from absl import flags

from dualssl_tf import config
from tests import train_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "train.py")

# A valid tiny run: each case below adds or overrides flags to break it.
BASE = ["--dataset=hltm", "--hltm_depth=3", "--hltm_hid=4", "--batch_size=16",
        "--hltm_samples_per_epoch=64", "--hltm_eval_samples=128", "--epochs=2",
        "--steps_per_execution=1", "--verbose=0"]

# (case id, extra argv, text that must appear in the one-line message). "{tmp}" is the
# test's temporary directory; "{out}" the model dir that must stay untouched.
CASES = [
    # absl parsing: unknown / missing / mistyped flags, flagfiles.
    ("unknown_flag", ["--no_such_flag=1"], "--no_such_flag"),
    ("unknown_bool_style_flag", ["--noverbose_training"], "verbose_training"),
    ("missing_flagfile", ["--flagfile={tmp}/missing.cfg"], "missing.cfg"),
    ("unknown_flag_in_flagfile", ["--flagfile={tmp}/unknown.cfg"],
     "--bogus_flag: unknown flag in flagfile"),
    ("bad_type_in_flagfile", ["--flagfile={tmp}/badtype.cfg"], "--hltm_depth=deep"),
    ("nested_missing_flagfile", ["--flagfile={tmp}/nested.cfg"], "gone.cfg"),
    ("int_not_a_number", ["--batch_size=abc"], "--batch_size"),
    ("int_given_a_float", ["--batch_size=1.5"], "--batch_size"),
    ("float_not_a_number", ["--learning_rate=fast"], "--learning_rate"),
    ("bool_not_a_bool", ["--jit_compile=maybe"], "--jit_compile"),
    ("negated_bool_with_value", ["--nodeterministic=1"], "--nodeterministic"),
    ("empty_int", ["--epochs="], "--epochs"),
    ("flag_without_value", ["--model_dir"], "--model_dir"),
    ("positional_argument", ["extra_arg"], "extra_arg"),
    ("int_overflow", ["--epochs=99999999999999999999"], "--epochs"),
    # config.validate: ranges.
    ("depth_below_1", ["--hltm_depth=0"], "--hltm_depth"),
    ("children_below_2", ["--hltm_children=1"], "--hltm_children"),
    ("tree_too_large", ["--hltm_depth=30"], "--hltm_depth"),
    ("delta_lower_above_1", ["--hltm_delta_lower=1.5"], "--hltm_delta_lower"),
    ("delta_upper_below_0", ["--hltm_delta_upper=-0.1"], "--hltm_delta_upper"),
    ("delta_lower_above_upper", ["--hltm_delta_lower=0.9", "--hltm_delta_upper=0.8"],
     "--hltm_delta_lower"),
    ("hid_below_1", ["--hltm_hid=0"], "--hltm_hid"),
    ("batch_zero", ["--batch_size=0"], "--batch_size"),
    ("batch_negative", ["--batch_size=-4"], "--batch_size"),
    ("temperature_zero", ["--temperature=0"], "--temperature"),
    ("temperature_negative", ["--temperature=-0.5"], "--temperature"),
    ("learning_rate_zero", ["--learning_rate=0"], "--learning_rate"),
    ("learning_rate_inf", ["--learning_rate=inf"], "--learning_rate"),
    ("learning_rate_nan", ["--learning_rate=nan"], "--learning_rate"),
    ("momentum_one", ["--momentum=1.0"], "--momentum"),
    ("weight_decay_negative", ["--weight_decay=-1e-4"], "--weight_decay"),
    ("min_lr_without_cosine", ["--min_learning_rate=1e-6"], "--min_learning_rate"),
    ("min_lr_above_peak", ["--lr_schedule=cosine", "--min_learning_rate=1.0"],
     "--min_learning_rate"),
    ("epochs_negative", ["--epochs=-1"], "--epochs"),
    ("steps_per_epoch_negative", ["--steps_per_epoch=-1"], "--steps_per_epoch"),
    ("steps_per_execution_zero", ["--steps_per_execution=0"], "--steps_per_execution"),
    ("num_negatives_zero", ["--num_negatives=0"], "--num_negatives"),
    ("verbose_3", ["--verbose=3"], "--verbose"),
    ("checkpoint_every_zero", ["--checkpoint_every=0"], "--checkpoint_every"),
    ("keep_one_checkpoint", ["--keep_checkpoints=1"], "--keep_checkpoints"),
    ("seed_negative", ["--seed=-1"], "--seed"),
    ("samples_below_batch", ["--hltm_samples_per_epoch=8"], "--hltm_samples_per_epoch"),
    ("eval_samples_1", ["--hltm_eval_samples=1"], "--hltm_eval_samples"),
    # config.validate: names and combinations.
    ("unknown_loss", ["--loss=hinge"], "--loss"),
    ("unknown_negatives", ["--negatives=some"], "--negatives"),
    ("unknown_optimizer", ["--optimizer=rmsprop"], "--optimizer"),
    ("unknown_weight_decay_mode", ["--weight_decay_mode=l2"],
     "--weight_decay_mode: got 'l2'; allowed: decoupled, coupled"),
    ("coupled_weight_decay_with_adamw", ["--optimizer=adamw", "--weight_decay_mode=coupled"],
     "--weight_decay_mode: coupled is not for --optimizer=adamw"),
    ("encoder_for_hltm", ["--encoder=resnet18"], "--encoder"),
    ("tri_without_margin", ["--loss=tri"], "--margin"),
    ("tri_negative_margin", ["--loss=tri", "--margin=-0.5"], "--margin"),
    ("margin_without_tri", ["--loss=nce", "--margin=0.5"], "--margin"),
    ("beta_with_simp", ["--loss=simp", "--beta=0.5"], "--beta"),
    ("beta_minus_1", ["--loss=nce", "--beta=-1"], "--beta"),
    ("nce_batch_in_batch", ["--loss=nce_batch", "--negatives=batch"], "--negatives"),
    ("alpha_cl_option_with_nce", ["--loss=nce", "--alpha_cl_exponent=2"],
     "--alpha_cl_exponent: only --loss=alpha_cl uses it"),
    ("alpha_cl_unknown_form", ["--loss=alpha_cl", "--alpha_cl_form=poly"], "--alpha_cl_form"),
    # Other families and scale-out (checked by config.validate before TensorFlow too).
    ("unknown_strategy", ["--strategy=gpu"], "--strategy"),
    ("tpu_strategy_without_tpu", ["--strategy=tpu"], "--tpu"),
    ("float16_overflow", ["--mixed_precision=float16", "--temperature=0.1"],
     "--mixed_precision"),
    ("folder_without_data_dir", ["--dataset=folder"], "--data_dir"),
    ("holdout_without_folder", ["--dataset=generated_images", "--holdout_fraction=0.2"],
     "--holdout_fraction: only for --dataset=folder"),
    ("image_too_small_for_stem", ["--dataset=generated_images", "--image_size=32",
                                  "--stem=imagenet"], "--image_size"),
    ("unknown_encoder", ["--dataset=cifar10", "--encoder=vit_huge"],
     "--encoder: got 'vit_huge'; allowed for image data: auto, resnet18, resnet50, vit_tiny"),
    ("patch_size_not_dividing", ["--dataset=cifar10", "--encoder=vit_tiny", "--patch_size=5"],
     "--patch_size: 5 does not divide the 32 px image size; use a divisor of it"),
    ("default_patch_size_not_dividing", ["--dataset=cifar10", "--encoder=vit_small",
                                         "--image_size=30"],
     "--patch_size: 4 (the default) does not divide the 30 px image size"),
    ("patch_size_with_resnet", ["--dataset=cifar10", "--patch_size=4"],
     "--patch_size: only for --encoder=vit_tiny|vit_small|vit_base; drop it"),
    ("explicit_negatives_for_images", ["--dataset=generated_images", "--negatives=explicit"],
     "--negatives"),
    # The augmentation controls (image data sets that are cropped: cifar10, never opened).
    ("crop_area_zero", ["--dataset=cifar10", "--crop_area=0,1"],
     "--crop_area: expected MIN,MAX area fractions with 0 < MIN <= MAX <= 1"),
    ("crop_area_min_above_max", ["--dataset=cifar10", "--crop_area=0.9,0.5"],
     "--crop_area: expected MIN,MAX"),
    ("flip_prob_above_1", ["--dataset=cifar10", "--flip_prob=1.5"],
     "--flip_prob: must be in [0, 1], got 1.5"),
    ("blur_prob_negative", ["--dataset=cifar10", "--blur_prob=1,-0.1"],
     "--blur_prob: expected a probability in [0, 1], or one per view as P1,P2"),
    ("solarize_prob_above_1", ["--dataset=cifar10", "--solarize_prob=0,2"],
     "--solarize_prob: expected a probability in [0, 1]"),
    ("unknown_augment_preset", ["--dataset=cifar10", "--augment_preset=moco"],
     "--augment_preset: got 'moco'; allowed: simclr, byol, simsiam"),
    ("augment_preset_with_generated", ["--dataset=generated_images", "--augment_preset=byol"],
     "--augment_preset: --dataset=generated_images renders its own views"),
    # Multi-crop (issue 24): local crops only for a method that takes them, in range.
    ("local_crops_with_byol", ["--dataset=cifar10", "--method=byol", "--local_crops=2"],
     "--local_crops: --method=byol uses the two global views only"),
    ("local_crops_negative", ["--dataset=cifar10", "--method=dino", "--local_crops=-1"],
     "--local_crops: must be >= 0, got -1"),
    ("local_crop_area_min_above_max", ["--dataset=cifar10", "--method=dino",
                                       "--local_crops=2", "--local_crop_area=0.5,0.1"],
     "--local_crop_area: expected MIN,MAX area fractions"),
    # A ViT takes local crops of any side its patch divides (positions resampled), no other.
    ("local_crops_not_divided_by_vit_patch", ["--dataset=generated_images", "--image_size=16",
                                              "--encoder=vit_tiny", "--patch_size=4",
                                              "--method=dino", "--local_crops=2",
                                              "--local_crop_size=6"],
     "--local_crop_size: a ViT of patch 4 takes sides that 4 divides, got local crops of 6 "
     "px; set --local_crop_size to a multiple of 4 (e.g. 4 or 8)"),
    # DINO's options (issue 24).
    ("dino_student_temp_zero", ["--method=dino", "--dino_student_temp=0"],
     "--dino_student_temp: must be > 0, got 0.0"),
    ("dino_teacher_temp_negative", ["--method=dino", "--dino_warmup_teacher_temp=-0.04"],
     "--dino_warmup_teacher_temp: must be > 0"),
    ("dino_out_dim_zero", ["--method=dino", "--dino_out_dim=0"],
     "--dino_out_dim: must be >= 1, got 0"),
    ("dino_momentum_above_1", ["--method=dino", "--dino_base_momentum=1.5"],
     "--dino_base_momentum: must be in [0, 1], got 1.5"),
    ("dino_center_momentum_1", ["--method=dino", "--dino_center_momentum=1"],
     "--dino_center_momentum: must be in [0, 1), got 1.0"),
    ("dino_flag_with_byol", ["--method=byol", "--dino_out_dim=4096"],
     "--dino_out_dim: is an option of --method=dino"),
    # Methods (--method) and their options: each method's flags only with that method.
    ("unknown_method", ["--method=moco"],
     "--method: got 'moco'; allowed: contrastive, byol, simsiam"),
    ("byol_flag_with_contrastive", ["--byol_base_momentum=0.99"],
     "--byol_base_momentum: is an option of --method=byol, not of --method=contrastive"),
    ("simsiam_flag_with_byol", ["--method=byol", "--nosimsiam_stop_gradient"],
     "--simsiam_stop_gradient: is an option of --method=simsiam"),
    ("contrastive_loss_with_byol", ["--method=byol", "--loss=ntxent"],
     "--loss: is an option of --method=contrastive, not of --method=byol; got "
     "--loss=ntxent, allowed: its default nce"),
    ("contrastive_temperature_with_simsiam", ["--method=simsiam", "--temperature=0.5"],
     "--temperature: is an option of --method=contrastive"),
    ("byol_momentum_above_1", ["--method=byol", "--byol_base_momentum=1.5"],
     "--byol_base_momentum: must be in [0, 1], got 1.5"),
    ("byol_final_momentum_negative", ["--method=byol", "--byol_final_momentum=-0.1"],
     "--byol_final_momentum: must be in [0, 1]"),
    ("byol_predictor_width_0", ["--method=byol", "--byol_pred_hidden_dim=0"],
     "--byol_pred_hidden_dim: must be >= 1"),
    ("simsiam_predictor_width_negative", ["--method=simsiam", "--simsiam_pred_hidden_dim=-4"],
     "--simsiam_pred_hidden_dim: must be >= 1"),
    ("unknown_predictor", ["--method=byol", "--byol_predictor=deep"],
     "--byol_predictor: got 'deep'; allowed: mlp, none, directpred"),
    ("directpred_rate_1", ["--method=byol", "--byol_predictor=directpred",
                           "--byol_directpred_rate=1"],
     "--byol_directpred_rate: must be in [0, 1)"),
    ("directpred_every_0", ["--method=simsiam", "--simsiam_directpred_every=0"],
     "--simsiam_directpred_every: must be >= 1"),
    ("barlow_lambd_negative", ["--method=barlow", "--barlow_lambd=-0.1"],
     "--barlow_lambd: must be >= 0, got -0.1"),
    ("barlow_scale_loss_0", ["--method=barlow", "--barlow_scale_loss=0"],
     "--barlow_scale_loss: must be > 0"),
    ("vicreg_std_coeff_negative", ["--method=vicreg", "--vicreg_std_coeff=-25"],
     "--vicreg_std_coeff: must be >= 0, got -25"),
    ("barlow_projector_width_0", ["--method=barlow", "--barlow_proj_dim=0"],
     "--barlow_proj_dim: must be >= 1, got 0"),
    ("vicreg_projector_hidden_negative", ["--method=vicreg", "--vicreg_proj_hidden_dim=-8"],
     "--vicreg_proj_hidden_dim: must be >= 1"),
    ("vicreg_projector_layers_0", ["--method=vicreg", "--vicreg_proj_layers=0"],
     "--vicreg_proj_layers: must be >= 1"),
    ("vicreg_batch_1", ["--method=vicreg", "--batch_size=1"],
     "--batch_size: --method=vicreg needs >= 2 examples per batch"),
    ("barlow_flag_with_vicreg", ["--method=vicreg", "--barlow_lambd=0.01"],
     "--barlow_lambd: is an option of --method=barlow, not of --method=vicreg"),
    ("vicreg_flag_with_contrastive", ["--vicreg_cov_coeff=2"],
     "--vicreg_cov_coeff: is an option of --method=vicreg, not of --method=contrastive"),
    # The model dir.
    ("model_dir_empty", ["--model_dir="], "--model_dir"),
    ("model_dir_under_a_file", ["--model_dir={tmp}/afile/run"], "afile"),
    ("model_dir_unwritable", ["--model_dir=/proc/dualssl_tf_run"], "/proc is not writable"),
    ("resume_other_hid", ["--model_dir={tmp}/prev", "--hltm_hid=5"], "--hltm_hid=4"),
    ("resume_other_loss", ["--model_dir={tmp}/prev", "--loss=ntxent"], "--loss=nce"),
    ("resume_other_seed", ["--model_dir={tmp}/prev", "--seed=2"], "--seed=1"),
]

# Cases also run as real processes (argv parsing and exit status as a user sees them).
SUBPROCESS = ["unknown_flag", "missing_flagfile", "unknown_flag_in_flagfile",
              "int_not_a_number", "negated_bool_with_value", "tri_without_margin",
              "model_dir_unwritable", "resume_other_hid", "unknown_method",
              "contrastive_loss_with_byol", "unknown_augment_preset",
              "barlow_flag_with_vicreg", "local_crops_with_byol"]


def _fixtures(tmp):
    """Flagfiles, a regular file and a previous run directory the cases refer to."""
    (tmp / "unknown.cfg").write_text("--hltm_depth=3\n--bogus_flag=1\n")
    (tmp / "badtype.cfg").write_text("--hltm_depth=deep\n")
    (tmp / "nested.cfg").write_text(f"--flagfile={tmp}/gone.cfg\n")
    (tmp / "afile").write_text("not a directory\n")
    prev = tmp / "prev"
    prev.mkdir()
    cfg = config.TrainConfig(dataset="hltm", hltm_depth=3, hltm_hid=4, batch_size=16,
                             hltm_samples_per_epoch=64, hltm_eval_samples=128, epochs=2,
                             steps_per_execution=1, verbose=0, model_dir=str(prev))
    (prev / "flags.txt").write_text(config.to_flagfile(cfg))
    (prev / "metrics.jsonl").write_text('{"epoch": 0}\n')


def _snapshot(path):
    """Everything about a directory tree that a write would change (None if absent)."""
    if not os.path.exists(path):
        return None
    snap = {}
    for d, _, files in os.walk(path):
        for name in files:
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                snap[p] = (os.path.getmtime(p), f.read())
    return snap


def _argv(case_args, tmp):
    args = [a.replace("{tmp}", str(tmp)) for a in case_args]
    if not any(a == "--model_dir" or a.startswith("--model_dir=") for a in args):
        args = [f"--model_dir={tmp}/out"] + args
    return BASE + args


def _watched_dir(argv, tmp):
    """The model dir a case names (the last --model_dir=... wins, as in absl), else the
    default {tmp}/out, which must then not appear either."""
    dirs = [a.split("=", 1)[1] for a in argv if a.startswith("--model_dir=")]
    return dirs[-1] if dirs and dirs[-1] else str(tmp / "out")


@pytest.fixture(scope="module")
def tool():
    """tools/train.py loaded as a module, its flags defined once in this process."""
    return train_tool.load("train_tool")


def _run_in_process(tool, argv, monkeypatch, capsys):
    """The tool's parse + main, as app.run would call them; returns (status, stderr)."""
    fake_trainer = types.ModuleType("dualssl_tf.run.trainer")

    def run(cfg, monitors=()):
        raise AssertionError(f"validation let a bad invocation through: {cfg}")

    fake_trainer.run = run
    fake_callbacks = types.ModuleType("dualssl_tf.run.callbacks")
    fake_callbacks.NonFiniteLossError = type("NonFiniteLossError", (RuntimeError,), {})
    import dualssl_tf.run
    for name, module in (("trainer", fake_trainer), ("callbacks", fake_callbacks)):
        monkeypatch.setitem(sys.modules, f"dualssl_tf.run.{name}", module)
        monkeypatch.setattr(dualssl_tf.run, name, module, raising=False)
    flags.FLAGS.unparse_flags()
    status = None
    try:
        rest = tool.parse_flags(["train.py", *argv])
        tool.main(rest)
    except SystemExit as e:
        status = e.code
    finally:
        flags.FLAGS.unparse_flags()
    return status, capsys.readouterr().err


def _check(status, stderr, culprit, before, watched):
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert status == 2, (status, stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("train.py: error: ") and culprit in lines[0], lines[0]
    assert _snapshot(watched) == before


@pytest.mark.parametrize("name,args,culprit", CASES, ids=[c[0] for c in CASES])
def test_malformed_invocation_in_process(tool, tmp_path, monkeypatch, capsys, name, args,
                                         culprit):
    _fixtures(tmp_path)
    argv = _argv(args, tmp_path)
    watched = _watched_dir(argv, tmp_path)
    before = _snapshot(watched)
    status, stderr = _run_in_process(tool, argv, monkeypatch, capsys)
    _check(status, stderr, culprit, before, watched)


@pytest.mark.parametrize("name,args,culprit", [c for c in CASES if c[0] in SUBPROCESS],
                         ids=SUBPROCESS)
def test_malformed_invocation_subprocess(tmp_path, name, args, culprit):
    _fixtures(tmp_path)
    argv = _argv(args, tmp_path)
    watched = _watched_dir(argv, tmp_path)
    before = _snapshot(watched)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, TOOL, *argv], capture_output=True, text=True,
                          env=env, timeout=120)
    _check(proc.returncode, proc.stderr, culprit, before, watched)
    assert "tensorflow" not in proc.stderr.lower()


def test_at_least_25_cases_and_every_subprocess_case_exists():
    names = [c[0] for c in CASES]
    assert len(set(names)) == len(names) >= 25
    assert set(SUBPROCESS) <= set(names)


def test_resumable_flags_may_change(tmp_path):
    # Same run dir, other epochs / verbosity / checkpointing: accepted for resuming.
    _fixtures(tmp_path)
    cfg = config.TrainConfig(dataset="hltm", hltm_depth=3, hltm_hid=4, batch_size=16,
                             hltm_samples_per_epoch=64, hltm_eval_samples=128, epochs=9,
                             steps_per_execution=4, verbose=2, checkpoint_every=3,
                             model_dir=str(tmp_path / "prev"))
    assert config.validate(cfg) is cfg


def test_flagfile_from_an_older_version_compares_only_known_flags(tmp_path):
    _fixtures(tmp_path)
    prev = tmp_path / "prev"
    lines = (prev / "flags.txt").read_text().splitlines()
    (prev / "flags.txt").write_text("\n".join(l for l in lines
                                              if not l.startswith("--hltm_hid=")) + "\n")
    cfg = config.TrainConfig(dataset="hltm", hltm_depth=3, hltm_hid=7, batch_size=16,
                             hltm_samples_per_epoch=64, hltm_eval_samples=128,
                             model_dir=str(prev))
    assert config.validate(cfg) is cfg


def test_a_flag_newer_than_the_run_set_off_its_default_is_named_in_a_note(tmp_path):
    """A run whose flags.txt predates --weight_decay_mode (issue 20) ran with its default;
    resuming it with another value is allowed (nothing recorded to compare) but named."""
    _fixtures(tmp_path)
    prev = tmp_path / "prev"
    lines = (prev / "flags.txt").read_text().splitlines()
    (prev / "flags.txt").write_text("\n".join(l for l in lines
                                              if not l.startswith("--weight_decay_mode=")) + "\n")
    same = dict(dataset="hltm", hltm_depth=3, hltm_hid=4, batch_size=16,
                hltm_samples_per_epoch=64, hltm_eval_samples=128, model_dir=str(prev))
    assert config.unrecorded_changes_note(config.TrainConfig(**same)) == ""
    cfg = config.TrainConfig(**same, weight_decay_mode="coupled")
    assert config.validate(cfg) is cfg
    assert config.unrecorded_changes_note(cfg) == (
        f"note: {prev / 'flags.txt'} predates --weight_decay_mode; the run so far used "
        "--weight_decay_mode=decoupled, resumed with --weight_decay_mode=coupled")
    assert config.unrecorded_changes_note(cfg.replace(model_dir=str(tmp_path / "new"))) == ""


# -- the other tools (issue 13, part 7): one line naming the flag or file, exit 2, nothing
# written. Cases marked pre-import fail before TensorFlow loads (fast); the others need a
# TensorFlow import in the subprocess and are slow on a loaded CPU.

def _other_tool_fixtures(tmp):
    cfg = config.TrainConfig(dataset="hltm", hltm_depth=3, hltm_hid=4, batch_size=16,
                             hltm_samples_per_epoch=64, hltm_eval_samples=128, epochs=2)
    for name in ("nockpt", "corrupt", "unfinished"):
        (tmp / name).mkdir()
        (tmp / name / "flags.txt").write_text(
            config.to_flagfile(cfg.replace(model_dir=str(tmp / name))))
    (tmp / "corrupt" / "model.weights.h5").write_bytes(b"not an h5 file")
    (tmp / "unfinished" / "metrics.jsonl").write_text('{"epoch": 0, "loss": 1.0}\n{"epo')
    (tmp / "notsm").mkdir()
    # A trainer checkpoint cut short by a full disk (index and data both garbage).
    (tmp / "badckpt").mkdir()
    (tmp / "badckpt" / "flags.txt").write_text(
        config.to_flagfile(cfg.replace(model_dir=str(tmp / "badckpt"))))
    (tmp / "badckpt" / "checkpoints").mkdir()
    (tmp / "badckpt" / "checkpoints" / "ckpt-2.index").write_bytes(b"\x00" * 10)
    (tmp / "badckpt" / "checkpoints" / "ckpt-2.data-00000-of-00001").write_bytes(b"x")
    # What the pre-import checks look at (the files' contents are never read there).
    (tmp / "run" / "saved_model").mkdir(parents=True)
    (tmp / "run" / "saved_model" / "saved_model.pb").write_bytes(b"")
    (tmp / "nocard").mkdir()
    (tmp / "nocard" / "saved_model.pb").write_bytes(b"")
    (tmp / "hltm_sm").mkdir()
    (tmp / "hltm_sm" / "saved_model.pb").write_bytes(b"")
    (tmp / "hltm_sm" / "model_card.json").write_text('{"dataset": "hltm", "input_shape": [8]}')
    # Finished once, then resumed and killed: finished.json gone, the export older than the
    # newest checkpoint.
    stale = tmp / "stale"
    (stale / "saved_model").mkdir(parents=True)
    (stale / "checkpoints").mkdir()
    (stale / "flags.txt").write_text(config.to_flagfile(cfg.replace(model_dir=str(stale))))
    (stale / "metrics.jsonl").write_text('{"epoch": 0, "loss": 1.0}\n')
    (stale / "saved_model" / "saved_model.pb").write_bytes(b"")
    (stale / "checkpoints" / "ckpt-3.index").write_bytes(b"")
    os.utime(stale / "saved_model" / "saved_model.pb", (1e9, 1e9))


OTHER_TOOLS = [
    # (id, tool, argv, culprit, slow)
    ("linear_eval_not_a_savedmodel", "linear_eval.py", ["--saved_model={tmp}/notsm"],
     "--saved_model: {tmp}/notsm is not a SavedModel", False),
    ("linear_eval_missing_dir", "linear_eval.py", ["--saved_model={tmp}/absent"],
     "--saved_model: {tmp}/absent is not a directory", False),
    ("linear_eval_run_dir", "linear_eval.py", ["--saved_model={tmp}/run"],
     "--saved_model: {tmp}/run is a run directory, not a SavedModel; pass "
     "--saved_model={tmp}/run/saved_model", False),
    ("linear_eval_run_dir_without_export", "linear_eval.py",
     ["--saved_model={tmp}/unfinished"],
     "--saved_model: {tmp}/unfinished is a run directory without an export", False),
    ("linear_eval_no_model_card", "linear_eval.py", ["--saved_model={tmp}/nocard"],
     "--saved_model: {tmp}/nocard has no model_card.json", False),
    ("linear_eval_dataset_of_other_task", "linear_eval.py",
     ["--saved_model={tmp}/hltm_sm", "--dataset=translation1d"],
     "--dataset: 'translation1d' does not fit {tmp}/hltm_sm, trained on --dataset=hltm "
     "(input shape (8,))", False),
    ("linear_eval_image_dataset_for_hltm_export", "linear_eval.py",   # nothing downloaded
     ["--saved_model={tmp}/hltm_sm", "--dataset=cifar10", "--data_dir={tmp}/tfds"],
     "--dataset: 'cifar10' does not fit {tmp}/hltm_sm", False),
    ("analyze_unfinished_run", "analyze.py", ["--model_dir={tmp}/unfinished"],
     "--model_dir: {tmp}/unfinished holds an unfinished or killed run", False),
    ("analyze_killed_after_resume", "analyze.py", ["--model_dir={tmp}/stale"],
     "--model_dir: {tmp}/stale holds an unfinished or killed run (no finished.json", False),
    ("export_without_checkpoint", "export.py", ["--model_dir={tmp}/nockpt"],
     "--checkpoint: no checkpoint", True),
    ("export_corrupt_checkpoint", "export.py", ["--model_dir={tmp}/corrupt"],
     "--checkpoint: cannot load {tmp}/corrupt/model.weights.h5", True),
    ("export_corrupt_trainer_checkpoint", "export.py", ["--model_dir={tmp}/badckpt"],
     "--checkpoint: {tmp}/badckpt/checkpoints/ckpt-2 is corrupt or truncated", True),
]


@pytest.mark.parametrize(
    "name,tool_name,args,culprit",
    [pytest.param(*c[:4], marks=[pytest.mark.slow] if c[4] else []) for c in OTHER_TOOLS],
    ids=[c[0] for c in OTHER_TOOLS])
def test_other_tools_bad_input_is_one_line(tmp_path, name, tool_name, args, culprit):
    _other_tool_fixtures(tmp_path)
    before = _snapshot(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool_name),
                           *[a.format(tmp=tmp_path) for a in args]],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr   # TensorFlow's start-up lines are captured too
    assert lines[0].startswith(f"{tool_name}: error: "), lines[0]
    assert culprit.format(tmp=tmp_path) in lines[0], lines[0]
    assert _snapshot(tmp_path) == before
