"""Stem rules of the ResNet encoders, kept free of TensorFlow so that config validation
can check ``--image_size`` against ``--stem`` before TensorFlow is imported."""

STEMS = ("cifar", "imagenet", "auto")
# Smallest input side for each stem: the last stage must keep at least a 1x1 map with
# real content (total downsampling 8x for cifar, 32x for imagenet).
MIN_IMAGE_SIZE = {"cifar": 8, "imagenet": 64}
# Image side from which "auto" picks the ImageNet stem.
AUTO_IMAGENET_FROM = 96


def resolve_stem(stem, image_size):
    """``"auto"`` -> ``"imagenet"`` (image_size >= 96) or ``"cifar"``; others unchanged."""
    if stem not in STEMS:
        raise ValueError(f"stem={stem!r}: allowed {', '.join(STEMS)}")
    if stem == "auto":
        return "imagenet" if image_size >= AUTO_IMAGENET_FROM else "cifar"
    return stem
