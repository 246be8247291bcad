"""A training run with the monitors its config asks for: ``dt.train`` and tools/train.py.

:func:`dualssl_tf.run.trainer.run` trains; the analysis' per-epoch monitor
(``--analysis_every``, :func:`dualssl_tf.analysis.callback.build_analysis_callback`) is
handed to it from here, the one module above both ``run/`` and ``analysis/``, so no training
module imports the analysis (ARCHITECTURE.md, "Layers"). Both are imported on first use:
``import dualssl_tf`` stays TensorFlow-free.
"""


def train(cfg):
    """Trains per ``cfg`` with :func:`monitors` (``dt.train``); the result and errors of
    :func:`dualssl_tf.run.trainer.run`."""
    from dualssl_tf.run import trainer
    return trainer.run(cfg, monitors=monitors(cfg))


def monitors(cfg):
    """The monitor factories ``cfg`` asks for, ``(cfg, task) -> callback``: the analysis
    monitor with ``--analysis_every`` > 0 (the analysis imported then only), else none."""
    if not cfg.analysis.every:
        return []
    from dualssl_tf.analysis.callback import build_analysis_callback
    return [build_analysis_callback]
