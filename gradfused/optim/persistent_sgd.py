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
    The buffer starts at zero, where torch's SGD (and :class:`gradfused.SGD`) sets it to the first gradient:
    with ``dampening=0`` the two are the same, ``torch.optim.SGD(momentum=decay)``. ``decay=0`` is plain
    SGD. ``decay`` lies in [0, 1] (beyond 1 the buffer grows without bound) and is a param-group value that
    can be scheduled like ``lr``. Its state_dict also carries ``momentum`` (= decay) in every group, so that
    ``torch.optim.SGD`` loads it and continues with the same numbers as long as ``decoupled_weight_decay``
    is off (torch's SGD has no decoupled decay).

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
        V.check_unit_interval(self._name, "decay", group["decay"], closed=True)
        V.check_unit_interval(self._name, "dampening", group["dampening"], closed=True)
        V.check_bool(self._name, "nesterov", group["nesterov"])
        V.check_bool(self._name, "decoupled_weight_decay", group["decoupled_weight_decay"])
        if group["nesterov"] and (group["decay"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{self._name}: nesterov=True requires decay > 0 and dampening = 0")

    def _upgrade_group(self, group):
        momentum = group.pop("momentum", None)  # torch.optim.SGD's name (in its checkpoints and in ours)
        if "decay" not in group and momentum is not None:
            group["decay"] = momentum

    def state_dict(self):
        state = super().state_dict()
        for group in state["param_groups"]:  # what torch.optim.SGD reads
            group["momentum"] = group["decay"]
        return state

    def _state_specs(self, group):
        return [("momentum_buffer", True)]

    def _op_hyperparameters(self, group):
        return dict(decay=group["decay"], dampening=group["dampening"], weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"], nesterov=group["nesterov"])
