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
    """Parses argv into absl's FLAGS; any flag error is one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, ValueError) as e:  # absl raises ValueError for --noflag=value
        message = str(e).splitlines()[0].replace("ERROR:: ", "")
        if isinstance(e, flags.UnrecognizedFlagError):
            path = _flagfile_holding(e.flagname, argv[1:])
            message = (f"--{e.flagname}: unknown flag" + (f" in flagfile {path}" if path else "")
                       + f"; see --helpfull for the flags of {tool}")
        fail(tool, message)


def run(main, tool):
    """``app.run(main)`` with one-line flag errors and TF's INFO logging off the console."""
    logging.set_verbosity(logging.WARNING)
    app.run(main, flags_parser=functools.partial(parse_flags, tool))


# -- quiet TensorFlow start-up (issue 13, part 2) -------------------------------------------
# TensorFlow's C++ start-up lines ("All log messages before absl::InitializeLog()", oneDNN,
# cudart_stub, cuInit) are written to file descriptor 2 before absl logging is set up, so
# TF_CPP_MIN_LOG_LEVEL cannot silence them. The tools import TensorFlow through
# import_tensorflow(), which captures them unless the user asked for them.

# Recorded when this module is first imported, before anything sets a default.
_USER_SET_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ
if "tf_log" not in flags.FLAGS:
    flags.DEFINE_bool("tf_log", False, "Show TensorFlow's C++ start-up logging (also shown "
                      "when TF_CPP_MIN_LOG_LEVEL is set in the environment).")


def _tf_log_requested():
    if _USER_SET_TF_LOG_LEVEL:
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
    broken installation still shows its full message. ``show_log`` (default: ``--tf_log``
    or TF_CPP_MIN_LOG_LEVEL set by the user) imports without capturing. Returns ``tf``.
    """
    if show_log is None:
        show_log = _tf_log_requested()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if show_log or "tensorflow" in sys.modules:
        import tensorflow as tf
        tf.config.list_physical_devices()
        return tf
    import tempfile
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                import tensorflow as tf
                tf.config.list_physical_devices()
            except BaseException:
                sys.stderr.flush()
                os.dup2(saved, 2)
                capture.seek(0)
                sys.stderr.write(capture.read().decode("utf-8", "replace"))
                sys.stderr.flush()
                raise
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)
    return tf
