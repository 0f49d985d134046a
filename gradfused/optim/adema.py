from __future__ import annotations

import math

from .base import FusedOptimizer
from . import _validation as V


class AdEMA(FusedOptimizer):
    r"""AdEMA: Adam with a slow, persistent EMA of gradients (the two-EMA mixture of AdEMAMix,
    Pagliardini et al. 2024), with decoupled weight decay.

    .. math::
        m_1 = \beta_1 m_1 + (1-\beta_1) g,\quad m_2 = \beta_3(t) m_2 + (1-\beta_3(t)) g,\quad
        v = \beta_2 v + (1-\beta_2) g^2

        d = \frac{m_1/(1-\beta_1^t) + \alpha(t)\, m_2}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon},\qquad
        p \leftarrow p\,(1-\text{lr}\cdot\text{wd}) - \text{lr}\cdot d

    Without ``t_alpha_beta3``, α(t) = α and β3(t) = β3. With ``T = t_alpha_beta3``:
    α(t) = min(tα/T, α) and β3(t) = min(exp(ln β1 ln β3 / ((1 - t/T) ln β3 + (t/T) ln β1)), β3).
    With ``alpha=0`` it equals AdamW, and ``exp_avg_slow`` is not allocated.

    State: ``exp_avg``, ``exp_avg_sq``, ``exp_avg_slow`` (alpha != 0), ``step``.
    """

    op_name = "adema_"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, eps=1e-8, weight_decay=0.0,
                 t_alpha_beta3=None, *, maximize=False, fused=None, **options):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, alpha=alpha, eps=eps,
                        weight_decay=weight_decay, t_alpha_beta3=t_alpha_beta3, maximize=maximize, fused=fused)
        super().__init__(params, defaults, options)

    def _check_hyperparameters(self, group):
        self._check_common(group)
        V.check_betas(self._name, group["betas"], 3)
        V.check_nonneg(self._name, "alpha", group["alpha"])
        V.check_nonneg(self._name, "eps", group["eps"])
        T = group["t_alpha_beta3"]
        if T is not None and (isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) or T <= 0):
            raise V.invalid(self._name, "t_alpha_beta3", T, "None or a number > 0")
        if T is not None and 0.0 in (group["betas"][0], group["betas"][2]):  # the warm-up takes ln β1 and ln β3
            raise ValueError(f"{self._name}: t_alpha_beta3 needs beta1 > 0 and beta3 > 0, got betas={group['betas']!r}")

    def _state_specs(self, group):
        return [("exp_avg", True), ("exp_avg_sq", True), ("exp_avg_slow", group["alpha"] != 0)]

    def _op_hyperparameters(self, group):
        beta1, beta2, beta3 = group["betas"]
        T = group["t_alpha_beta3"]
        return dict(beta1=beta1, beta2=beta2, beta3=beta3, alpha=group["alpha"], eps=group["eps"],
                    weight_decay=group["weight_decay"], t_alpha_beta3=None if T is None else float(T))
