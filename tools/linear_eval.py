"""Probe an exported encoder: python tools/linear_eval.py --saved_model=runs/x/saved_model
[--dataset=NAME] [--method=linear,knn,finetune] [--knn_k=20,200]

Linear probe (frozen encoder in inference mode, standardised features, softmax regression
solved to its optimum by L-BFGS, L2 strength chosen on a held-out part of the train split),
kNN (cosine, temperature-weighted votes; at every k of --knn_k, in one pass, each k clipped
to the train split's size) and fine-tuning report top-1 (and top-5 when there are more than
5 classes) on the test split. kNN's results name their k: ``knn.top1@20``, ``knn.k@200``
(the k used, min(200, N)); ``knn.top1`` / ``knn.k`` are those of the first k listed.
Features are cached per SavedModel (``feature_cache/`` beside it) so linear and kNN share
one extraction.
Results are merged into ``linear_eval.json`` next to the SavedModel (or in --output_dir).

--dataset: ``npz:PATH`` (x_train, y_train, x_test, y_test), ``hltm`` (fresh samples of the
export's own tree, label = root latent) or a training dataset name whose experiment provides
eval data; default: the dataset in the export's model card.

Bad input ends with one line on stderr naming the flag or path, and exit status 2.
"""

import dataclasses
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import cli  # noqa: E402
from dualssl_tf.options import ConfigError, Section, option, require  # noqa: E402

TOOL = "linear_eval.py"

METHODS = ("linear", "knn", "finetune")


@dataclasses.dataclass
class LinearEvalOptions(Section):
    """The flags of tools/linear_eval.py; :meth:`validate` runs before TensorFlow is
    imported (fast failures), the checks that need the SavedModel or the data later."""
    saved_model: str = option("", "SavedModel directory written by tools/export.py or "
                              "tools/train.py.")
    dataset: str = option("", "npz:PATH, hltm, or a training dataset name; default: the "
                          "dataset in the SavedModel's model_card.json.")
    data_dir: str = option("", "Where downloaded datasets live (image datasets).")
    download: bool = option(True, "Download and prepare a TensorFlow Datasets data set not "
                            "yet prepared in --data_dir (tfds' download_and_prepare); "
                            "--nodownload stops with the `tfds build` command instead.")
    image_size: int = option(0, "Image side for image datasets; 0 = the export's.")
    method: str = option("linear", "Comma-separated subset of: " + ", ".join(METHODS))
    output: str = option("representation", "Which SavedModel output to probe "
                         "(representation, projection or an intermediate name).")
    batch_size: int = option(256, "Examples per feature-extraction batch.")
    weight_decays: str = option("1e-5,1e-4,1e-3,1e-2", "L2 grid of the linear probe, chosen "
                                "on held-out train data (0 is allowed but has no optimum on "
                                "linearly separable features).")
    val_fraction: float = option(0.2, "Held-out fraction of the train split for the grid.")
    linear_max_iter: int = option(1000, "L-BFGS iteration cap of the linear probe.")
    linear_tol: float = option(1e-8, "The linear probe stops when its largest gradient "
                               "entry is below this.")
    knn_k: str = option("20,200", "Neighbours of the kNN classifier, one k or several (one "
                        "pass; each clipped to the train split's size; the first is "
                        "knn.top1 in linear_eval.json).")
    knn_temperature: float = option(0.07, "Temperature T of the kNN votes exp(sim / T).")
    finetune_epochs: int = option(10, "Epochs of fine-tuning.")
    finetune_lr: float = option(1e-3, "Adam learning rate of the fine-tuning head.")
    encoder_lr_scale: float = option(0.1, "Encoder learning rate / head learning rate.")
    num_train: int = option(10000, "Train samples for generated data (hltm).")
    num_test: int = option(5000, "Test samples for generated data (hltm).")
    output_dir: str = option("", "Where to write linear_eval.json; default: beside the "
                             "SavedModel.")
    cache_dir: str = option("", "Feature cache; default: feature_cache/ beside the "
                            "SavedModel, or ~/.cache/dualssl_tf/feature_cache when that "
                            "directory cannot be written.")
    skip_corrupt_images: bool = option(False, "Folder data: leave out image files that do "
                                       "not decode (their count and one example are "
                                       "reported) instead of stopping; as tools/train.py's "
                                       "flag.")
    seed: int = option(0, "Seed of the held-out split and the linear probe.")
    verbose: int = option(1, "1 shows progress bars.")

    def methods(self):
        return cli.parse_list(self.method)

    def ks(self):
        """--knn_k as ints ([] when one is not an integer)."""
        try:
            return [int(k) for k in cli.parse_list(self.knn_k)]
        except ValueError:
            return []

    def decays(self):
        """--weight_decays as floats; ConfigError naming it when one is not a number."""
        try:
            return [float(w) for w in cli.parse_list(self.weight_decays)]
        except ValueError:
            raise ConfigError("weight_decays", "expected numbers, got "
                              f"{','.join(cli.parse_list(self.weight_decays))}") from None

    def validate(self, cfg):
        """Flag checks that need no TensorFlow (fast failures)."""
        require(self.saved_model, "saved_model",
                "is required: a SavedModel directory from tools/export.py")
        methods = self.methods()
        require(methods and all(m in METHODS for m in methods), "method",
                f"got {','.join(methods)}; allowed: {', '.join(METHODS)}")
        for name in ("batch_size", "linear_max_iter", "num_train", "num_test"):
            require(getattr(self, name) >= 1, name,
                    f"must be >= 1, got {getattr(self, name)}")
        ks = self.ks()
        require(ks and min(ks) >= 1, "knn_k", "expected one or more integers >= 1 (e.g. "
                f"20,200), got {','.join(cli.parse_list(self.knn_k))}")
        require(self.finetune_epochs >= 0, "finetune_epochs",
                f"must be >= 0, got {self.finetune_epochs}")
        require(0 < self.val_fraction < 1, "val_fraction",
                f"must be in (0, 1), got {self.val_fraction}")
        require(self.linear_tol > 0, "linear_tol", f"must be > 0, got {self.linear_tol}")
        require(self.knn_temperature > 0, "knn_temperature",
                f"must be > 0, got {self.knn_temperature}")
        decays = self.decays()
        require(decays and min(decays) >= 0, "weight_decays", "expected one or more values "
                f">= 0, got {','.join(cli.parse_list(self.weight_decays))}")


