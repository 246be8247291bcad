"""SavedModel export of a trained encoder (+ projection head), and loading it back.

An export is a TF SavedModel directory with

* ``serving_default`` / ``serve``: inference mode (BatchNorm uses its moving statistics,
  dropout off). Input ``x`` float32 ``[None, *input_shape]`` (images: ``[None, H, W, 3]`` with
  values in [0, 1]; the HLTM tree net: ``[None, 32]``; the 1-D toy: ``[None, d]``). Output a
  dict of float32 tensors: ``representation`` ``[None, R]`` (encoder output),
  ``projection`` ``[None, D]`` (head output; equal to ``representation`` without a head) and
  one entry per requested intermediate output (e.g. block outputs ``[None, h, w, c]``).
* ``train_mode``: the same function in training mode (BatchNorm batch statistics, and its
  moving averages updated), for fine-tuning.
* trainable variables, checkpointed under ``encoder/...`` and ``head/...``, so a loaded
  model can be fine-tuned with ``tf.GradientTape`` or as
  :class:`dualssl_tf.evaluation.finetune.SavedModelLayer` inside a Keras model
  (``keras.layers.TFSMLayer`` loads it too, but Keras 3.15 optimizers cannot build slots for
  its ``...:0`` weight names inside ``fit``).
* ``model_card.json`` next to ``saved_model.pb`` (inside the directory, so the card and the
  weights are replaced together): run facts (flags, dataset, epochs, final metrics) plus the
  package version, input shape and output shapes.

Exports are atomic: everything is written to a temporary sibling directory which replaces the
target only once complete, so an interrupted export never leaves a half model at the target
and a re-export keeps the previous one intact until the new one is ready.

Example:
  >>> export_encoder(encoder, head, "run/saved_model", input_shape=(32, 32, 3),
  ...                model_card={"dataset": "cifar10", "epochs": 100})
  >>> enc = load_encoder("run/saved_model")
  >>> enc(images)["representation"]        # [B, R]
"""

import dataclasses
import datetime
import json
import os
import re
import uuid

import keras
import tensorflow as tf

import dualssl_tf
from dualssl_tf import runfiles
from dualssl_tf.models import taps
from dualssl_tf.models import vit

SERVE = "serve"
TRAIN_MODE = "train_mode"
SIGNATURE = "serving_default"
MODEL_CARD = "model_card.json"
REQUIRED_OUTPUTS = taps.RESERVED_OUTPUTS


def _intermediates_fn(encoder, intermediate_layers):
    """Builds ``(x, training) -> (representation, {name: tensor})`` for the encoder.

    intermediate_layers:
      None: no intermediate outputs.
      list of layer names / dict {output name: layer name}: outputs of those layers of a
        functional (or Sequential) encoder, computed in the same forward pass; a dict value
        may instead be a callable ``encoder -> symbolic tensor`` built on the encoder's
        layers' outputs (e.g. the ViT's mean of patch tokens, :func:`vit.patch_mean`).
      callable ``(x, training) -> {name: tensor}``: for subclassed encoders (e.g. the HLTM
        tree net's per-depth activations); called in addition to the encoder. A callable
        ``tf.Module`` (e.g. a method's extra outputs, :meth:`SSLMethod.export_outputs`) is
        tracked by the export, so variables of its own are saved with it.
    """
    if intermediate_layers is None:
        return lambda x, training: (encoder(x, training=training), {})
    if callable(intermediate_layers):
        def fn(x, training):
            extra = intermediate_layers(x, training)
            if not isinstance(extra, dict):
                raise ValueError("intermediate_layers: the callable must return a dict of "
                                 f"tensors, got {type(extra).__name__}")
            return (encoder(x, training=training),
                    {taps.output_key(k): v for k, v in extra.items()})
        return fn
    if isinstance(intermediate_layers, (list, tuple)):
        intermediate_layers = {name: name for name in intermediate_layers}
    if not isinstance(intermediate_layers, dict):
        raise ValueError("intermediate_layers: expected None, a list of layer names, a dict "
                         f"or a callable, got {type(intermediate_layers).__name__}")
    try:
        inputs = encoder.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(f"intermediate_layers: encoder {encoder.name!r} is not a functional "
                         "model, so its layers' outputs cannot be tapped by name; pass a "
                         "callable (x, training) -> dict instead")
    outputs = {"representation": encoder.outputs[0],
               **taps.tap_outputs(encoder, intermediate_layers)}
    # Shares the encoder's layers and variables: one forward pass gives every output.
    tap = keras.Model(inputs, outputs, name=f"{encoder.name}_taps")

    def fn(x, training):
        out = dict(tap(x, training=training))
        return out.pop("representation"), out
    return fn


