"""Per-epoch measurements of the model during training, which tasks attach to their runs
(``Task.callbacks``): one concept per module, below ``tasks/`` and ``run/`` so both use them.

* :mod:`~dualssl_tf.monitors.base` -- :class:`EpochMetric`, the base of every per-epoch
  measurement (epoch logs, hence metrics.jsonl and TensorBoard; the epoch-0 line).
* :mod:`~dualssl_tf.monitors.probes` -- held-out labels: the online probe's test accuracy
  (``ProbeAccuracy``) and the online kNN (``KnnAccuracy``, the offline kNN's vote).
* :mod:`~dualssl_tf.monitors.collapse` -- label-free collapse monitors: ``EmbeddingSpread``
  (``embed_std``, ``effective_rank``) and ``effective_rank``.
* :mod:`~dualssl_tf.monitors.views` -- ``ViewSummary``: training pairs as TensorBoard images.

The analysis' monitors (``--analysis_every``) subclass :class:`EpochMetric` in
:mod:`dualssl_tf.analysis`. Import the module you need; this package imports none of them.
"""
