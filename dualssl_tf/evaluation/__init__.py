"""Evaluating an exported encoder (docs/theory.md section 6): one concept per module.

* :mod:`~dualssl_tf.evaluation.export` -- SavedModel export of encoder (+ head) and loading it
  back (``export_encoder``, ``load_encoder``, ``ExportedEncoder``, ``run_model_card``,
  ``default_intermediates``).
* :mod:`~dualssl_tf.evaluation.data` -- labelled (x, label) train/test data for probing an
  export, by dataset name (``probe_datasets``: ``npz:PATH``, ``hltm``, the tasks).
* :mod:`~dualssl_tf.evaluation.features` -- frozen-encoder features [N, F] and their .npz
  cache (``extract_features``, ``cached_features``, ``feature_cache_path``,
  ``check_dataset``, ``pool_features``, ``split_element``).
* :mod:`~dualssl_tf.evaluation.metrics` -- ``topk_accuracy``, ``check_labels``.
* :mod:`~dualssl_tf.evaluation.linear` -- the linear probe, softmax regression solved to its
  optimum by full-batch L-BFGS (``linear_probe``, ``train_linear``, ``solve_linear``,
  ``linear_objective``, ``standardize``).
* :mod:`~dualssl_tf.evaluation.knn` -- temperature-weighted kNN (``knn_scores``,
  ``knn_scores_at`` for several k in one pass, ``knn_probe``).
* :mod:`~dualssl_tf.evaluation.finetune` -- encoder + linear head fine-tuned end to end
  (``SavedModelLayer``, ``FineTuneClassifier``, ``finetune``).

Import the module you need (``from dualssl_tf.evaluation import linear``); this package
imports none of them itself.
"""
