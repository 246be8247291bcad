"""Per-host input sharding: tfds data sets by file (fallback: by element), folders by name.

Uses a tiny real tfds data set written to disk in 4 files of 9 examples (tests/data/
tiny_tfds.py; example i has label i), so which host holds which example can be read off
its labels and compared with the contents of the files assigned to it.
"""

import logging

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dualssl_tf.data import pipeline
from dualssl_tf.data.sources.folders import folder_source
from dualssl_tf.data.sources.tfds import tfds_source
from tests.data import tiny_tfds

NUM = tiny_tfds.NUM_TRAIN


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    builder = tiny_tfds.prepare(root, num_shards=4)
    files = builder.info.splits["train"].file_instructions
    # The premise of the expected counts below: 4 files of 9 examples.
    assert [f.take for f in files] == [9, 9, 9, 9]
    return str(root)


def _ctx(pipelines, index):
    return tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=index,
                                      num_replicas_in_sync=pipelines)


def _host(data_dir, pipelines, index, seed=3):
    whole = tfds_source(tiny_tfds.NAME, "train", data_dir, shuffle_files=True,
                               seed=seed)
    return pipeline.pipeline_source(whole, _ctx(pipelines, index))


def _labels(source):
    return [int(label) for _, label in source.elements.as_numpy_iterator()]


@pytest.mark.parametrize("pipelines, counts", [(2, [18, 18]), (3, [18, 9, 9])])
def test_hosts_read_disjoint_files_covering_the_split(data_dir, pipelines, counts, caplog):
    # an earlier SavedModel export leaves it at WARNING
    caplog.set_level(logging.INFO, logger="absl")
    hosts = [_host(data_dir, pipelines, i) for i in range(pipelines)]
    got = [_labels(h) for h in hosts]
    # num_examples (from the file instructions) is what each host really yields:
    # host i has files i, i + P, ... of 9 examples each.
    assert [h.num_examples for h in hosts] == counts == [len(g) for g in got]
    for i, (host, labels) in enumerate(zip(hosts, got)):
        assert host.name == f"{tiny_tfds.NAME}/train[files {i}/{pipelines}]"
        # Exactly the examples of this host's files: sharded by file, not by element.
        assert sorted(labels) == tiny_tfds.labels_in_files(data_dir, range(i, 4, pipelines))
    assert sorted(sum(got, [])) == list(range(NUM))  # disjoint, and the whole split
    # A share is final: asked again for its own pipeline it is returned as is (no second
    # sharding); for another pipeline it is refused.
    assert pipeline.pipeline_source(hosts[1], _ctx(pipelines, 1)) is hosts[1]
    with pytest.raises(ValueError, match=r"already input pipeline 1 of \d's share"):
        pipeline.pipeline_source(hosts[1], _ctx(pipelines, 0))
    assert sum("reads by file" in r.getMessage() for r in caplog.records) == pipelines


def test_more_pipelines_than_files_shards_by_element(data_dir, caplog):
    # an earlier SavedModel export leaves it at WARNING
    caplog.set_level(logging.INFO, logger="absl")
    hosts = [_host(data_dir, 5, i) for i in range(5)]
    got = [_labels(h) for h in hosts]
    assert [h.num_examples for h in hosts] == [8, 7, 7, 7, 7] == [len(g) for g in got]
    assert [h.name for h in hosts] == [f"{tiny_tfds.NAME}/train[shard {i}/5]"
                                       for i in range(5)]
    assert sorted(sum(got, [])) == list(range(NUM))
    # Host i keeps elements i, i + 5, ... of the one seeded order every host reads.
    order = _labels(tfds_source(tiny_tfds.NAME, "train", data_dir,
                                       shuffle_files=True, seed=3))
    assert got[2] == order[2::5]
    msgs = [r.getMessage() for r in caplog.records if "shards by element" in r.getMessage()]
    assert len(msgs) == 5 and "the split has 4 files for 5 input pipelines" in msgs[0]


def test_one_pipeline_is_the_whole_split(data_dir):
    whole = tfds_source(tiny_tfds.NAME, "train", data_dir)
    assert pipeline.pipeline_source(whole, _ctx(1, 0)) is whole
    assert pipeline.pipeline_source(whole, None) is whole
    assert whole.num_examples == NUM and sorted(_labels(whole)) == list(range(NUM))


def test_file_sharded_stream_is_deterministic_and_resumes(data_dir):
    def stream(start_step=0, n=3):
        host = _host(data_dir, 2, 1, seed=7)  # rebuilt from scratch, as in a new process
        ds = pipeline.pretrain_dataset(host, 4, 8, seed=11, start_step=start_step)
        return list(ds.take(n).as_numpy_iterator())

    a = stream(n=5)
    resumed = stream(start_step=3, n=2)  # a fresh pipeline: equal to the first one's 3, 4
    for x, y in zip(a[3:], resumed):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # The first epoch (18 elements) is host 1's files 1 and 3, each example once.
    labels = np.concatenate([x["label"] for x in a])[:18]
    assert sorted(labels) == tiny_tfds.labels_in_files(data_dir, [1, 3])


def test_mocked_data_without_files_shards_by_element(tmp_path, caplog):
    # an earlier SavedModel export leaves it at WARNING
    caplog.set_level(logging.INFO, logger="absl")
    with tfds.testing.mock_data(num_examples=7):
        whole = tfds_source("cifar10", "train", str(tmp_path))
        hosts = [pipeline.pipeline_source(whole, _ctx(2, i)) for i in range(2)]
        assert [h.num_examples for h in hosts] == [4, 3]
        assert [len(_labels(h)) for h in hosts] == [4, 3]
    assert any("file list is unknown" in r.getMessage() for r in caplog.records)


def test_folder_hosts_open_only_their_own_files(tmp_path):
    # Sorted paths 0..3.png; the odd ones are not images. Element sharding of the file
    # NAMES gives host 0 files 0 and 2, so it decodes without ever opening 1 or 3.
    for i in range(4):
        data = (tf.io.encode_png(np.full((8, 8, 3), 10 * i, np.uint8)).numpy() if i % 2 == 0
                else b"not an image")
        (tmp_path / f"{i}.png").write_bytes(data)
    src = folder_source(str(tmp_path), verify=False)
    host0 = pipeline.pipeline_source(src, _ctx(2, 0))
    values = sorted(float(x[0, 0, 0, 0]) * 255 for x, _ in
                    pipeline.eval_dataset(host0, 1, 8, labelled_only=False))
    np.testing.assert_allclose(values, [0, 20], atol=1e-3)
    assert host0.num_examples == 2
    host1 = pipeline.pipeline_source(src, _ctx(2, 1))
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(pipeline.eval_dataset(host1, 1, 8, labelled_only=False))
