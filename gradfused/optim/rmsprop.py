from __future__ import annotations

from .base import FusedOptimizer
from . import _validation as V


class RMSprop(FusedOptimizer):
    r"""RMSprop, fused, with torch.optim.RMSprop semantics (L2 weight decay, optional momentum and
    centering).

    .. math::
        v = \alpha v + (1-\alpha) g^2,\qquad
        \text{avg} = \sqrt{v - \bar g^2} + \epsilon\ \ (\bar g = \alpha \bar g + (1-\alpha) g,\ \text{centered})
        \ \text{or}\ \sqrt{v} + \epsilon

        d = b = \mu b + g / \text{avg}\ \ (\text{momentum } \mu > 0)\ \text{or}\ g / \text{avg},\qquad
        p \leftarrow p - \text{lr}\cdot d

    State: ``square_avg``, ``momentum_buffer`` (momentum > 0), ``grad_avg`` (centered), ``step``.
    """

    op_name = "rmsprop_"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 maximize=False, fused=None, **options):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize, fused=fused)
        super().__init__(params, defaults, options)

    def _check_hyperparameters(self, group):
        self._check_common(group)
        V.check_unit_interval(self._name, "alpha", group["alpha"])
        V.check_nonneg(self._name, "eps", group["eps"])
        V.check_nonneg(self._name, "momentum", group["momentum"])
        V.check_bool(self._name, "centered", group["centered"])
        if group["centered"] and group["state_bits"] == 8:  # docs/low-bit-states.md, "Centered RMSprop"
            raise ValueError(f"{self._name}: centered=True needs full-precision states: v - grad_avg² of two "
                             "separately rounded 8-bit states goes negative (a NaN) or to nearly 0 (a step of "
                             "g / eps); expected state_bits=32")

    def _state_specs(self, group):
        return [("square_avg", True), ("momentum_buffer", group["momentum"] > 0), ("grad_avg", group["centered"])]

    def _op_hyperparameters(self, group):
        return dict(alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
                    momentum=group["momentum"], centered=group["centered"])
