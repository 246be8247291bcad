"""Training pairs written to TensorBoard as images."""

import keras
import tensorflow as tf


class ViewSummary(keras.callbacks.Callback):
    """Writes a few training pairs to TensorBoard as images when training starts at step 0.

    Args:
      log_dir: TensorBoard directory (e.g. ``model_dir/logs/views``).
      data: the training tf.data of batch dicts with ``view1``, ``view2`` [B, H, W, 3] in
        [0, 1]; one batch is drawn when training starts (a fresh iterator, so training's
        own stream is untouched).
      max_pairs: pairs shown; each image is view 1 and view 2 side by side.
      views: for data of un-augmented ``image`` batches (--augment_on=device), the
        ``(images, step, replica_id) -> (view1, view2)`` the train step uses; the pairs
        shown are those of step 0 on replica 0.
    """

    def __init__(self, log_dir, data, max_pairs=8, views=None):
        super().__init__()
        self.log_dir = log_dir
        self.data = data
        self.max_pairs = max_pairs
        self.views = views

    def pairs(self):
        """[n, H, 2W, 3]: view 1 | view 2 of the first n pairs of one batch."""
        batch = next(iter(self.data.take(1)))
        if "view1" not in batch and self.views is not None:
            batch["view1"], batch["view2"] = self.views(
                batch["image"], tf.constant(0, tf.int64), 0)[:2]
        n = min(self.max_pairs, int(batch["view1"].shape[0]))
        return tf.concat([batch["view1"][:n], batch["view2"][:n]], axis=2)

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and int(keras.ops.convert_to_numpy(optimizer.iterations)):
            return  # a resumed run: the first run's step-0 images are kept (no duplicate)
        pairs = self.pairs()
        writer = tf.summary.create_file_writer(self.log_dir)
        with writer.as_default():
            tf.summary.image("augmented_pairs", pairs, step=0, max_outputs=int(pairs.shape[0]))
        writer.flush()
        writer.close()
