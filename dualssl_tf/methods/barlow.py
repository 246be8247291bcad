"""Barlow Twins (Zbontar et al. 2021): the two views' projections, standardised per
dimension over the global batch, should have the identity as cross-correlation.

``loss = scale * (sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2)``,
``C = n1^T n2 / N`` (:func:`dualssl_tf.decorrelation_losses.barlow_twins_loss`; which
reference code it follows is said there). Networks and projector:
:mod:`dualssl_tf.methods.twin`.
"""

from dualssl_tf import decorrelation_losses
from dualssl_tf.methods.twin import TwinMethod


class BarlowTwinsMethod(TwinMethod):
    """Barlow Twins on an encoder and its projector.

    ``fit`` reports ``loss``, ``on_diag`` (``sum_i (1 - C_ii)^2``), ``off_diag``
    (``sum_{i != j} C_ij^2``, unweighted), ``pos_cos``, plus ``probe_loss``/``probe_acc``
    with a probe; all of the global batch.

    Args:
      encoder, head, probe: :class:`~dualssl_tf.methods.twin.TwinMethod`.
      lambd: weight of the off-diagonal term (the paper: 0.0051).
      scale_loss: factor of the whole loss (the paper: 1; solo-learn's CIFAR recipe: 0.1).

    Example:
      >>> head = dt.projection_head(512, 2048, 2048, num_layers=3)
      >>> model = dt.BarlowTwinsMethod(encoder, head)
      >>> model.compile(optimizer="adam")
      >>> model.fit(dataset_of_view_dicts, epochs=1, steps_per_epoch=100)
    """

    section = "barlow"
    metric_names = ("loss", "on_diag", "off_diag", "pos_cos")

    def __init__(self, encoder, head=None, lambd=0.0051, scale_loss=1.0, probe=None,
                 **kwargs):
        super().__init__(encoder, head, probe=probe, **kwargs)
        self.lambd, self.scale_loss = float(lambd), float(scale_loss)

    @staticmethod
    def method_options(o):
        return {"lambd": o.lambd, "scale_loss": o.scale_loss}

    def batch_loss(self, batch, outputs):
        loss, on_diag, off_diag = decorrelation_losses.barlow_twins_loss(
            outputs["z1"], outputs["z2"], self.lambd, self.scale_loss, sum_fn=self.sum_fn)
        return loss, {"on_diag": on_diag, "off_diag": off_diag, **self.pair_logs(outputs)}
