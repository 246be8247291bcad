"""Train a dual network: python tools/train.py --flagfile=configs/hltm.cfg [--flag=value ...]

Every field of the option sections of dualssl_tf.config.TrainConfig is a flag (its help
text lives with the field: dualssl_tf.options.option). Bad flags or values
end with one line on stderr naming the flag, and exit status 2, before anything is written.

Re-running the same command resumes the run in --model_dir from its newest readable
checkpoint, or says it is finished (exit 0). A NaN/Inf loss stops the run with one line
naming the step and exit status 3; the last good checkpoint and export are kept. A full
disk, a quota or a permission error in --model_dir stops it with one line naming the path
and the last good checkpoint, and exit status 74 (EX_IOERR). A second process on a
--model_dir in use is refused (exit 2, dualssl_tf/run/lock.py). Ctrl-C
(SIGINT) or SIGTERM stops it at the next safe point with one line naming the epoch, the
step and the last checkpoint, and exit status 130 / 143 (dualssl_tf/run/interrupt.py).
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import cli  # noqa: E402

TOOL = "train.py"
from dualssl_tf import config  # noqa: E402  (TensorFlow-free: errors come fast)
from dualssl_tf.run import interrupt  # noqa: E402  (TensorFlow-free: caught before the import)

def define_flags():
    """One absl flag per option field, typed by its default, with the field's help.

    A flag of the same name defined earlier in the process is replaced: the test suite loads
    several tools (which share names such as --model_dir) into one interpreter.
    """
    cli.define_option_flags((name, field) for name, _, field in config.flag_fields())


EXIT_BAD_INPUT = cli.EXIT_BAD_INPUT  # a flag, config or file is wrong; nothing written
EXIT_NON_FINITE = 3    # the loss became NaN/Inf; the last good checkpoint is kept
EXIT_WRITE_FAILED = 74  # EX_IOERR: no space / quota / permission in --model_dir; the last
                        # good checkpoint is kept


def fail(message, status=EXIT_BAD_INPUT):
    cli.fail(TOOL, message, status)


def command_line_flags(argv):
    """Names of the flags written on the command line itself (not read from a --flagfile)."""
    names = set()
    for arg in argv[1:]:
        if not arg.startswith("-") or arg.lstrip("-").startswith("flagfile"):
            continue
        name = arg.lstrip("-").split("=", 1)[0]
        if name.startswith("no") and name not in flags.FLAGS and name[2:] in flags.FLAGS:
            name = name[2:]
        names.add(name)
    return names


# Flags written on the command line of the last parse_flags (not read from a --flagfile).
_COMMAND_LINE = set()


def parse_flags(argv):
    """Parses argv; any flag error is one line on stderr and exit status 2."""
    _COMMAND_LINE.clear()
    _COMMAND_LINE.update(command_line_flags(argv))
    return cli.parse_flags(TOOL, argv)


def config_from_flags():
    return config.TrainConfig(**{name: getattr(flags.FLAGS, name)
                                 for name, _, _ in config.flag_fields()})


def drop_other_methods_options(cfg, explicit):
    """Resets the options of other methods that came from a --flagfile, so one config
    serves every method (``--flagfile=configs/generated_images.cfg --method=byol``); the
    returned note names them. Ones on the command line stay, and validation refuses them."""
    from dualssl_tf import methods
    dropped = {flag: value for flag, value, _ in methods.other_methods_options(cfg)
               if flag not in explicit}
    if not dropped:
        return cfg, ""
    defaults = {name: field.default for name, _, field in config.flag_fields()}
    note = (f"note: --method={cfg.method.method} does not use the flagfile's "
            + ", ".join(f"--{f}={v}" for f, v in dropped.items()) + "; left at their defaults")
    return cfg.replace(**{f: defaults[f] for f in dropped}), note


def _train(cfg):
    try:
        config.validate(cfg)
        cli.import_tensorflow()  # its C++ start-up lines captured (--tf_log shows them)
        from dualssl_tf import training  # TensorFlow only for valid settings
        from dualssl_tf.run import callbacks, rundir
        try:
            return training.train(cfg)
        except callbacks.NonFiniteLossError as e:
            fail(str(e), EXIT_NON_FINITE)
        except rundir.RunWriteError as e:
            fail(str(e), EXIT_WRITE_FAILED)
    except config.ConfigError as e:
        fail(str(e))


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    cfg, note = drop_other_methods_options(config_from_flags(), _COMMAND_LINE)
    if note:
        print(note, flush=True)
    note = config.unrecorded_changes_note(cfg)   # a resumed run's new flags, off default
    if note:
        print(note, flush=True)
    with interrupt.SignalCatcher():  # Ctrl-C / SIGTERM: one line, exit 130 / 143
        try:
            result = _train(cfg)
        except interrupt.Interrupted as e:
            cli.interrupted(TOOL, interrupt.message(e, cfg.run.model_dir), e.exit_status)
    if result["finished"]:
        print(result["summary"])
        return
    if result["summary"]:
        print("\n" + result["summary"])
    print(f"\nRun written to {cfg.run.model_dir}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, TOOL, parser=parse_flags)
