from __future__ import annotations

import math

from .base import FusedOptimizer
from . import _validation as V


class GradientAscent(FusedOptimizer):
    r"""The gradient-ascent optimizer with momentum and an adaptive rate (the ``gradient-ascent`` package),
    fused, as a *maximiser* by default (``maximize=True``): parameters move up the gradient.

    .. math::
        g \leftarrow \operatorname{clamp}(g, \pm\text{clip\_value}),\qquad
        \tilde g = g + \mu v\ \text{(nesterov) or}\ g

        v = \mu v + (1-\mu)\tilde g\ \ (\text{momentum\_ema})\ \text{or}\ \mu v + \tilde g,\qquad
        m = \beta m + (1-\beta)\tilde g^2

        p \leftarrow p - \text{lr}_t \frac{v}{\sqrt{m} + \epsilon}

    where g is the gradient after the pipeline's negation for ``maximize``, and
    lr_t = lr · lr_decay^(t-1), times t / warmup_steps while t ≤ warmup_steps. There is no bias correction.
    ``momentum_ema=True`` is the rule that produced the package's published benchmark figures; ``False``
    is the accumulation of its 0.0.2 release. Unlike the package, ``lr_decay`` decays once per step, not
    once per parameter tensor.

    State: ``momentum_buffer`` (v), ``square_avg`` (m), ``step``.
    """

    op_name = "gradient_ascent_"

    def __init__(self, params, lr=1e-2, momentum=0.9, beta=0.999, eps=1e-8, momentum_ema=True, nesterov=False,
                 clip_value=None, lr_decay=None, warmup_steps=0, *, maximize=True, fused=None, **options):
        defaults = dict(lr=lr, momentum=momentum, beta=beta, eps=eps, momentum_ema=momentum_ema, nesterov=nesterov,
                        clip_value=clip_value, lr_decay=lr_decay, warmup_steps=warmup_steps, maximize=maximize,
                        fused=fused)
        super().__init__(params, defaults, options)

    def _check_hyperparameters(self, group):
        self._check_common(group)
        V.check_unit_interval(self._name, "momentum", group["momentum"])
        V.check_unit_interval(self._name, "beta", group["beta"])
        V.check_nonneg(self._name, "eps", group["eps"])
        V.check_bool(self._name, "momentum_ema", group["momentum_ema"])
        V.check_bool(self._name, "nesterov", group["nesterov"])
        for name in ("clip_value", "lr_decay"):
            x = group[name]
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)
                                  or x <= 0):
                raise V.invalid(self._name, name, x, "None or a finite number > 0")
        w = group["warmup_steps"]
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise V.invalid(self._name, "warmup_steps", w, "a whole number >= 0")

    def _state_specs(self, group):
        return [("momentum_buffer", True), ("square_avg", True)]

    def _op_hyperparameters(self, group):
        clip, decay = group["clip_value"], group["lr_decay"]
        return dict(momentum=group["momentum"], beta=group["beta"], eps=group["eps"],
                    momentum_ema=group["momentum_ema"], nesterov=group["nesterov"],
                    clip_value=None if clip is None else float(clip), lr_decay=None if decay is None else float(decay),
                    warmup_steps=group["warmup_steps"])
