"""Plumbing shared by the tools: absl flag errors become one line on stderr and exit 2."""

import functools
import os
import sys

from absl import app, flags, logging

# oneDNN kernels for CPU convolutions, matmuls and batch norm. TensorFlow reads this once,
# when it is first imported, and turns oneDNN on by itself only on CPUs with AVX-512 / AMX;
# on AVX2 CPUs (this project's machines) its Eigen kernels make the ResNet-18 train step
# ~1.6x slower (benchmarks/resnet_step.py). Every tool imports this module before
# TensorFlow; an explicit TF_ENABLE_ONEDNN_OPTS=0 in the environment still wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

EXIT_BAD_INPUT = 2  # a flag, config or file is wrong; nothing was written


def fail(tool, message, status=EXIT_BAD_INPUT):
    """Prints ``TOOL: error: MESSAGE`` on stderr and exits with ``status``."""
    sys.stderr.write(f"{tool}: error: {message}\n")
    sys.exit(status)


def interrupted(tool, message, status):
    """Prints ``TOOL: MESSAGE`` on stderr (after ending a progress-bar line on a terminal)
    and exits with ``status`` (128 + the signal)."""
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    sys.stdout.flush()
    sys.stderr.write(f"{tool}: {message}\n")
    sys.stderr.flush()
    sys.exit(status)


def _flagfile_holding(name, argv):
    """The --flagfile among argv whose lines set --name (for naming the culprit file)."""
    for arg in argv:
        if arg.startswith("--flagfile="):
            path = arg.split("=", 1)[1]
            try:
                with open(path) as f:
                    if any(line.strip().lstrip("-").split("=")[0] in (name, "no" + name)
                           for line in f):
                        return path
            except OSError:
                pass
    return None


def parse_flags(tool, argv):
    """Parses argv into absl's FLAGS; any flag error is one line and exit status 2.

    ``--help``/``--helpfull`` exit 0; an unknown flag close to a known one says "did you
    mean"; ``~`` is expanded in --flagfile and in every path flag (:func:`expand_paths`).
    """
    argv = [argv[0], *expand_flagfile_args(argv[1:])]
    try:
        rest = flags.FLAGS(argv)
    except SystemExit as e:  # absl's --help/--helpfull print the usage, then exit 1
        if e.code == 1 and _asks_for_help(argv[1:]):
            sys.exit(0)
        raise
    except (flags.Error, ValueError) as e:  # absl raises ValueError for --noflag=value
        message = str(e).splitlines()[0].replace("ERROR:: ", "")
        if isinstance(e, flags.UnrecognizedFlagError):
            path = _flagfile_holding(e.flagname, argv[1:])
            message = (f"--{e.flagname}: unknown flag" + (f" in flagfile {path}" if path else "")
                       + did_you_mean(e.flagname)
                       + f"; see --helpfull for the flags of {tool}")
        fail(tool, message)
    expand_paths(flags.FLAGS)
    if "tf_log" in flags.FLAGS and flags.FLAGS.tf_log:
        # Library code reads no flags: --tf_log reaches the image decoders' captured lines
        # (dualssl_tf/data/sources/folders.py) through the environment.
        os.environ["DUALSSL_TF_LOG"] = "1"
    return rest


# -- help, near-miss flags, ~ in paths (issue 13, part 5) ----------------------------------
_HELP_ARGS = ("--help", "-help", "-h", "--helpfull", "-helpfull", "--helpshort", "-?",
              "--helpxml")

# Flags holding a file or directory: these names, or names ending in _dir / _path.
PATH_FLAGS = ("saved_model", "checkpoint", "flagfile")


def _asks_for_help(args):
    return any(a.split("=", 1)[0] in _HELP_ARGS for a in args)


def did_you_mean(name):
    """``" (did you mean --epochs?)"`` for a near-miss of a defined flag, else ``""``."""
    import difflib
    known = [n for n in flags.FLAGS if len(n) > 1]
    if name.startswith("no"):  # --noFLAG of a boolean flag
        close = difflib.get_close_matches(
            name[2:], [n for n in known if flags.FLAGS[n].boolean], n=1, cutoff=0.75)
        if close:
            return f" (did you mean --no{close[0]}?)"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return f" (did you mean --{close[0]}?)" if close else ""


def is_path_flag(name):
    return name.endswith(("_dir", "_path", "_file")) or name in PATH_FLAGS


def expand_user(value):
    """``~`` / ``~user`` at the start of a local path expanded (URLs kept as they are)."""
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    return value


def expand_flagfile_args(args):
    """argv entries ``--flagfile=~/x.cfg`` with ``~`` expanded (absl keeps it literal)."""
    out = []
    for a in args:
        for prefix in ("--flagfile=", "-flagfile="):
            if a.startswith(prefix):
                a = prefix + expand_user(a[len(prefix):])
        out.append(a)
    return out


