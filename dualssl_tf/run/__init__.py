"""The training run: trainer (the whole path), rundir (every run-directory file and
resume), callbacks, distribute (strategies, the run's setup, per-replica input).

Importing this package loads nothing; its modules import TensorFlow themselves.
"""
