from __future__ import annotations

from . import _randomness as R
from . import _validation as V
from .base import FusedOptimizer


class SGD(FusedOptimizer):
    r"""torch.optim.SGD, fused: the same arguments, defaults, state and numbers.

    .. math::
        b_1 = g_1,\qquad b_t = \mu\, b_{t-1} + (1-\text{dampening})\, g_t,\qquad
        d_t = g_t + \mu\, b_t \ \text{(nesterov)}\ \text{or}\ b_t,\qquad
        p_t = p_{t-1} - \text{lr}\cdot d_t

    with the gradient first unscaled (AMP), negated (``maximize``) and given ``weight_decay * p``. With
    ``momentum=0``, d = g and no buffer is kept. It runs on the kernels of :class:`PersistentSGD` (whose
    buffer starts at zero instead); the two agree whenever ``dampening=0``.

    State: ``momentum_buffer`` (when momentum > 0) and ``step`` (which torch's SGD does not keep; it keys
    the random pipeline options). With ``momentum=0`` there is no state at all, unless a random option, master weights or stochastic
    rounding needs it.
    """

    op_name = "persistent_sgd_"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, fused=None, **options):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize, fused=fused)
        super().__init__(params, defaults, options)

    def _check_hyperparameters(self, group):
        self._check_common(group)
        V.check_nonneg(self._name, "momentum", group["momentum"])
        V.check_unit_interval(self._name, "dampening", group["dampening"], closed=True)
        V.check_bool(self._name, "nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{self._name}: Nesterov momentum requires a momentum and zero dampening "
                             f"(got momentum={group['momentum']}, dampening={group['dampening']})")

    def _keeps_state(self, group):  # the random options and stochastic rounding are keyed by the step
        return (group["momentum"] != 0 or R.is_random(group) or group["master_weights"]
                or group["stochastic_rounding"])

    def _state_specs(self, group):
        return [("momentum_buffer", group["momentum"] != 0)]

    def _op_hyperparameters(self, group):
        return dict(decay=group["momentum"], dampening=group["dampening"], weight_decay=group["weight_decay"],
                    decoupled_weight_decay=False, nesterov=group["nesterov"], buffer_starts_at_grad=True)
