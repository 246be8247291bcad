"""The contrastive dual network: two weight-sharing towers trained on the paper's losses.

``f = normalize(head(encoder(x)))`` on both views (one encoder call on all views, so
BatchNorm sees both), distances ``r+`` to the positive and ``r-`` to H explicit negatives or
to the other 2N-2 views of the global batch (SimCLR; gathered across replicas through the
``gather_fn`` hook), and a per-anchor loss of :data:`LOSSES` (docs/theory.md section 2).
"""

import tensorflow as tf

from dualssl_tf import cross_replica, losses
from dualssl_tf.methods.base import SSLMethod
from dualssl_tf.methods.options import ALPHA_CL_FORMS, LOSS_NAMES


def loss_fn(name, temperature=0.5, margin=0.0, beta=0.0, dim=None, mean_fn=tf.reduce_mean,
            alpha_cl=None):
    """Returns ``fn(r_pos [B], r_neg [B, H]) -> [B]`` for a name in :data:`LOSSES`.

    ``ntxent`` is SimCLR's NT-Xent: InfoNCE with the ``tau`` prefactor dropped (for unit
    embeddings ``-r/tau`` and ``cos/tau`` differ by a constant, so the value equals SimCLR's).
    ``mean_fn`` is the batch mean of ``nce_batch`` (the one loss that is not a sum of
    per-anchor terms); ``dim`` is the embedding width it divides by. ``alpha_cl``: the
    keyword arguments of :func:`losses.alpha_cl_loss` (form, exponent, eps, ...; default:
    the official code's defaults).
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; expected one of {', '.join(LOSS_NAMES)}.")
    if name == "nce_batch" and dim is None:
        raise ValueError("nce_batch needs the embedding width `dim`.")
    if name == "alpha_cl":
        return lambda rp, rn: losses.alpha_cl_loss(rp, rn, temperature, **(alpha_cl or {}))
    return LOSSES[name](temperature, margin, beta, dim, mean_fn)


# --loss name -> (temperature, margin, beta, dim, mean_fn) -> per-anchor loss (alpha_cl's
# own options are passed by loss_fn).
LOSSES = {
    "simp": lambda t, m, b, d, mean: losses.simple_loss,
    "tri": lambda t, m, b, d, mean: lambda rp, rn: losses.soft_triplet_loss(rp, rn, t, m),
    "nce": lambda t, m, b, d, mean: lambda rp, rn: losses.info_nce_loss(rp, rn, t, b),
    "ntxent": lambda t, m, b, d, mean: lambda rp, rn: losses.info_nce_loss(rp, rn, t, b) / t,
    "cov": lambda t, m, b, d, mean: lambda rp, rn: losses.exact_cov_loss(rp, rn, t, b),
    "nce_batch": lambda t, m, b, d, mean: lambda rp, rn: losses.batch_mean_nce_loss(
        rp, rn, t, d, mean),
    "alpha_cl": lambda t, m, b, d, mean: lambda rp, rn: losses.alpha_cl_loss(rp, rn, t),
}
assert tuple(LOSSES) == LOSS_NAMES  # --loss help and validation use LOSS_NAMES
assert losses.ALPHA_CL_FORMS == ALPHA_CL_FORMS  # --alpha_cl_form's validation (TF-free)


def local_candidates(z1, z2):
    """Default negatives hook: the local batch is the global batch.

    Returns ``(z1_all [G, D], z2_all [G, D], offset)`` for :func:`losses.in_batch_distances`.
    """
    return z1, z2, 0


class ContrastiveMethod(SSLMethod):
    """SimCLR-style dual network: ``f = normalize(head(encoder(x)))`` on both views.

    ``fit`` reports ``loss``, ``r_pos``, ``r_neg`` (mean distances), ``contrastive_acc``
    (fraction of anchors whose positive is strictly nearer than every negative; two
    identical embeddings tie and do not count) and ``pos_cos`` (mean cosine of the two
    views' embeddings, as every method reports it), plus ``probe_loss``/``probe_acc`` with
    a probe.

    Batches are dicts: ``view1``, ``view2`` [B, ...]; ``negatives`` (optional) [B, H, ...]
    explicit negatives, without which the other 2B-2 views of the (global) batch are the
    negatives; ``label`` (optional) [B] int for the online probe (-1 = unlabelled).

    Args:
      encoder: Keras model ``x [B, ...] -> representation [B, R]``.
      head: optional projection head ``[B, R] -> [B, D]``; identity when None.
      loss: a name in :data:`LOSSES`.
      temperature, margin, beta: loss hyper-parameters (see :mod:`dualssl_tf.losses`).
      alpha_cl: ``--loss=alpha_cl``'s keyword arguments of :func:`losses.alpha_cl_loss`
        (None: its defaults).
      normalize: divide the embedding by ``||f|| + norm_eps`` before the loss.
      gather_fn: ``(z1, z2) -> (z1_all, z2_all, offset)``; the hook through which
        negatives are gathered across replicas (:func:`cross_replica.cross_replica_candidates`).
      probe: optional classifier on ``stop_gradient(representation)`` of view 1.

    Example:
      >>> model = ContrastiveMethod(encoder, head, loss="ntxent", temperature=0.5)
      >>> model.compile(optimizer="adam")
      >>> model.fit(dataset_of_view_dicts, epochs=1)
    """

    metric_names = ("loss", "r_pos", "r_neg", "contrastive_acc", "pos_cos")
    uses_negatives = True

    def __init__(self, encoder, head=None, loss="ntxent", temperature=0.5, margin=0.0,
                 beta=0.0, normalize=True, norm_eps=1e-4, gather_fn=None, probe=None,
                 alpha_cl=None, **kwargs):
        super().__init__(**kwargs)
        # Assignment order = variable order (encoder, head, probe) of the checkpoints.
        self.encoder = encoder
        self.head = head
        self.loss_name = loss
        self.temperature = float(temperature)
        self.margin = float(margin)
        self.beta = float(beta)
        self.alpha_cl = dict(alpha_cl or {})
        self.normalize = normalize
        self.norm_eps = norm_eps
        self.gather_fn = gather_fn or local_candidates
        self._loss_fn = None
        self.attach_probe(probe)

    @classmethod
    def from_options(cls, cfg, task, gather_fn=None):
        """The method of a run: ``cfg.contrastive`` options on ``task``'s networks."""
        opts = cfg.contrastive
        return cls(task.encoder, task.head, loss=opts.loss, temperature=opts.temperature,
                   margin=max(opts.margin, 0.0),  # -1 = not given; only tri uses it
                   beta=opts.beta, norm_eps=task.norm_eps,
                   gather_fn=None if opts.local_negatives else gather_fn,
                   probe=task.probe, alpha_cl=opts.alpha_cl(), name="dual")

    def embed(self, x, training=False, return_representation=False):
        """``f = normalize(head(encoder(x)))`` [B, D] (what ``model(x)`` returns), float32
        whatever the compute dtype (under mixed precision the networks run in
        bfloat16/float16; the normalisation and everything after it, the losses included,
        in float32). With ``return_representation`` also ``h = encoder(x)`` [B, R] in the
        compute dtype."""
        h = self.encoder(x, training=training)
        p = self.head(h, training=training) if self.head is not None else h
        p = tf.cast(p, tf.float32) if p.dtype in (tf.bfloat16, tf.float16) else p
        if self.normalize:
            p = p / (tf.norm(p, axis=-1, keepdims=True) + self.norm_eps)
        return (p, h) if return_representation else p

    def _get_loss_fn(self, dim):
        if self._loss_fn is None:
            # Batch means (nce_batch) are global-batch means when running on replicas.
            self._loss_fn = loss_fn(self.loss_name, self.temperature, self.margin, self.beta,
                                    dim=dim, mean_fn=cross_replica.cross_replica_mean,
                                    alpha_cl=self.alpha_cl)
        return self._loss_fn

    def forward(self, batch, training):
        """Embeds every view of the batch in one call.

        Returns dict: ``z1``, ``z2`` [B, D] (and ``zn`` [B, H, D] with explicit
        negatives) normalised embeddings, ``h1`` [B, R] the representation of view 1.
        """
        x1, x2 = batch["view1"], batch["view2"]
        b = tf.shape(x1)[0]
        negs = batch.get("negatives")
        parts = [x1, x2]
        if negs is not None:
            neg_shape = tf.shape(negs)
            parts.append(tf.reshape(negs, tf.concat([[-1], neg_shape[2:]], axis=0)))
        z, h = self.embed(tf.concat(parts, axis=0), training=training,
                          return_representation=True)
        out = {"z1": z[:b], "z2": z[b:2 * b], "h1": h[:b]}
        if negs is not None:
            out["zn"] = tf.reshape(z[2 * b:], [b, neg_shape[1], *z.shape[1:]])
        return out

    def distances(self, outputs):
        """``(r_pos [A], r_neg [A, H])``: A = B (explicit negatives) or 2B (in-batch)."""
        if "zn" in outputs:
            return losses.explicit_distances(outputs["z1"], outputs["z2"], outputs["zn"])
        z1_all, z2_all, offset = self.gather_fn(outputs["z1"], outputs["z2"])
        return losses.in_batch_distances(outputs["z1"], outputs["z2"], z1_all, z2_all, offset)

    def per_example_loss(self, batch, outputs):
        """Per-anchor loss [A] and logs. An encoder with an experiment axis (embeddings
        [B, S, D]: S independent experiments side by side, e.g. HLTM seeds) gets each
        experiment's own loss (batch means of ``nce_batch`` included), summed over S, so
        the gradient of experiment s's weights is that of its loss alone; logs are means
        over S."""
        if outputs["z1"].shape.rank == 3:
            parts = [self._one_loss({k: (v[:, :, s] if k == "zn" else v[:, s])
                                     for k, v in outputs.items() if k != "h1"})
                     for s in range(outputs["z1"].shape[1])]
            logs = {k: tf.add_n([p[1][k] for p in parts]) / len(parts) for k in parts[0][1]}
            return tf.add_n([p[0] for p in parts]), logs
        return self._one_loss(outputs)

    def _one_loss(self, outputs):
        r_pos, r_neg = self.distances(outputs)
        per_anchor = self._get_loss_fn(outputs["z1"].shape[-1])(r_pos, r_neg)
        logs = {"r_pos": tf.reduce_mean(r_pos), "r_neg": tf.reduce_mean(r_neg),
                "contrastive_acc": tf.reduce_mean(tf.cast(
                    r_pos < tf.reduce_min(r_neg, axis=1), tf.float32)),
                "pos_cos": losses.mean_cosine(outputs["z1"], outputs["z2"])}
        return per_anchor, logs
