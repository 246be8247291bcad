"""A tiny real tfds image data set, prepared on disk in several shard files (no download).

Example ``i`` of a split has label ``i`` and every pixel equal to ``i``, so a stream's
labels (or pixels) say exactly which examples it holds.
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

NAME = "shard_test_images"
NUM_TRAIN = 36
NUM_TEST = 8
SIZE = 16


class ShardTestImages(tfds.core.GeneratorBasedBuilder):
    """36 train / 8 test 16x16 RGB images, one class per example (registered as NAME)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Test data."}
    # No source files beside the code (checksums, README): tfds would otherwise look them
    # up through `importlib_resources`, which this environment does not have.
    code_path = None

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(SIZE, SIZE, 3)),
            "label": tfds.features.ClassLabel(num_classes=NUM_TRAIN)}))

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples(NUM_TRAIN),
                "test": self._generate_examples(NUM_TEST)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": np.full((SIZE, SIZE, 3), i, np.uint8), "label": i}


def prepare(data_dir, num_shards=4):
    """Writes the data set into data_dir in ``num_shards`` files per split; -> builder."""
    builder = ShardTestImages(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        num_shards=num_shards))
    return builder


def labels_in_files(data_dir, file_indices, split="train"):
    """Sorted labels stored in the given files of a split, read straight from the
    TFRecords (not through tfds' reader)."""
    builder = tfds.builder(NAME, data_dir=str(data_dir))
    files = builder.info.splits[split].file_instructions
    found = []
    for i in file_indices:
        for record in tf.data.TFRecordDataset(files[i].filename):
            found.append(int(builder.info.features.deserialize_example(record)["label"]))
    return sorted(found)
