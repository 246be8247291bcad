"""Momentum (moving-average) copies of the online networks, shared by BYOL, MoCo v2/v3.

A momentum network is a copy of an online network (the encoder, the projector) that takes
no gradient and moves after every optimizer step by ``target <- tau target + (1 - tau)
online``, with tau rising from a base to a final momentum by a cosine over the run
(:func:`target_momentum`; BYOL's schedule, solo-learn's for every momentum method; a
constant momentum is ``base == final``). :class:`MomentumTargets` is the mixin of an
:class:`~dualssl_tf.methods.base.SSLMethod` that owns such copies: it lists the
(target, online) variable pairs, leaves the targets out of the optimizer
(``frozen_variables``) and applies the average (:meth:`MomentumTargets.update_targets`,
called from the method's ``after_apply``).

Under a distribution strategy the average runs on every replica from identical
(synchronised) online weights, so the replicas' targets stay identical without
communication. The copies are attributes of the method (assigned where the method says),
so their variables are in ``model.variables``, hence in checkpoints.
"""

import math

import keras
import tensorflow as tf

from dualssl_tf.models import vit


def target_momentum(step, total_steps, base=0.996, final=1.0):
    """BYOL's momentum at (0-based) ``step`` of ``total_steps``: a cosine from ``base`` to
    ``final``, ``final - (final - base) (cos(pi k / K) + 1) / 2`` with ``k = min(step, K)``.

    BYOL (Grill et al. 2020, section 3.2): ``tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2``
    is the case ``final = 1``. Returns a float32 scalar tensor (python numbers accepted).
    """
    k = tf.minimum(tf.cast(step, tf.float32), float(total_steps))
    ratio = k / float(max(total_steps, 1))
    return final - (final - base) * (tf.cos(math.pi * ratio) + 1.0) / 2.0


def clone_network(model, input_shape=None):
    """A copy of ``model`` (same architecture and weight values, its own variables).

    ``keras.models.clone_model`` rebuilds functional and Sequential models layer by layer
    and a subclassed model from its ``get_config`` (the HLTM :class:`TreeNet`); the copy is
    built on ``input_shape`` if it is not already, then takes the source's values.
    A ViT's copy takes any image side as the ViT does (:func:`dualssl_tf.models.vit.any_side`).
    ValueError when the copy's variables do not match the source's one by one.
    """
    copy = keras.models.clone_model(model)
    if vit.is_vit(model):
        vit.any_side(copy)
    if not copy.built:
        if input_shape is None:
            raise ValueError(f"clone_network: {model.name} copy is unbuilt; pass input_shape")
        copy(tf.zeros([1, *input_shape]), training=False)
    src, dst = model.variables, copy.variables
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) or a.trainable != b.trainable
                                   for a, b in zip(src, dst)):
        raise ValueError(f"clone_network: the copy of {model.name} does not have the same "
                         "variables")
    for a, b in zip(src, dst):
        b.assign(a)
    return copy


def momentum_copies(encoder, head, input_shape, rep_shape):
    """``(encoder copy, head copy or None)``: the momentum networks of an encoder
    ``[B, *input_shape] -> [B, *rep_shape]`` and its optional projector."""
    return (clone_network(encoder, input_shape),
            clone_network(head, rep_shape) if head is not None else None)


class MomentumTargets:
    """Mixin of an ``SSLMethod`` with momentum copies (see the module docstring).

    The method sets ``base_momentum``, ``final_momentum``, ``total_steps`` (optimizer
    steps of the run) and defines :meth:`momentum_networks`; its ``after_apply`` calls
    :meth:`update_targets`.
    """

    base_momentum = 0.996
    final_momentum = 1.0
    total_steps = 1

    def momentum_networks(self):
        """[(target network or None, online network)]: what moves by the average (a None
        target, e.g. no projector, is skipped)."""
        return []

    def online_pairs(self):
        """[(target variable, online variable)] moved by the moving average."""
        pairs = []
        for target, online in self.momentum_networks():
            if target is not None:
                pairs += list(zip(target.trainable_variables, online.trainable_variables))
        return pairs

    def frozen_variables(self):
        return [t for t, _ in self.online_pairs()]

    def momentum(self, step):
        """The target momentum used after the optimizer step ``step`` (0-based)."""
        return target_momentum(step, self.total_steps, self.base_momentum, self.final_momentum)

    def update_targets(self, step):
        """``target <- tau target + (1 - tau) online`` for every pair, tau =
        :meth:`momentum` (step)."""
        pairs = self.online_pairs()
        if pairs:
            tau = self.momentum(step)
            for target, online in pairs:
                t = tf.convert_to_tensor(target)
                target.assign(tau * t + (1.0 - tau) * tf.convert_to_tensor(online))
