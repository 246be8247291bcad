"""The kinds of image source, one module each, every one making an
:class:`~dualssl_tf.data.sources.base.ImageSource`: ``tfds`` (TensorFlow Datasets image
sets), ``folders`` (image folders, one sub-folder per class) and ``generated`` (the
generated shapes). :mod:`dualssl_tf.data.images` picks one for a ``--dataset`` value."""
