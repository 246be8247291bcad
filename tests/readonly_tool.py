"""Runs a tool with one directory read-only at the file layer (not collected by pytest).

    python tests/readonly_tool.py READONLY_DIR tools/linear_eval.py --flag=value ...

Every tf.io.gfile write, directory creation, rename or delete under READONLY_DIR raises
PermissionDeniedError, as TensorFlow does on a read-only mount: the tests run as any user
(chmod does not stop root), on any file system.
"""

import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    readonly, tool, args = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3:]
    import tensorflow as tf
    from tensorflow.python.lib.io import file_io  # the functions tf.io.gfile wraps

    def guarded(name, real, writes=lambda *a, **k: True):
        def wrapper(path, *args, **kwargs):
            if os.path.abspath(os.fspath(path)).startswith(readonly) and writes(*args, **kwargs):
                raise tf.errors.PermissionDeniedError(None, None,
                                                      f"{path}; Permission denied")
            return real(path, *args, **kwargs)
        return wrapper

    gfile = tf.io.gfile
    exists = gfile.exists
    for name in ("makedirs", "mkdir"):  # an existing directory is fine, as on a real mount
        real = getattr(gfile, name)
        setattr(gfile, name, lambda path, real=real, name=name: real(path) if exists(path)
                else guarded(name, real)(path))
    for name in ("remove", "rmtree", "rename", "copy"):
        setattr(gfile, name, guarded(name, getattr(gfile, name)))
    real_gfile = gfile.GFile

    class GFile(real_gfile):
        def __init__(self, name, mode="r"):
            if "r" not in mode and os.path.abspath(os.fspath(name)).startswith(readonly):
                raise tf.errors.PermissionDeniedError(None, None, f"{name}; Permission denied")
            super().__init__(name, mode)
    gfile.GFile = GFile
    del file_io
    sys.argv = [tool, *args]
    runpy.run_path(tool, run_name="__main__")


if __name__ == "__main__":
    main()
