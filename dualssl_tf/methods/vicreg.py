"""VICReg (Bardes et al. 2022): variance-invariance-covariance regularisation of the two
views' projections, each term over the global batch.

``loss = sim * MSE(z1, z2) + std * (v(z1) + v(z2)) / 2 + cov * (c(z1) + c(z2))``
(:func:`dualssl_tf.decorrelation_losses.vicreg_loss`; which reference code it follows is
said there). Networks and projector: :mod:`dualssl_tf.methods.twin`.
"""

from dualssl_tf import decorrelation_losses
from dualssl_tf.methods.twin import TwinMethod


class VICRegMethod(TwinMethod):
    """VICReg on an encoder and its projector.

    ``fit`` reports ``loss``, ``invariance`` (mean squared error of the views),
    ``variance`` (the hinge on the standard deviations, mean of both views), ``covariance``
    (squared off-diagonal covariances / D, both views), all unweighted, ``pos_cos``, plus
    ``probe_loss``/``probe_acc`` with a probe; all of the global batch.

    Args:
      encoder, head, probe: :class:`~dualssl_tf.methods.twin.TwinMethod`.
      sim_coeff, std_coeff, cov_coeff: the terms' weights (the paper: 25, 25, 1).

    Example:
      >>> head = dt.projection_head(512, 2048, 2048, num_layers=3)
      >>> model = dt.VICRegMethod(encoder, head)
      >>> model.compile(optimizer="adam")
      >>> model.fit(dataset_of_view_dicts, epochs=1, steps_per_epoch=100)
    """

    section = "vicreg"
    metric_names = ("loss", "invariance", "variance", "covariance", "pos_cos")

    def __init__(self, encoder, head=None, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0,
                 probe=None, **kwargs):
        super().__init__(encoder, head, probe=probe, **kwargs)
        self.coeffs = (float(sim_coeff), float(std_coeff), float(cov_coeff))

    @staticmethod
    def method_options(o):
        return {"sim_coeff": o.sim_coeff, "std_coeff": o.std_coeff, "cov_coeff": o.cov_coeff}

    def batch_loss(self, batch, outputs):
        loss, invariance, variance, covariance = decorrelation_losses.vicreg_loss(
            outputs["z1"], outputs["z2"], *self.coeffs, sum_fn=self.sum_fn)
        return loss, {"invariance": invariance, "variance": variance,
                      "covariance": covariance, **self.pair_logs(outputs)}
