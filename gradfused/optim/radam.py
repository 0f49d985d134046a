from __future__ import annotations

from .base import FusedOptimizer
from . import _validation as V


class RAdam(FusedOptimizer):
    r"""Rectified Adam, fused, with torch.optim.RAdam semantics.

    .. math::
        m_t, v_t \text{ as Adam};\quad \hat m_t = m_t/(1-\beta_1^t);\quad
        \rho_\infty = \frac{2}{1-\beta_2} - 1;\quad \rho_t = \rho_\infty - \frac{2t\beta_2^t}{1-\beta_2^t}

        d_t = \hat m_t\, r_t \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t}+\epsilon}\ \text{if}\ \rho_t > 5,
        \ \text{else}\ \hat m_t;\qquad
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

    then ``p ← p - lr·d`` (with L2 or, if ``decoupled_weight_decay``, decoupled weight decay).

    State: ``exp_avg``, ``exp_avg_sq``, ``step``.
    """

    op_name = "radam_"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, maximize=False, fused=None, **options):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize, fused=fused)
        super().__init__(params, defaults, options)

    def _check_hyperparameters(self, group):
        self._check_common(group)
        V.check_betas(self._name, group["betas"], 2)
        V.check_nonneg(self._name, "eps", group["eps"])
        V.check_bool(self._name, "decoupled_weight_decay", group["decoupled_weight_decay"])

    def _state_specs(self, group):
        return [("exp_avg", True), ("exp_avg_sq", True)]

    def _op_hyperparameters(self, group):
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"])


class RAdamW(RAdam):
    """RAdamW: :class:`RAdam` with decoupled weight decay (default ``weight_decay=1e-2``)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *, maximize=False,
                 fused=None, **options):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True, maximize=maximize,
                         fused=fused, **options)
