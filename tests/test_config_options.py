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


# The core sections' flags, pinned exactly: a flag added to, renamed in or removed from
# one of them is a deliberate edit here. The other sections are those of the registered
# methods (methods.METHODS) and tasks (tasks.TASKS): a new method or task brings its own
# section and needs no edit here.
CORE_FLAGS = {
    "data": "dataset data_dir download encoder",
    "method": "method probe probe_learning_rate",
    "optim": "batch_size epochs steps_per_epoch optimizer learning_rate momentum "
             "weight_decay weight_decay_end weight_decay_mode lr_schedule "
             "min_learning_rate warmup_epochs lr_scaling lars_eta",
    "run": "seed steps_per_execution jit_compile strategy tpu num_gpus sync_bn "
           "mixed_precision model_dir verbose checkpoint_every keep_checkpoints deterministic",
    "analysis": "analysis_every analysis_points analysis_layers analysis_budget",
}
# Flags the registered sections have today (recorded in flags.txt of runs since): they may
# gain flags, but none of these may be renamed or removed.
KEPT_SECTION_FLAGS = {"proj_bn", "hltm_seeds", "augment_on", "holdout_fraction",
                      "holdout_seed",
                      # the augmentation controls: issue 21
                      "augment_preset", "crop_area", "flip_prob", "blur_prob",
                      "solarize_prob"}
for _prefix in ("byol_", "simsiam_"):
    KEPT_SECTION_FLAGS |= {_prefix + n for n in ("predictor", "pred_hidden_dim", "pred_bn",
                                                 "directpred_rate", "directpred_every",
                                                 "directpred_eps",
                                                 # the predictor's learning rate: issue 21
                                                 "pred_lr_mult", "pred_fixed_lr")}
KEPT_SECTION_FLAGS |= {"byol_base_momentum", "byol_final_momentum", "byol_ema",
                       "simsiam_stop_gradient"}


def registered_sections():
    """{TrainConfig attribute: Section class} of the registered methods and tasks."""
    from dualssl_tf import methods, tasks
    out = {spec.section: spec.options for spec in methods.METHODS.values()}
    out.update(tasks.option_sections())
    return out


def test_flag_names_and_resumable_set_are_kept():
    registered = registered_sections()
    assert not set(CORE_FLAGS) & set(registered)
    assert set(config.SECTIONS) == set(CORE_FLAGS) | set(registered)
    for attr, flags in CORE_FLAGS.items():
        assert [flag for flag, _ in config.SECTIONS[attr].flag_fields()] == flags.split(), attr
    for attr, cls in registered.items():
        assert config.SECTIONS[attr] is cls, attr
    names = [name for name, _, _ in config.flag_fields()]
    assert len(names) == len(set(names))
    # Every flag comes from a core section or a registered one, nothing else.
    assert set(names) == ({f for flags in CORE_FLAGS.values() for f in flags.split()}
                          | {flag for cls in registered.values()
                             for flag, _ in cls.flag_fields()})
    assert set(OLD_FLAGS) | KEPT_SECTION_FLAGS <= set(names)
    # The resumable set of the flags above is kept (a new section's flags may be either).
    known = set(OLD_FLAGS) | KEPT_SECTION_FLAGS | set(CORE_FLAGS["data"].split())
    assert config.RESUMABLE_FLAGS & known == OLD_RESUMABLE | {"download"}


def test_a_new_method_needs_no_edit_here():
    """A method registered with its own section (as ARCHITECTURE.md says) passes the flag
    test unchanged (a TF-free subprocess: the sections are read when dualssl_tf.config is
    imported)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import dataclasses\n"
        "from dualssl_tf import methods, options\n"
        "@dataclasses.dataclass\n"
        "class ToyOptions(options.Section):\n"
        "    prefix = 'toy_'\n"
        "    weight: float = options.option(1.0, 'Weight of the toy loss term.')\n"
        "methods.METHODS['toy'] = methods.MethodSpec('toy', 'toy', ToyOptions, 'toy:Toy')\n"
        "from dualssl_tf import config\n"
        "import tests.test_config_options as t\n"
        "assert 'toy_weight' in [n for n, _, _ in config.flag_fields()]\n"
        "t.test_flag_names_and_resumable_set_are_kept()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_renamed_core_flag_fails_the_flag_test(monkeypatch):
    import pytest
    run = config.SECTIONS["run"]
    fields = run.flag_fields()
    monkeypatch.setattr(run, "flag_fields", classmethod(lambda cls: [
        ("random_seed" if name == "seed" else name, f) for name, f in fields]))
    with pytest.raises(AssertionError, match="run"):
        test_flag_names_and_resumable_set_are_kept()


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