cli.define_option_flags(LinearEvalOptions.flag_fields())


def fail(message):
    cli.fail(TOOL, message)


def _task_of(dataset):
    """The task family serving a --dataset name (None for npz: files, unknown names)."""
    from dualssl_tf import config, tasks
    if not dataset or dataset.startswith("npz:") or dataset.endswith(".npz"):
        return None
    try:
        return next(name for name, spec in tasks.TASKS.items()
                    if spec is tasks.spec(dataset))
    except (config.ConfigError, StopIteration):
        return None


def check_dataset_family(dataset, card, saved_model):
    """An export of one data family (hltm, translation1d, images) probed on another fails
    here, before any data is generated or downloaded."""
    trained = card.get("dataset") or (card.get("flags") or {}).get("dataset") or ""
    if not dataset or not trained:
        return
    want, got = _task_of(trained), _task_of(dataset)
    if want and got and want != got:
        shape = card.get("input_shape")
        fail(f"--dataset: {dataset!r} does not fit {saved_model}, trained on "
             f"--dataset={trained}" + (f" (input shape {tuple(shape)})" if shape else "")
             + f"; pass --dataset={trained} or npz:PATH with inputs of that shape")


def check_saved_model_dir(path, opts):
    """Local --saved_model checks before TensorFlow: a directory holding saved_model.pb,
    and, without --dataset, a model_card.json that names the dataset."""
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        inner = os.path.join(path, "saved_model")
        if os.path.exists(os.path.join(inner, "saved_model.pb")):
            fail(f"--saved_model: {path} is a run directory, not a SavedModel; pass "
                 f"--saved_model={inner}")
        if os.path.exists(os.path.join(path, "flags.txt")):
            fail(f"--saved_model: {path} is a run directory without an export (no "
                 f"saved_model/); export it with tools/export.py --model_dir={path}")
        fail(f"--saved_model: {path} is not a SavedModel (no saved_model.pb); "
             "pass the directory written by tools/export.py")
    card_path = os.path.join(path, "model_card.json")
    card = {}
    if os.path.exists(card_path):
        try:
            with open(card_path) as f:
                card = json.load(f)
        except ValueError as e:
            fail(f"--saved_model: {card_path} is not valid JSON ({e}); re-export the run "
                 "with tools/export.py")
    elif not opts.dataset:
        fail(f"--saved_model: {path} has no model_card.json, so its dataset is unknown; "
             "pass --dataset (npz:PATH, hltm or a dataset name), or re-export the run with "
             "tools/export.py")
    check_dataset_family(opts.dataset, card, path)


