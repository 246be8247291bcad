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
