"""The training run: trainer (the whole path), rundir (the run directory's files and
resume), checkpoints, callbacks, distribute (strategies, the run's setup, per-replica input).

Importing this package loads nothing; its modules import TensorFlow themselves.
"""
