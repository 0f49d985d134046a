from __future__ import annotations

from .base import FusedOptimizer
from . import _validation as V


class NAdam(FusedOptimizer):
    r"""NAdam (Adam with Nesterov momentum, Dozat 2016), fused, with torch.optim.NAdam semantics.

    .. math::
        \mu_t = \beta_1 (1 - \tfrac12 0.96^{t\psi}),\qquad \Pi_t = \Pi_{t-1}\mu_t,\qquad
        m, v\ \text{as Adam},\qquad \text{denom} = \sqrt{v/(1-\beta_2^t)} + \epsilon

        d = \frac{1-\mu_t}{1-\Pi_t}\frac{g}{\text{denom}} + \frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\frac{m}{\text{denom}},
        \qquad p \leftarrow p - \text{lr}\cdot d

    with ψ = ``momentum_decay``. Weight decay is L2 (added to the gradient) unless
    ``decoupled_weight_decay`` (then ``p`` is multiplied by ``1 - lr * weight_decay``), as in torch.

    State: ``exp_avg``, ``exp_avg_sq``, ``mu_product`` (a float32 scalar, starts at 1), ``step``.
    """

    op_name = "nadam_"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, maximize=False, fused=None, **options):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, fused=fused)
        super().__init__(params, defaults, options)

    def _check_hyperparameters(self, group):
        self._check_common(group)
        V.check_betas(self._name, group["betas"], 2)
        V.check_nonneg(self._name, "eps", group["eps"])
        V.check_nonneg(self._name, "momentum_decay", group["momentum_decay"])
        V.check_bool(self._name, "decoupled_weight_decay", group["decoupled_weight_decay"])

    def _state_specs(self, group):
        return [("exp_avg", True), ("exp_avg_sq", True)]

    def _scalar_state_specs(self, group):
        return [("mu_product", 1.0)]

    def _op_hyperparameters(self, group):
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"], momentum_decay=group["momentum_decay"])