def _forward_fn(encoder, head, intermediate_layers):
    """``(x, training) -> dict`` of float32 outputs (see module docstring)."""
    encode = _intermediates_fn(encoder, intermediate_layers)

    def forward(x, training):
        h, extra = encode(x, training)
        p = head(h, training=training) if head is not None else h
        out = {"representation": h, "projection": p}
        out.update(extra)
        # Mixed-precision encoders return float16; the exported contract is float32.
        return {k: tf.cast(v, tf.float32) for k, v in out.items()}
    return forward


def _jsonable(value):
    """Plain-JSON copy of a model card (numpy / tensor scalars become numbers)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if tf.is_tensor(value) or hasattr(value, "tolist"):
        value = value.numpy() if tf.is_tensor(value) else value
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def default_intermediates(encoder):
    """The encoder's own transfer taps, for :func:`export_encoder`'s intermediate_layers.

    * an encoder method ``transfer_outputs(x, training) -> {name: [B, ...]}`` is used as is;
    * an encoder with ``pre_activations(x) -> [per depth [B, groups, hid]]`` (the HLTM
      :class:`~dualssl_tf.models.tree_net.TreeNet`) exports ``depth_<d>``: the ReLU
      activations of depth d flattened to [B, groups * hid] (the root is the representation);
    * a :func:`~dualssl_tf.models.vit.vit` encoder exports ``patch_mean``: the mean of its
      patch tokens after the final LayerNorm, [B, D] (the representation is the [CLS]
      token's);
    * a functional encoder with ResNet stage naming (``layer<s>_<b>_out``, as
      :mod:`dualssl_tf.models.resnet` builds it) exports ``layer<s>``: the output of each
      stage's last block, [B, h, w, c];
    * otherwise None (no intermediate outputs).
    """
    if callable(getattr(encoder, "transfer_outputs", None)):
        return encoder.transfer_outputs
    if vit.is_vit(encoder):
        return {"patch_mean": vit.patch_mean}
    stages = {}
    for layer in getattr(encoder, "layers", []):
        match = re.fullmatch(r"(layer\d+)_(\d+)_out", layer.name)
        if match and int(match.group(2)) >= stages.get(match.group(1), (-1, ""))[0]:
            stages[match.group(1)] = (int(match.group(2)), layer.name)
    if stages and getattr(encoder, "inputs", None):
        return {stage: name for stage, (_, name) in sorted(stages.items())}
    if callable(getattr(encoder, "pre_activations", None)):
        def tree_taps(x, training):
            pres = encoder.pre_activations(x)
            return {f"depth_{d}": tf.reshape(tf.nn.relu(p), [tf.shape(p)[0], -1])
                    for d, p in enumerate(pres[:-1], start=1)}
        return tree_taps
    return None


def run_model_card(cfg, metadata=None, final_metrics=None):
    """Model card of a training run: its flags, dataset, epochs, final metrics, metadata.

    cfg: a TrainConfig dataclass (or a plain dict of flags); metadata: JSON-able run facts
    (e.g. the HLTM polarities, needed to probe the same tree); final_metrics: dict.
    """
    flags = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {"flags": flags, "dataset": flags.get("dataset"), "epochs": flags.get("epochs"),
            "final_metrics": dict(final_metrics or {}), "metadata": dict(metadata or {})}


def export_encoder(encoder, head, export_dir, input_shape, model_card=None,
                   intermediate_layers=None):
    """Atomically writes a fine-tunable SavedModel of ``encoder`` (+ ``head``) to export_dir.

    Args:
      encoder: built Keras model ``x [B, *input_shape] -> representation [B, R]``.
      head: optional Keras model ``[B, R] -> [B, D]``; None exports ``projection =
        representation``.
      export_dir: target directory; replaced only once the new export is complete.
      input_shape: shape of one example without the batch dim, e.g. ``(32, 32, 3)``,
        ``(32,)``.
      model_card: optional plain dict (flags, dataset, epochs, final metrics, ...), written
        with automatic fields (package version, input shape, outputs) to model_card.json.
      intermediate_layers: None, layer names (list or ``{output_name: layer_name}``) of a
        functional encoder, or a callable ``(x, training) -> {name: tensor}``.

    Returns:
      The model card dict that was written.

    Raises:
      ValueError: bad arguments (one line naming the argument); nothing is written.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or any(d <= 0 for d in input_shape):
        raise ValueError(f"input_shape: expected positive dims without the batch dim, got "
                         f"{input_shape}")
    if model_card is not None and not isinstance(model_card, dict):
        raise ValueError(f"model_card: expected a dict, got {type(model_card).__name__}")
    export_dir = os.fspath(export_dir)
    if "://" not in export_dir:   # gs:// and other tf.io.gfile file systems stay as given
        export_dir = os.path.abspath(export_dir)
    export_dir = export_dir.rstrip("/")
    if runfiles.exists(export_dir) and not runfiles.isdir(export_dir):
        raise ValueError(f"export_dir: {export_dir} exists and is not a directory")

    forward = _forward_fn(encoder, head, intermediate_layers)
    spec = tf.TensorSpec([None, *input_shape], tf.float32, name="x")
    # Trace once eagerly-shaped to learn the output shapes and fail early on bad layers.
    probe_out = forward(tf.zeros([1, *input_shape]), False)

    # A plain tf.Module root with the networks as its first children: each variable is
    # checkpointed under its object path (encoder/<attribute path>/...), which is how
    # tools that rebuild the networks from flags read trained weights back
    # (dualssl_tf.analysis.runs). keras.export.ExportArchive would file them under
    # variables/<i> instead.
    root = tf.Module()
    root.encoder = encoder
    if head is not None:
        root.head = head
    if isinstance(intermediate_layers, tf.Module):
        # A callable module (e.g. a BYOL predictor's ``prediction`` output) brings variables
        # of its own: tracked here, they are saved with the export.
        root.extra_outputs = intermediate_layers
    root.serve = tf.function(lambda x: forward(x, False), input_signature=[spec],
                             autograph=False)
    root.train_mode = tf.function(lambda x: forward(x, True), input_signature=[spec],
                                  autograph=False)
    # The tf.functions themselves (each has its input signature), not concrete functions
    # traced here: networks built under a MirroredStrategy hold distributed variables, and
    # a concrete function traced outside the strategy that reads them cannot be saved.
    signatures = {SIGNATURE: root.serve, SERVE: root.serve, TRAIN_MODE: root.train_mode}

    card = _jsonable(dict(model_card or {}))
    card.update({
        "format": "dualssl_tf.encoder",
        "dualssl_tf_version": dualssl_tf.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "input_shape": list(input_shape),
        "outputs": {k: [None] + [int(d) for d in v.shape[1:]] for k, v in probe_out.items()},
        "endpoints": [SIGNATURE, SERVE, TRAIN_MODE],
        "exported_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    })

    parent = os.path.dirname(export_dir)
    runfiles.makedirs(parent)
    base = os.path.basename(export_dir)
    tmp = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex[:8]}")
    old = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:8]}")
    try:
        tf.saved_model.save(root, tmp, signatures=signatures)
        runfiles.write_text_atomic(os.path.join(tmp, MODEL_CARD),
                                   json.dumps(card, indent=2, sort_keys=True))
        # Linux has no portable atomic directory swap: move the old export aside, move the
        # new one in, then delete the old one. Only between the two renames is the target
        # absent (the old export then sits complete at `old`); never is it half-written.
        # On gs:// (any URL) a directory "rename" copies object by object, so there the
        # swap is not atomic (runfiles.rename_dir); the trainer's finished.json, written
        # after it, marks a complete export.
        if runfiles.exists(export_dir):
            runfiles.rename_dir(export_dir, old)
        runfiles.rename_dir(tmp, export_dir)
    except BaseException:
        _rmtree(tmp)
        if runfiles.exists(old) and not runfiles.exists(export_dir):
            runfiles.rename_dir(old, export_dir)
        raise
    _rmtree(old)
    return card