def write_results(path, update):
    """Merges ``update`` into the JSON at path (keeping other methods' results), atomically
    (temp + rename on local disk; one whole object on gs://, see dualssl_tf.runfiles)."""
    from dualssl_tf import runfiles
    results = {}
    if runfiles.exists(path):
        try:
            results = json.loads(runfiles.read_text(path))
        except ValueError:
            results = {}
    results.update(update)
    runfiles.makedirs(os.path.dirname(path) or ".")
    runfiles.write_text_atomic(path, json.dumps(results, indent=2, sort_keys=True))
    return results


def folder_listing(path):
    """Every file under an image folder, with its size and modification time when local,
    as one string (the feature cache's key of a folder: a changed folder is other data).
    A URL (gs://) lists names only: a stat there is one request per file."""
    import tensorflow as tf
    entries = []
    for root, _, files in tf.io.gfile.walk(path):
        for name in files:
            full = os.path.join(root, name)
            entry = os.path.relpath(full, path)
            if "://" not in path:
                stat = os.stat(full)
                entry += f":{stat.st_size}:{stat.st_mtime_ns}"
            entries.append(entry)
    return "\n".join(sorted(entries))


def check_output_dirs(out_dir, opts):
    """linear_eval.json's directory and a --cache_dir must be writable (a run directory
    may be read-only): one line naming the flag, before any feature is extracted."""
    from dualssl_tf import runfiles
    try:
        runfiles.check_writable(out_dir)
    except ValueError as e:
        reason = str(e).split(" (", 1)[1].split(");", 1)[0] if " (" in str(e) else ""
        where = (f"{out_dir} is" if opts.output_dir else "linear_eval.json goes beside the "
                 f"SavedModel, in {out_dir}, which is")
        fail(f"--output_dir: {where} not writable ({reason}); pass a writable --output_dir")
    if opts.cache_dir:
        try:
            runfiles.check_writable(opts.cache_dir)
        except ValueError as e:
            reason = str(e).split(" (", 1)[1].split(");", 1)[0] if " (" in str(e) else ""
            fail(f"--cache_dir: {opts.cache_dir} is not writable ({reason}); pass a writable "
                 "--cache_dir, or none for the default")


TOP5_MIN_CLASSES = 10  # the printout's top-5 needs at least this many classes


