"""BatchNormalization that runs as one fused TensorFlow kernel on image feature maps.

Keras 3's ``BatchNormalization`` computes the batch moments and the normalisation as
separate element-wise ops (mean, squared difference, mean, rsqrt, mul, add ...), and their
gradients as a dozen more. On a CPU each of those ops is one more pass over a
[B, H, W, C] activation: in a ResNet-18 SimCLR step at 32 px they cost about 10% of the
step. ``FusedBatchNormV3`` (and its gradient op) does the same work in one pass each way and
has oneDNN kernels on CPU and cuDNN kernels on GPU (see benchmarks/resnet_step.py).

:class:`FusedBatchNormalization` is a drop-in subclass: same arguments, same variables
(``gamma``, ``beta``, ``moving_mean``, ``moving_variance``), same moving-average rule
(``moving = momentum * moving + (1 - momentum) * batch`` with the biased batch variance,
as Keras), same ``get_config``. It takes the fused path for float32, bfloat16 and float16
NHWC inputs of rank 4 normalised over the last axis, without mask or renorm, and (when
``synchronized``) only when there is a single replica; anything else goes through Keras'
own ``call``.

Mixed precision (``--mixed_precision=bfloat16|float16``): the op takes the half-precision
activation with the float32 ``gamma``/``beta`` and computes the batch moments in float32
(cuDNN, oneDNN and XLA alike), returning float32 moments and a half-precision output, as
Keras' layer does (it casts the activation to float32, normalises and casts back); the
moving statistics stay float32.
"""

import keras
import tensorflow as tf


# Activation dtypes of FusedBatchNormV3 (scale, offset and moments are float32 for all).
_FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)


@keras.saving.register_keras_serializable(package="dualssl_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by ``tf.raw_ops.FusedBatchNormV3``.

    Input and output: ``[B, H, W, C]`` float32, bfloat16 or float16 (any other input falls
    back to the Keras implementation, with identical results up to float rounding).

    Args:
      All of ``keras.layers.BatchNormalization``'s (``axis``, ``momentum``, ``epsilon``,
      ``center``, ``scale``, initializers, ``synchronized`` ...), with the same meaning.

    Example:
      >>> bn = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
      >>> y = bn(tf.random.normal([8, 4, 4, 16]), training=True)   # [8, 4, 4, 16]
    """

    def _fusable(self, inputs, mask):
        if mask is not None or self.renorm or keras.backend.backend() != "tensorflow":
            return False
        if len(inputs.shape) != 4 or self.axis not in (-1, 3) or inputs.dtype not in _FUSED_DTYPES:
            return False
        if self.synchronized:
            # Cross-replica statistics need Keras' all-reduced moments.
            return tf.distribute.get_strategy().num_replicas_in_sync == 1
        return True

    def call(self, inputs, training=None, mask=None):
        inputs = tf.convert_to_tensor(inputs)
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels], tf.float32)
        beta = self.beta if self.center else tf.zeros([channels], tf.float32)
        # float32 whatever the activation's dtype (the variables are never autocast).
        gamma, beta = tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32)
        if training and self.trainable:
            empty = tf.constant([], tf.float32)
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=gamma, offset=beta, mean=empty, variance=empty,
                epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
                is_training=True)
            # The op returns the unbiased (n / (n - 1)) batch variance; Keras (and this
            # layer) average the biased one, the one that normalised the batch.
            n = tf.cast(tf.size(inputs) // channels, tf.float32)
            variance = variance * ((n - 1.0) / tf.maximum(n, 1.0))
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
            return y
        y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=gamma, offset=beta,
            mean=tf.convert_to_tensor(self.moving_mean),
            variance=tf.convert_to_tensor(self.moving_variance),
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
            is_training=False)
        return y
