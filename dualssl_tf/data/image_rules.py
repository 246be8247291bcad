"""What image data allows, in one place and TensorFlow-free, so that config validation
applies the same rules before TensorFlow is imported (as :mod:`dualssl_tf.models.stems`
does for the stems): the file extensions of an image folder, and no device views for data
that renders its own."""

# Image files of --dataset=folder (case-insensitive): what TensorFlow's decode_image reads.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def is_image_file(name):
    """True for a file name with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def device_views_problem(augment_on, own_views, what):
    """What is wrong with ``augment_on="device"`` on data that renders its own views on
    the host (``own_views``; ``what`` names the data, e.g. ``--dataset=generated_images``),
    else None: device views crop a batch of images, and such data has none to crop. The
    caller raises it against its own name of the setting (the tasks: --augment_on)."""
    if augment_on == "device" and own_views:
        return (f"device needs images to crop; {what} renders each view itself on the "
                "host: use --augment_on=host or auto")
    return None