def _rmtree(path):
    """Best-effort recursive delete (a leftover temporary dir must not mask the real error)."""
    try:
        runfiles.rmtree(path)
    except tf.errors.OpError:
        pass


class ExportedEncoder:
    """A loaded export: call it like the encoder, get the output dict.

    Attributes:
      path: the SavedModel directory.
      module: the object returned by ``tf.saved_model.load``.
      input_shape: tuple, one example's shape (no batch dim).
      output_keys: sorted output names of ``serving_default``.
      model_card: dict from model_card.json ({} if absent).
    """

    def __init__(self, path, module, input_shape, output_keys, model_card):
        self.path = path
        self.module = module
        self.input_shape = input_shape
        self.output_keys = output_keys
        self.model_card = model_card

    def _function_variables(self, trainable):
        # The restored endpoints know the variables they capture; no separate list is saved
        # (a root-level list would become the variables' checkpoint path, see export).
        seen, out = set(), []
        for name in (SERVE, TRAIN_MODE):
            fn = getattr(self.module, name, None)
            for cf in (getattr(fn, "concrete_functions", None) or []):
                for v in (cf.trainable_variables if trainable else cf.variables):
                    if id(v) not in seen:
                        seen.add(id(v))
                        out.append(v)
        return out

    @property
    def variables(self):
        """All variables of the export (BatchNorm statistics included)."""
        return self._function_variables(trainable=False)

    @property
    def trainable_variables(self):
        """The variables to fine-tune (tf.Variables of the loaded SavedModel)."""
        return self._function_variables(trainable=True)

    def __call__(self, x, training=False):
        """x: [B, *input_shape] float32 -> dict of [B, ...] float32 tensors."""
        x = tf.convert_to_tensor(x, tf.float32)
        if training and hasattr(self.module, TRAIN_MODE):
            return getattr(self.module, TRAIN_MODE)(x)
        if hasattr(self.module, SERVE):
            return getattr(self.module, SERVE)(x)
        return self.module.signatures[SIGNATURE](x=x)


