"""The data set names live in one place, the tasks' TaskSpec.datasets (issue 23 part 3):
--dataset's help, the unknown-dataset messages and the images task's tfds-name rule all
derive from it, so a new task's names reach every one of them."""

import pytest

from dualssl_tf import config, tasks
from dualssl_tf.evaluation import data as eval_data
from dualssl_tf.options import ConfigError
from dualssl_tf.tasks import images as images_task
from dualssl_tf.tasks.base import TaskSpec

NAMES = ("hltm", "translation1d", "generated_images", "folder")


def test_the_registry_is_the_one_list():
    assert tasks.dataset_names() == NAMES
    # every task has analysis hooks since the images task's operator monitor (issue 26)
    assert tasks.analysis_datasets() == NAMES
    help_text = config.DataOptions.__dataclass_fields__["dataset"].metadata["help"]
    assert help_text == ("Data: hltm (generated latent tree, the default; no download), "
                         "translation1d (the 1-D translation toy of Figure 3), "
                         "generated_images (generated shapes; no download), folder "
                         "(--data_dir of class sub-folders) or a TensorFlow Datasets name "
                         "(stl10, cifar10, cifar100).")
    with pytest.raises(ConfigError) as e:
        tasks.spec("Nope")
    assert str(e.value) == ("--dataset: unknown dataset 'Nope'; allowed: hltm, "
                            "translation1d, generated_images, folder or a TensorFlow "
                            "Datasets name (stl10, cifar10, cifar100)")


def test_a_new_task_s_names_reach_every_list(monkeypatch):
    toy = TaskSpec("toy", {}, serves=lambda name: name == "toy2d", validate=lambda cfg: None,
                   module="unused", analysis="unused.analysis",
                   datasets=(("toy2d", "a 2-D toy"),))
    monkeypatch.setattr(tasks, "TASKS", {"toy": toy, **tasks.TASKS})
    assert tasks.dataset_names() == ("toy2d", *NAMES)
    assert tasks.analysis_datasets() == ("toy2d", *NAMES)
    assert tasks.describe_datasets().startswith("toy2d (a 2-D toy), hltm (")
    # tfds-shaped, but another task's name: not an image data set
    assert images_task.is_image_dataset("cifar10") and not images_task.is_image_dataset("toy2d")
    with pytest.raises(ValueError, match=r"^--dataset: unknown dataset 'Nope'; allowed: "
                       r"npz:PATH, folder, generated_images, hltm, toy2d, translation1d or"):
        eval_data.probe_datasets("Nope")
