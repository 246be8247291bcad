"""What is trained on: one task per data family, selected by ``--dataset``.

A task package ``dualssl_tf.tasks.<name>`` owns everything of its family:

* ``__init__.py`` (TensorFlow-free): its option sections, their validation, and its
  :class:`TaskSpec` (which ``--dataset`` values it serves);
* ``task.py``: ``build(cfg, start_step) -> Task`` (data, encoder, head, probe,
  callbacks, metadata, summary table) and ``eval_data(cfg, batch_size)`` (labelled
  data for evaluating an export, built without any network);
* ``analysis.py`` (optional): what ``tools/analyze.py`` needs of the family (samplers of
  augmentations, layers, selectivity studies); never imported by training.

Adding a task is one package and one line in :data:`TASKS`. This module is
TensorFlow-free.
"""

from dualssl_tf.options import ConfigError
from dualssl_tf.tasks import hltm, images, translation1d
from dualssl_tf.tasks.base import Task, TaskSpec  # noqa: F401  (the public names)


# Tried in this order; images serves every TensorFlow Datasets-shaped name, so it is last.
TASKS = {"hltm": hltm.SPEC, "translation1d": translation1d.SPEC, "images": images.SPEC}


def spec(dataset):
    """The TaskSpec serving ``--dataset``; ConfigError("dataset") when none does."""
    for task in TASKS.values():
        if task.serves(dataset):
            return task
    raise ConfigError("dataset", f"unknown dataset {dataset!r}; allowed: "
                      + ", ".join(dataset_names())
                      + "".join(f" or {task.also}" for task in TASKS.values() if task.also))


def dataset_names():
    """The --dataset values the tasks serve by name, in registry order (hltm,
    translation1d, generated_images, folder); images serves tfds names as well."""
    return tuple(name for task in TASKS.values() for name, _ in task.datasets)


def describe_datasets():
    """Every --dataset value in words: ``hltm (generated latent tree, ...), ... or a
    TensorFlow Datasets name (...)`` (the flag's help)."""
    named = ", ".join(f"{name} ({words})" for task in TASKS.values()
                      for name, words in task.datasets)
    return named + "".join(f" or {task.also}" for task in TASKS.values() if task.also)


def analysis_datasets():
    """The --dataset values whose task has analysis hooks (every task today)."""
    return tuple(name for task in TASKS.values() if task.analysis
                 for name, _ in task.datasets)


def option_sections():
    """{TrainConfig attribute: Section class} of every task, in registry order."""
    out = {}
    for task in TASKS.values():
        out.update(task.sections)
    return out


def build(cfg, start_step=0):
    """The :class:`Task` of ``cfg.data.dataset``; ``start_step`` resumes its data stream."""
    return spec(cfg.data.dataset).load().build(cfg, start_step=start_step)


def eval_data(cfg, batch_size=256, metadata=None):
    """Labelled ``(train, test, num_classes)`` tf.data of ``(x, label)`` batches for
    evaluating an export of a run made with ``cfg``; no network is built.
    num_classes may be None (infer it from the labels). ``metadata``: the run's recorded
    task metadata (model card), from which a task rebuilds exactly the run's splits (an
    image folder's held-out files)."""
    return spec(cfg.data.dataset).load().eval_data(cfg, batch_size, metadata=metadata)
