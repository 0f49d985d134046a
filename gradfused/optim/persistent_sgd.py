from __future__ import annotations

from .base import FusedOptimizer
from . import _validation as V


class PersistentSGD(FusedOptimizer):
    r"""SGD whose gradients are never fully cleared: a decaying buffer retains them (GradRetentionNet).

    .. math::
        b_t = \text{decay}\cdot b_{t-1} + (1-\text{dampening})\, g_t,\qquad
        d_t = g_t + \text{decay}\cdot b_t \ \text{(nesterov)}\ \text{or}\ b_t,\qquad
        p_t = p_{t-1} - \text{lr}\cdot d_t

    with the gradient first unscaled (AMP), negated (``maximize``) and, for L2 weight decay, given
    ``weight_decay * p``; decoupled weight decay multiplies ``p`` by ``1 - lr * weight_decay`` instead.
    The buffer starts at zero. With ``dampening=0`` this is ``torch.optim.SGD(momentum=decay)``;
    ``decay=0`` is plain SGD. ``decay`` is a param-group value and can be scheduled like ``lr``.

    State: ``momentum_buffer``, ``step``.
    """

    op_name = "persistent_sgd_"

    def __init__(self, params, lr=1e-2, decay=0.99, dampening=0.0, nesterov=False, weight_decay=0.0,
                 decoupled_weight_decay=False, *, maximize=False, fused=None, **options):
        defaults = dict(lr=lr, decay=decay, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, fused=fused)
        super().__init__(params, defaults, options)

    def _check_hyperparameters(self, group):
        self._check_common(group)
        V.check_nonneg(self._name, "decay", group["decay"])
        V.check_unit_interval(self._name, "dampening", group["dampening"], closed=True)
        V.check_bool(self._name, "nesterov", group["nesterov"])
        V.check_bool(self._name, "decoupled_weight_decay", group["decoupled_weight_decay"])
        if group["nesterov"] and (group["decay"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{self._name}: nesterov=True requires decay > 0 and dampening = 0")

    def _upgrade_group(self, group):
        if "decay" not in group and "momentum" in group:  # a torch.optim.SGD checkpoint
            group["decay"] = group["momentum"]

    def _state_specs(self, group):
        return [("momentum_buffer", True)]

    def _op_hyperparameters(self, group):
        return dict(decay=group["decay"], dampening=group["dampening"], weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"], nesterov=group["nesterov"])
