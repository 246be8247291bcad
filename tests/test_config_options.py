"""The option sections: every flag has help, flag names and the resumable set are as they
were before the sections existed, and a config round-trips through its flagfile."""

from dualssl_tf import config

# The flags of the flat configuration this package had before (flags.txt files of old runs
# and every configs/*.cfg use these names); new flags may only be added.
OLD_FLAGS = """dataset data_dir encoder loss negatives temperature margin beta num_negatives
batch_size epochs steps_per_epoch optimizer learning_rate momentum weight_decay seed
steps_per_execution jit_compile strategy tpu num_gpus local_negatives mixed_precision
model_dir verbose checkpoint_every keep_checkpoints deterministic hltm_depth hltm_children
hltm_hid hltm_delta_lower hltm_delta_upper hltm_samples_per_epoch hltm_eval_samples
image_size stem width_multiplier sync_bn proj_dim proj_hidden_dim proj_layers probe
color_jitter_strength blur shuffle_buffer skip_corrupt_images generated_examples
generated_classes generated_view_jitter lr_schedule warmup_epochs lr_scaling lars_eta
translation1d_length translation1d_filters translation1d_kernel translation1d_pooling
translation1d_bias analysis_every analysis_points""".split()
OLD_RESUMABLE = {"epochs", "verbose", "model_dir", "data_dir", "checkpoint_every",
                 "keep_checkpoints", "steps_per_execution", "jit_compile", "deterministic",
                 "strategy", "tpu", "num_gpus", "analysis_every", "analysis_points",
                 "skip_corrupt_images"}


def test_flag_names_and_resumable_set_are_kept():
    names = [name for name, _, _ in config.flag_fields()]
    assert len(names) == len(set(names))
    assert set(OLD_FLAGS) <= set(names)
    # Added since: --method, --probe_learning_rate; --download (issue 13, resumable);
    # --proj_bn and the BYOL / SimSiam sections (issue 14); --hltm_seeds (issue 12).
    new = {"method", "probe_learning_rate", "download", "proj_bn", "hltm_seeds",
           "augment_on",  # --augment_on: issue 15
           "holdout_fraction", "holdout_seed",  # a folder's held-out split: issue 13
           "weight_decay_mode",  # coupled (PyTorch) weight decay: issue 20
           # the augmentation controls: issue 21
           "augment_preset", "crop_area", "flip_prob", "blur_prob", "solarize_prob"}
    for prefix in ("byol_", "simsiam_"):   # the non-contrastive methods' sections
        new |= {prefix + n for n in ("predictor", "pred_hidden_dim", "pred_bn",
                                     "directpred_rate", "directpred_every", "directpred_eps")}
    new |= {"byol_base_momentum", "byol_final_momentum", "byol_ema", "simsiam_stop_gradient"}
    for prefix in ("byol_", "simsiam_"):   # the predictor's learning rate: issue 21
        new |= {prefix + "pred_lr_mult", prefix + "pred_fixed_lr"}
    assert set(names) - set(OLD_FLAGS) == new
    assert config.RESUMABLE_FLAGS == OLD_RESUMABLE | {"download"}


def test_every_flag_has_help():
    for name, _, field in config.flag_fields():
        assert len(field.metadata["help"]) > 10, name


def test_sections_and_flag_round_trip(tmp_path):
    cfg = config.TrainConfig(dataset="translation1d", hltm_depth=3, translation1d_kernel=5,
                             analysis_every=2, model_dir=str(tmp_path))
    assert (cfg.hltm.depth, cfg.translation1d.kernel, cfg.analysis.every) == (3, 5, 2)
    assert cfg.task.name == "translation1d" and cfg.method_options is cfg.contrastive
    text = config.to_flagfile(cfg)
    assert config.from_flag_strings(config.parse_flagfile(text)) == cfg
    assert cfg.replace(hltm_depth=4).hltm.depth == 4 and cfg.hltm.depth == 3


def test_unknown_flag_names_are_refused():
    import pytest
    with pytest.raises(TypeError, match="unknown flags depth"):
        config.TrainConfig(depth=3)
    with pytest.raises(config.ConfigError, match="--model_dir: x.txt: --depth is not a flag"):
        config.from_flag_strings({"depth": "3"}, unknown="error", source="x.txt")
    assert config.from_flag_strings({"depth": "3"}) == config.TrainConfig()