def load_encoder(path):
    """Loads an export and checks its contract.

    Args:
      path: a SavedModel directory written by :func:`export_encoder` (or any SavedModel whose
        ``serving_default`` takes one float32 tensor and returns ``representation``).
    Returns:
      :class:`ExportedEncoder`.
    Raises:
      ValueError: one line naming the path when it is not a SavedModel or lacks the
        ``serving_default`` signature / ``representation`` output.
    """
    path = os.fspath(path)
    if not runfiles.isdir(path):
        raise ValueError(f"{path}: no such directory; pass a SavedModel directory written by "
                         "tools/export.py")
    if not (runfiles.exists(os.path.join(path, "saved_model.pb"))
            or runfiles.exists(os.path.join(path, "saved_model.pbtxt"))):
        raise ValueError(f"{path}: not a SavedModel (no saved_model.pb); pass the directory "
                         "written by tools/export.py")
    try:
        module = tf.saved_model.load(path)
    except Exception as e:  # corrupt files: keep the message to one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot load SavedModel ({first})") from None
    sig = module.signatures.get(SIGNATURE)
    if sig is None:
        raise ValueError(f"{path}: SavedModel has no '{SIGNATURE}' signature (has: "
                         f"{', '.join(module.signatures) or 'none'}); re-export it with "
                         "tools/export.py")
    args, kwargs = sig.structured_input_signature
    specs = list(args) + list(kwargs.values())
    outputs = sig.structured_outputs
    if len(specs) != 1 or not isinstance(outputs, dict) or "representation" not in outputs:
        raise ValueError(f"{path}: '{SIGNATURE}' must take one tensor and return a dict with "
                         f"'representation'; re-export it with tools/export.py")
    spec = specs[0]
    if spec.dtype != tf.float32 or spec.shape.rank is None or spec.shape.rank < 2:
        raise ValueError(f"{path}: '{SIGNATURE}' input must be float32 [None, ...], got "
                         f"{spec.dtype.name} {spec.shape}")
    card = {}
    card_path = os.path.join(path, MODEL_CARD)
    if runfiles.exists(card_path):
        card = json.loads(runfiles.read_text(card_path))
    return ExportedEncoder(path, module, tuple(spec.shape[1:].as_list()),
                           sorted(outputs), card)