def expand_paths(flag_values):
    """Expands ``~`` in every parsed string flag that names a path (:func:`is_path_flag`),
    whether given on the command line or in a flagfile."""
    for name in list(flag_values):
        if not is_path_flag(name) and name != "dataset":
            continue
        value = getattr(flag_values, name)
        expanded = expand_user(value)
        if name == "dataset" and isinstance(value, str) and value.startswith("npz:~"):
            expanded = "npz:" + expand_user(value[4:])  # linear_eval's --dataset=npz:PATH
        if expanded != value:
            flag_values[name].value = expanded


# -- flags from option sections (dualssl_tf.options.Section) -------------------------------

def define_option_flags(fields):
    """One absl flag per ``(flag name, dataclasses.Field)`` of option sections, typed by
    the field's default, with the field's help. A flag of the same name defined earlier in
    the process is replaced: the test suite loads several tools (which share names such as
    --seed) into one interpreter."""
    definers = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                float: flags.DEFINE_float, str: flags.DEFINE_string}
    for name, field in fields:
        if name in flags.FLAGS:
            delattr(flags.FLAGS, name)
        definers[type(field.default)](name, field.default, field.metadata["help"])


def parse_list(text):
    """A comma-separated flag value as a list, as absl's list flags split it (``""``: [])."""
    return [item.strip() for item in text.split(",")] if text.strip() else []


def validated_section(tool, section_class):
    """The section of a tool's parsed flags (``section_class``, whose fields the tool
    defined with :func:`define_option_flags`), validated: a bad value is one line naming
    the flag and exit status 2, as tools/train.py's."""
    from dualssl_tf.options import ConfigError
    values = {field.name: getattr(flags.FLAGS, name)
              for name, field in section_class.flag_fields()}
    section = section_class(**values)
    try:
        section.validate(section)
    except ConfigError as e:
        fail(tool, str(e))
    return section


def run(main, tool, parser=None):
    """``app.run(main)`` with one-line flag errors and TF's INFO logging off the console;
    ``parser(argv)`` replaces :func:`parse_flags` (a tool that wraps it)."""
    logging.set_verbosity(logging.WARNING)
    app.run(main, flags_parser=parser or functools.partial(parse_flags, tool))


# -- quiet TensorFlow start-up (issue 13, part 2) -------------------------------------------
# TensorFlow's C++ start-up lines ("All log messages before absl::InitializeLog()", oneDNN,
# cudart_stub, cuInit) are written to file descriptor 2 before absl logging is set up, so
# TF_CPP_MIN_LOG_LEVEL cannot silence them. The tools import TensorFlow through
# import_tensorflow(), which captures them unless the user asked for them.

# The user's TF_CPP_MIN_LOG_LEVEL, read when this module is first imported, before anything
# sets a default.
_USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
if "tf_log" not in flags.FLAGS:
    flags.DEFINE_bool("tf_log", False, "Show TensorFlow's C++ start-up logging (also shown "
                      "when TF_CPP_MIN_LOG_LEVEL is 0 or 1 in the environment).")


def env_asks_for_tf_log(level):
    """Whether a TF_CPP_MIN_LOG_LEVEL value asks for TensorFlow's INFO or WARNING lines (0 or
    1). 2 and 3 (the usual ways to silence TensorFlow), unset or anything else: it does not."""
    try:
        return int(str(level).strip()) <= 1
    except ValueError:
        return False


def _tf_log_requested():
    if env_asks_for_tf_log(_USER_TF_LOG_LEVEL):
        return True
    try:
        return bool(flags.FLAGS.tf_log)
    except (AttributeError, flags.UnparsedFlagAccessError):
        return False


def import_tensorflow(show_log=None):
    """Imports TensorFlow and initialises its devices, its C++ start-up logging captured.

    File descriptor 2 points to a temporary file while ``import tensorflow`` and
    ``tf.config.list_physical_devices()`` run, and is restored afterwards; if the import
    fails, the captured text is written to stderr before the exception propagates, so a
    broken installation still shows its full message (not when it is a signal or exit, e.g.
    Ctrl-C while TensorFlow loads, which the tool reports in one line itself). ``show_log``
    (default: ``--tf_log`` or TF_CPP_MIN_LOG_LEVEL 0 or 1 set by the user) imports without
    capturing. Returns ``tf``.
    """
    if show_log is None:
        show_log = _tf_log_requested()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if show_log or "tensorflow" in sys.modules:
        import tensorflow as tf
        tf.config.list_physical_devices()
        return tf
    from dualssl_tf.stderr_capture import fd2_captured
    captured = None
    try:
        with fd2_captured() as captured:
            import tensorflow as tf
            tf.config.list_physical_devices()
    except Exception:  # a broken installation; a signal is the tool's one line
        sys.stderr.write(captured.text.decode("utf-8", "replace") if captured else "")
        sys.stderr.flush()
        raise
    return tf
