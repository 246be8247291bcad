"""Projection head and linear probe that sit on an encoder's representation."""

import keras


def projection_head(input_dim, hidden_dim=512, out_dim=128, num_layers=2, sync_bn=False,
                    name="projection_head", batch_norm=True):
    """SimCLR projection MLP ``[B, input_dim] -> [B, out_dim]``.

    ``num_layers - 1`` blocks of Dense(hidden_dim)-BN-ReLU, then Dense(out_dim); the
    paper's head (docs/theory.md section 6) is ``projection_head(512, 512, 128, 2)``, i.e.
    Linear(512,512)-BN-ReLU-Linear(512,128). Hidden Dense layers have no bias because the
    BatchNorm after them has its own shift.

    Args:
      input_dim: R, the representation size.
      hidden_dim: width of the hidden layers.
      out_dim: D, the projection size.
      num_layers: number of Dense layers; 0 means no head (returns None = identity).
      sync_bn: cross-replica BatchNorm.
      name: model name.
      batch_norm: False drops the BatchNorm: blocks of Dense(hidden_dim, bias)-ReLU.
    Returns:
      keras.Model (functional) or None when ``num_layers == 0``.

    Example:
      >>> head = projection_head(512, 512, 128)
      >>> head(tf.zeros([4, 512])).shape
      TensorShape([4, 128])
    """
    if num_layers < 0:
        raise ValueError(f"num_layers={num_layers}: must be >= 0")
    if num_layers == 0:
        return None
    inputs = keras.Input([input_dim], name="representation")
    x = inputs
    for i in range(num_layers - 1):
        x = keras.layers.Dense(hidden_dim, use_bias=not batch_norm, name=f"dense{i + 1}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                                synchronized=sync_bn, name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
    x = keras.layers.Dense(out_dim, name=f"dense{num_layers}")(x)
    return keras.Model(inputs, x, name=name)


@keras.saving.register_keras_serializable(package="dualssl_tf")
class LinearProbe(keras.layers.Layer):
    """Linear classifier on (optionally standardised) features: ``[B, R] -> logits [B, K]``.

    With ``standardize`` the features first pass a BatchNorm without scale and shift, i.e.
    are standardised per dimension with running statistics (docs/theory.md section 6's linear
    evaluation standardises features); the classifier is then a plain Dense layer. Used as
    ContrastiveMethod's online probe on ``stop_gradient(representation)``.

    Args:
      num_classes: K.
      standardize: standardise the features before the Dense layer.
      synchronized: the standardising BatchNorm takes its batch statistics over all
        replicas (as the encoder's ``sync_bn``), so the probe's update and its logged loss
        on R replicas are one device's on the global batch.

    Example:
      >>> probe = LinearProbe(10)
      >>> probe(tf.zeros([4, 512])).shape
      TensorShape([4, 10])
    """

    def __init__(self, num_classes, standardize=True, synchronized=False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.standardize = bool(standardize)
        self.synchronized = bool(synchronized)
        self.norm = (keras.layers.BatchNormalization(center=False, scale=False, momentum=0.9,
                                                     epsilon=1e-5, synchronized=self.synchronized,
                                                     name="standardize")
                     if self.standardize else None)
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier")

    def build(self, input_shape):
        if self.norm is not None:
            self.norm.build(input_shape)
        self.classifier.build(input_shape)

    def call(self, features, training=False):
        x = features
        if self.norm is not None:
            x = self.norm(x, training=training)
        return self.classifier(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "standardize": self.standardize, "synchronized": self.synchronized}
