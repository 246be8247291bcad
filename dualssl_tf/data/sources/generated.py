"""Generated images as an :class:`ImageSource`: :mod:`dualssl_tf.data.generated_images`
(no files, no download). Raw elements are example indices; the source renders its own
views (``views``, ``local_views``: the nuisance factors re-drawn per view)."""

from dualssl_tf.data.sources.base import ImageSource


def generated_source(data, split="train"):
    """An :class:`ImageSource` over a split (``train`` | ``test``) of ``data``, a
    :class:`~dualssl_tf.data.generated_images.GeneratedImages` (no files)."""
    indices = data.indices(split)
    return ImageSource(
        name=f"generated_images/{split}",
        elements=indices.map(lambda i: (i, data.label(i))),
        decode=lambda i: data.example(i)[0],
        num_examples=data.num_examples[split],
        num_classes=data.num_classes,
        num_labelled=data.num_examples[split],
        image_shape=(data.image_size, data.image_size, 3),
        views=lambda i, seed, size: data.views(i, seed),
        local_views=data.local_views)

