"""Export of a trained encoder as a TF SavedModel (minimal; extended by the export issue)."""

import os
import shutil

import tensorflow as tf


def export_encoder(encoder, head, export_dir, input_shape):
    """Writes a SavedModel whose ``serving_default`` maps x [None, *input_shape] float32 to
    ``{"representation": [None, R], "projection": [None, D]}``, atomically (temp dir, rename).
    """
    module = tf.Module()
    module.encoder = encoder
    module.head = head

    @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.float32)])
    def serve(x):
        h = encoder(x, training=False)
        p = head(h, training=False) if head is not None else h
        return {"representation": h, "projection": p}

    tmp = export_dir.rstrip("/") + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(module, tmp, signatures={"serving_default": serve})
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    tf.io.gfile.rename(tmp, export_dir)
    return export_dir