def run(opts):
    from dualssl_tf.evaluation import data, export, features, finetune, knn, linear
    import numpy as np

    saved_model = opts.saved_model
    if "://" not in saved_model:
        saved_model = os.path.abspath(saved_model)
    # linear_eval.json goes next to the SavedModel (local or gs://) unless --output_dir.
    out_dir = opts.output_dir or os.path.dirname(saved_model)
    try:
        encoder = export.load_encoder(saved_model)
    except ValueError as e:
        fail(f"--saved_model: {e}")
    card = encoder.model_card
    dataset = opts.dataset or card.get("dataset") or ""
    if not dataset:
        what = "names no dataset" if card else "is missing"
        fail(f"--dataset: is required ({saved_model}/model_card.json {what})")
    check_dataset_family(dataset, card, saved_model)
    check_output_dirs(out_dir, opts)
    if opts.output not in encoder.output_keys:
        fail(f"--output: {saved_model} has outputs {', '.join(encoder.output_keys)}, not "
             f"{opts.output!r}")
    train_ds, test_ds, num_classes = data.probe_datasets(
        dataset, opts.data_dir, opts.image_size or None, opts.batch_size,
        model_card=card, num_train=opts.num_train, num_test=opts.num_test,
        download=opts.download, skip_corrupt_images=opts.skip_corrupt_images)
    if num_classes == 1:  # a probe of one class scores 1.0 whatever the features
        fail(f"--dataset: {dataset} has a single class; a probe needs two or more"
             + (" (one sub-folder per class in --data_dir)" if dataset == "folder" else ""))
    for ds in (train_ds, test_ds):
        features.check_dataset(encoder, ds)

    # The cache key names everything that changes the examples.
    data_key = f"{dataset}-n{opts.num_train}_{opts.num_test}" if dataset == "hltm" else (
        f"{dataset}-{opts.image_size}" if opts.image_size else dataset)
    if dataset.startswith("npz:") or dataset.endswith(".npz"):
        path = dataset[4:] if dataset.startswith("npz:") else dataset
        data_key = f"{os.path.abspath(path)}-{os.path.getmtime(path)}"
    elif dataset != "hltm":
        # Another --data_dir (another folder) is other data, and so is a folder whose files
        # changed since the features were cached.
        where = opts.data_dir or str((card.get("flags") or {}).get("data_dir") or "")
        where = where if "://" in where else os.path.abspath(where) if where else ""
        listing = folder_listing(where) if dataset == "folder" and where else ""
        digest = hashlib.sha1(f"{where}|{listing}".encode()).hexdigest()[:10]
        data_key = f"{data_key}-{digest}"
    results = {}
    methods = opts.methods()
    if "linear" in methods or "knn" in methods:
        feats = {}
        for split, ds in (("train", train_ds), ("test", test_ds)):
            if opts.verbose:
                print(f"Features of the {split} split:")
            try:
                feats[split] = features.cached_features(
                    encoder, ds, data_key, split, opts.output, cache_dir=opts.cache_dir or None,
                    verbose=opts.verbose)
            except ValueError as e:
                if "empty" in str(e):
                    fail(f"--dataset: the {split} split of {dataset!r} is empty")
                raise
        (xtr, ytr), (xte, yte) = feats["train"], feats["test"]
        c = num_classes or int(max(ytr.max(), yte.max())) + 1
        if "linear" in methods:
            results["linear"] = linear.linear_probe(
                xtr, ytr, xte, yte, c, weight_decays=opts.decays(), val_fraction=opts.val_fraction,
                seed=opts.seed, max_iter=opts.linear_max_iter, tol=opts.linear_tol)
        if "knn" in methods:
            ks = opts.ks()
            if opts.verbose:
                print(f"kNN votes of the {len(xte)} test examples (k = "
                      f"{', '.join(str(min(k, len(xtr))) for k in ks)} of {len(xtr)}):")
            results["knn"] = knn.knn_probe(xtr, ytr, xte, yte, c, k=ks,
                                           temperature=opts.knn_temperature,
                                           verbose=opts.verbose)
    if "finetune" in methods:
        c = num_classes
        if not c:
            labels = [np.asarray(y).reshape(-1) for ds in (train_ds, test_ds) for _, y in ds]
            c = int(max(int(y.max()) for y in labels if len(y))) + 1
        results["finetune"] = finetune.finetune(
            saved_model, train_ds, test_ds, c, epochs=opts.finetune_epochs,
            learning_rate=opts.finetune_lr, encoder_lr_scale=opts.encoder_lr_scale,
            output=opts.output, verbose=opts.verbose)
    for r in results.values():
        r.update(dataset=dataset, output=opts.output)
    path = os.path.join(out_dir, "linear_eval.json")
    write_results(path, {"saved_model": saved_model, **results})
    for method, r in results.items():
        for name, top1, top5 in _printed(method, r):
            # top-5 of a handful of classes is near 1 whatever the features: shown from 10
            # up.
            top5 = (f", top-5 {top5:.4f}" if top5 is not None and (c or 0) >= TOP5_MIN_CLASSES
                    else "")
            print(f"{name}: top-1 {top1:.4f}{top5}")
    print(f"Results written to {path}")


def _printed(method, r):
    """(label, top-1, top-5) lines of one method's results: kNN one per k, naming a k
    clipped to the train split's size."""
    if method != "knn":
        return [(method, r["top1"], r.get("top5"))]
    rows = []
    for k in r["ks"]:
        label = f"knn@{k}" + (f" (k = {r[f'k@{k}']}: all {r['num_train']} train examples)"
                              if k in r["clipped"] else "")
        rows.append((label, r[f"top1@{k}"], r[f"top5@{k}"]))
    return rows


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    opts = cli.validated_section(TOOL, LinearEvalOptions)   # one line and exit 2 when bad
    remote = "://" in opts.saved_model   # gs:// etc. are checked by load_encoder
    if not remote and not os.path.isdir(opts.saved_model):
        fail(f"--saved_model: {opts.saved_model} is not a directory; pass a SavedModel "
             "written by tools/export.py")
    if not remote:
        check_saved_model_dir(opts.saved_model, opts)
    cli.import_tensorflow()  # its C++ start-up lines captured (--tf_log shows them)
    try:
        run(opts)
    except ValueError as e:  # library errors name their flag (e.g. --dataset: ...)
        fail(str(e).strip().splitlines()[0])


def parse_flags(argv):
    return cli.parse_flags(TOOL, argv)


if __name__ == "__main__":
    cli.run(main, TOOL)
