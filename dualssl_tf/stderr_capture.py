"""What C and C++ code writes to file descriptor 2, captured (TF-free).

TensorFlow's C++ start-up log (``I0000 ... port.cc] oneDNN custom operations are on``) and
the image decoders' lines about bad files (``E0000 ... jpeg_mem.cc:331] Premature end of
JPEG data``, libjpeg's ``Improper call to JPEG library``) are written by C++ straight to
file descriptor 2, past ``sys.stderr``; the tools report such events in their own one
line, so they capture the descriptor around the code that writes them and decide what of
it to show (tools/cli.py: the start-up log; data/sources/folders.py: the decoders' lines).
"""

import contextlib
import os
import sys
import tempfile


class Captured:
    """The bytes written to file descriptor 2 inside :func:`fd2_captured`; ``text`` is
    filled when the block ends (also when it raises)."""

    def __init__(self):
        self.text = b""


@contextlib.contextmanager
def fd2_captured():
    """File descriptor 2 goes to a temporary file while the block runs and is restored
    when it ends, however it ends (an exception, a signal); yields a :class:`Captured`
    whose ``text`` then holds what was written. Python's own buffers are flushed first, so
    nothing written before the block is caught."""
    out = Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield out
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                capture.seek(0)
                out.text = capture.read()
    finally:
        os.close(saved)
