"""A run whose --model_dir is a URL, and TensorBoard events after a resume.

TensorFlow's in-memory ``ram://`` file system stands in for ``gs://``: both are reached only
through ``tf.io.gfile`` (no local ``open``/``os`` call can touch them). A tiny HLTM run on
ram:// must write metrics, checkpoints, TensorBoard events, the export and finished.json,
resume after a crash, and give the very same numbers as the same run on local disk (CPU,
fixed seed, deterministic ops).

TensorBoard: a kill after epochs past the last checkpoint used to leave their events in
place, and the resumed run wrote them again (a zig-zag in TensorBoard). After a resume every
(tag, step) must appear exactly once, with the value of the run that finished.
"""

import collections
import json
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

from dualssl_tf import config, runfiles
from dualssl_tf.evaluation import export
from dualssl_tf.run import rundir

from tests.tiny_runs import TINY_HLTM as BASE, events, train  # noqa: E402


def ram_dir():
    return f"ram://run-{uuid.uuid4().hex[:8]}"


def files_under(root):
    """{relative path: bytes} of every file under root (any tf.io.gfile file system)."""
    out = {}
    for directory, _, files in tf.io.gfile.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            out[os.path.relpath(path, root) if "://" not in root
                else path[len(root) + 1:]] = runfiles.read_bytes(path)
    return out


def ckpt_tensors(model_dir, epoch):
    prefix = os.path.join(model_dir, "checkpoints", f"ckpt-{epoch}")
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("model/", "optimizer/", "epoch/", "step/"))}


def crash_after_epoch_3_before_its_checkpoint(model_dir):
    """State of a kill after epoch 3's metrics line and TensorBoard events, before ckpt-3."""
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    for name in runfiles.listdir(ckpt_dir):
        if name.startswith("ckpt-3."):
            runfiles.remove(os.path.join(ckpt_dir, name))
    runfiles.remove(os.path.join(model_dir, rundir.FINISHED_FILE))
    with tf.io.gfile.GFile(os.path.join(model_dir, "metrics.jsonl"), "a") as f:
        f.write('{"epoch": 4, "learning_rate": 0.1, "lo')


def tensorboard_scalars(log_dir):
    """{(subdir, tag): [(step, value), ...]} over all events files, in file order."""
    out = collections.defaultdict(list)
    for subdir, tag, step, value in events(log_dir):
        out[(subdir, tag)].append((step, value))
    return out


@pytest.fixture(scope="module")
def local_ref(tmp_path_factory):
    """A finished 4-epoch run on local disk."""
    run = tmp_path_factory.mktemp("remote") / "ref4"
    train(run, epochs=4)
    return str(run)


@pytest.mark.parametrize("where", ["local", "ram"])
def test_resume_writes_each_tensorboard_point_once(local_ref, tmp_path, capsys, where):
    run = str(tmp_path / "run") if where == "local" else ram_dir()
    train(run, epochs=3)
    log_dir = os.path.join(run, "logs")
    before = tensorboard_scalars(log_dir)
    assert [s for s, _ in before[("train", "epoch_loss")]] == [0, 1, 2]
    crash_after_epoch_3_before_its_checkpoint(run)
    train(run, epochs=4)
    assert f"Resuming {run} at epoch 2 (step 6)" in capsys.readouterr().out

    after = tensorboard_scalars(log_dir)
    assert ("train", "epoch_loss") in after and ("train", "epoch_learning_rate") in after
    for key, points in after.items():
        steps = [s for s, _ in points]
        assert sorted(steps) == [0, 1, 2, 3], (key, steps)   # each step once, none missing
    # The values are those of the run that finished: metrics.jsonl (epoch e = step e - 1),
    # which itself equals the uninterrupted local run.
    with tf.io.gfile.GFile(os.path.join(run, "metrics.jsonl")) as f:
        metrics = f.read()
    with open(os.path.join(local_ref, "metrics.jsonl")) as f:
        assert metrics == f.read()
    records = [json.loads(line) for line in metrics.splitlines()]
    for step, value in after[("train", "epoch_loss")]:
        np.testing.assert_allclose(value, records[step + 1]["loss"], rtol=1e-6)
    # Steps 0 and 1 are the first run's points, untouched; step 2 was cut and rewritten.
    assert after[("train", "epoch_loss")][:2] == before[("train", "epoch_loss")][:2]


