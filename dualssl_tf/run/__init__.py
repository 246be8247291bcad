"""The training run: trainer (the whole path), rundir (every run-directory file and
resume), callbacks, distribute (strategies and the one Keras-internals shim).

Importing this package loads nothing; its modules import TensorFlow themselves.
"""
