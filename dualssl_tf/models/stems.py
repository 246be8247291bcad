"""Input-side rules of the image encoders (the ResNet stems, the ViT patch size), kept free
of TensorFlow so that config validation can check ``--image_size`` against ``--stem`` and
``--patch_size`` before TensorFlow is imported."""

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


def default_patch_size(image_size):
    """ViT patch side of the CIFAR / STL / ImageNet recipes: 4 up to 32 px, 8 up to 96 px,
    else 16."""
    return 4 if image_size <= 32 else 8 if image_size <= 96 else 16


def patch_size_problem(image_size, patch_size):
    """None when the patch side ``patch_size`` (0 = :func:`default_patch_size`) divides
    ``image_size``, else what is wrong and the fix, for a one-line --patch_size error."""
    patch = patch_size or default_patch_size(image_size)
    if image_size % patch == 0:
        return None
    divisors = [d for d in range(2, min(image_size, 32) + 1) if image_size % d == 0]
    fix = (f"use a divisor of it ({', '.join(map(str, divisors[:4]))})" if divisors
           else "use another --image_size")
    return (f"{patch}{'' if patch_size else ' (the default)'} does not divide the "
            f"{image_size} px image size; {fix}")