def test_ram_model_dir_run_matches_local_and_resumes(local_ref, capsys):
    run = ram_dir()
    train(run, epochs=3)
    files = files_under(run)
    assert json.loads(files["finished.json"]) == {"epochs": 3}
    assert config.parse_flagfile(files["flags.txt"].decode())["model_dir"] == run
    metadata = json.loads(files["run.json"])
    assert list(metadata) == ["hltm"]            # the tree (polarities) of this run
    with open(os.path.join(local_ref, "run.json")) as f:
        assert metadata == json.load(f)          # same seed, same tree
    assert {n for n in files if n.startswith("checkpoints/") and n.endswith(".index")} == {
        "checkpoints/ckpt-1.index", "checkpoints/ckpt-2.index", "checkpoints/ckpt-3.index"}
    assert any(n.startswith("logs/train/events.out.tfevents") for n in files)
    assert "saved_model/saved_model.pb" in files and "saved_model/model_card.json" in files
    assert not [n for n in files if ".tmp" in n or "write-probe" in n]   # no leftovers
    card = json.loads(files["saved_model/model_card.json"])
    assert card["epochs"] == 3 and card["metadata"] == metadata
    last = json.loads(files["metrics.jsonl"].decode().splitlines()[-1])
    assert last["epoch"] == 3 and card["final_metrics"]["loss"] == last["loss"]

    # Rerunning the finished run does nothing; then a crash and a resume to 4 epochs.
    assert train(run, epochs=3)["finished"]
    crash_after_epoch_3_before_its_checkpoint(run)
    train(run, epochs=4)
    assert f"Resuming {run} at epoch 2 (step 6)" in capsys.readouterr().out
    assert runfiles.read_text(os.path.join(run, "metrics.jsonl")) == open(
        os.path.join(local_ref, "metrics.jsonl")).read()
    ta, tb = ckpt_tensors(local_ref, 4), ckpt_tensors(run, 4)
    assert sorted(ta) == sorted(tb) and len(ta) == 16
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)

    # The export on ram:// loads and computes what the local export computes.
    x = np.random.default_rng(0).standard_normal([5, 8]).astype(np.float32)
    remote, local = export.load_encoder(os.path.join(run, "saved_model")), export.load_encoder(
        os.path.join(local_ref, "saved_model"))
    assert remote.model_card["input_shape"] == [8]
    np.testing.assert_array_equal(remote(x)["representation"].numpy(),
                                  local(x)["representation"].numpy())


def test_ram_model_dir_made_with_other_flags_is_refused():
    run = ram_dir()
    runfiles.makedirs(run)
    runfiles.write_text_atomic(os.path.join(run, "flags.txt"),
                               config.to_flagfile(BASE.replace(model_dir=run)))
    with pytest.raises(config.ConfigError) as err:
        train(run, epochs=1, hltm_hid=5)
    assert err.value.flag == "hltm_hid" and "\n" not in str(err.value)
    assert "holds a run made with --hltm_hid=4" in str(err.value)
    assert runfiles.listdir(run) == ["flags.txt"]      # nothing written


def test_unwritable_url_model_dir_is_one_line():
    with pytest.raises(config.ConfigError) as err:
        train("nosuchfs://bucket/run", epochs=1)
    message = str(err.value)
    assert err.value.flag == "model_dir" and "\n" not in message
    assert "nosuchfs://bucket/run is not writable" in message


@pytest.mark.slow  # three TensorFlow subprocesses: ~40 s on the shared CPU
def test_tools_take_url_run_directories(tmp_path):
    """train.py, export.py and linear_eval.py on a ``file://`` URL (ram:// lives in one
    process): every path takes the URL code path through tf.io.gfile, across processes."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=root)

    def tool(name, *args):
        proc = subprocess.run([sys.executable, os.path.join(root, "tools", name), *args],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    url = f"file://{tmp_path}/run"
    flags = [f"--{k}={v}" for k, v in config.parse_flagfile(config.to_flagfile(
        BASE.replace(model_dir=url, epochs=2))).items()]
    tool("train.py", *flags)
    with open(tmp_path / "run" / "finished.json") as f:
        assert json.load(f) == {"epochs": 2}
    tool("export.py", f"--model_dir={url}", f"--export_dir={url}/export2")
    a = export.load_encoder(str(tmp_path / "run" / "saved_model"))
    b = export.load_encoder(str(tmp_path / "run" / "export2"))
    assert b.model_card["checkpoint"] == f"{url}/checkpoints/ckpt-2"
    x = np.eye(8, dtype=np.float32)
    np.testing.assert_array_equal(a(x)["representation"].numpy(),
                                  b(x)["representation"].numpy())
    tool("linear_eval.py", f"--saved_model={url}/saved_model", "--num_train=200",
         "--num_test=100", "--weight_decays=0", "--method=knn",
         "--verbose=0", f"--cache_dir={url}/cache")
    with open(tmp_path / "run" / "linear_eval.json") as f:
        result = json.load(f)
    assert result["saved_model"] == f"{url}/saved_model" and 0 <= result["knn"]["top1"] <= 1
    assert len(os.listdir(tmp_path / "run" / "cache")) == 2    # train and test features
