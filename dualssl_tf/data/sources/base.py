"""The record every kind of image source makes: :class:`ImageSource`, a finite collection
of cheap *raw* elements plus a decoder (tfds: encoded bytes; folders: file names;
generated: example indices), and the conversion of decoded images to RGB floats."""

import dataclasses
from typing import Any, Callable, Optional

import tensorflow as tf

from dualssl_tf.data import augment

UNLABELLED = -1


@dataclasses.dataclass
class ImageSource:
    """A finite image collection.

    elements: finite tf.data of ``(raw, label int32)``; raw is cheap to read and shuffle
      (encoded bytes, a file path or an example index); label -1 = unlabelled.
    decode: ``raw -> image [H, W, 3] float32 in [0, 1]`` (the un-augmented image).
    num_examples: number of elements.
    num_classes: K (labels in [0, K)); 0 when the source has no labels.
    image_shape: (H, W, 3) when every image has it, else None.
    views: optional ``(raw, seed [2], size) -> (view1, view2)`` replacing
      decode + SimCLR augmentation (the generated images re-render their nuisance factors).
    local_views: with ``views``, optional ``(raw, seed [2], num, size, area_range) ->
      [num, size, size, 3]``: the source's own local crops (multi-crop).
    skipped: files left out because they could not be decoded.
    for_pipeline: optional ``input_context -> ImageSource``, this source's share for one
      input pipeline when the source can do better than element sharding (tfds: by
      file); see :func:`dualssl_tf.data.pipeline.pipeline_source`.
    share: ``(input_pipeline_id, num_input_pipelines)`` when this is one pipeline's share
      of a larger source, else None.
    num_labelled: elements with a label >= 0 when known without a pass (progress bars
      of evaluation passes show their total from it), else None.
    holdout: on a folder's held-out part (:func:`.folders.folder_holdout_sources`), the
      record of which files were set aside; else None.
    labelled_classes: how many classes have a labelled element, when known without a
      pass (folders), else None.
    """
    name: str
    elements: Any
    decode: Callable
    num_examples: int
    num_classes: int
    image_shape: Optional[tuple] = None
    views: Optional[Callable] = None
    local_views: Optional[Callable] = None
    skipped: int = 0
    for_pipeline: Optional[Callable] = None
    share: Optional[tuple] = None
    num_labelled: Optional[int] = None
    holdout: Optional[dict] = None
    labelled_classes: Optional[int] = None


def to_rgb(image):
    """uint8/float [H, W, C] with C in {1, 3, 4} -> float32 [H, W, 3] in [0, 1]."""
    image = augment.to_float(image)
    channels = image.shape[-1]
    if channels == 1:
        image = tf.tile(image, [1, 1, 3])
    elif channels == 4:
        image = image[..., :3]
    return image

