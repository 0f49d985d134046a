from __future__ import annotations

from .base import FusedOptimizer
from . import _validation as V


class Adam(FusedOptimizer):
    r"""Adam, fused, with torch.optim.Adam semantics (L2 weight decay unless ``decoupled_weight_decay``).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\qquad
        \hat v_t = \max(\hat v_{t-1}, v_t)\ \text{(amsgrad) or}\ v_t

        d_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{\hat v_t} / \sqrt{1-\beta_2^t} + \epsilon},\qquad
        p_t = p_{t-1} - \text{lr}\cdot d_t

    The gradient is first unscaled (AMP), negated (``maximize``) and, for L2 decay, given
    ``weight_decay * p``; decoupled decay multiplies ``p`` by ``1 - lr * weight_decay`` instead.

    State: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad), ``step`` (float32 tensor).
    """

    op_name = "adam_"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False, fused=None, **options):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay, fused=fused)
        super().__init__(params, defaults, options)

    def _check_hyperparameters(self, group):
        self._check_common(group)
        V.check_betas(self._name, group["betas"], 2)
        V.check_nonneg(self._name, "eps", group["eps"])
        V.check_bool(self._name, "amsgrad", group["amsgrad"])
        V.check_bool(self._name, "decoupled_weight_decay", group["decoupled_weight_decay"])

    def _state_specs(self, group):
        return [("exp_avg", True), ("exp_avg_sq", True), ("max_exp_avg_sq", group["amsgrad"])]

    def _op_hyperparameters(self, group):
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=group["amsgrad"])


class AdamW(Adam):
    r"""AdamW: :class:`Adam` with decoupled weight decay (default ``weight_decay=1e-2``), as
    torch.optim.AdamW: ``p ← p·(1 - lr·wd) - lr·d``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, fused=None, **options):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, fused=fused, **options)

    def _upgrade_group(self, group):
        # as torch.optim.AdamW: whatever a checkpoint says (Adam's has False), AdamW decouples
        group["decoupled_weight_decay"] = True
