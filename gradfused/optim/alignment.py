from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import ops
from ..reference.pipeline import unscale
from . import _validation as V
from ._dtensor import is_dtensor, local_shards, sum_over_shards
from ._wrapper import WrappingOptimizer
from .base import FusedOptimizer, real_views, tracks_step_calls


def scales_from_sums(sums: Tensor, eps: float) -> Tensor:
    """s_T = clamp(<g,a> / (max(‖g‖, eps) · max(‖a‖, eps)), 0, 1) from the rows (<g,a>, ‖g‖², ‖a‖²) of the
    alignment_sums_ op, in float64 and on the device, for the native and the reference backends alike."""
    dot, gg, aa = sums.unbind(1)
    return (dot / (gg.sqrt().clamp_min(eps) * aa.sqrt().clamp_min(eps))).clamp(0.0, 1.0)


class GradientAlignment(WrappingOptimizer):
    r"""Scales each parameter tensor's gradient by its cosine alignment with an EMA of past gradients
    (Gradient Alignment Optimizer), then steps the wrapped optimizer.

    For each tensor T, on the raw (unscaled) gradient and before the base step:

    .. math::
        a_T = \beta a_T + (1-\beta) g_T,\qquad
        s_T = \operatorname{clamp}\!\left(\frac{\langle g_T, a_T\rangle}
              {\max(\lVert g_T\rVert,\epsilon)\,\max(\lVert a_T\rVert,\epsilon)}, 0, 1\right)

    and the base optimizer steps with :math:`s_T g_T`. Over a gradfused optimizer the scales go straight
    into its fused update and ``p.grad`` is left untouched; over any other ``torch.optim`` optimizer the
    gradients are scaled in place before its ``step``. The wrapper shares the base's ``param_groups``,
    so LR schedulers and GradScaler treat it as one optimizer.

    State (per parameter, beside the base's): ``alignment_ema``.
    """

    @property
    def _step_supports_amp_scaling(self) -> bool:  # the base's (NOTE: [GradScaler: who unscales])
        return getattr(self.base, "_step_supports_amp_scaling", False)

    def __init__(self, base_optimizer: Optimizer, beta: float = 0.9, eps: float = 1e-8, *, fused=None):
        name = "gradfused.GradientAlignment"
        self._wrap(name, base_optimizer, fused)
        V.check_unit_interval(name, "beta", beta)
        V.check_nonneg(name, "eps", eps)
        self.beta, self.eps = float(beta), float(eps)
        self._plan_emas: dict[tuple[int, int], tuple[Any, list[Tensor]]] = {}  # see _plan_scales

    def __getstate__(self) -> dict[str, Any]:  # the EMA lists of the base's plans, which a copy rebuilds, stay
        return {k: v for k, v in super().__getstate__().items() if k != "_plan_emas"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._plan_emas = {}

    def __repr__(self) -> str:
        return f"GradientAlignment(beta={self.beta}, eps={self.eps}, base={self.base!r})"

    def _emas(self, params: list[Tensor]) -> list[Tensor]:
        """The EMAs of `params`, created as needed, in the gradient's dtype (float32 gradients of 16-bit
        parameters keep a float32 EMA)."""
        emas = []
        for p in params:
            st = self.state[p]
            if "alignment_ema" not in st:
                st["alignment_ema"] = torch.zeros_like(p, dtype=p.grad.dtype, memory_format=torch.preserve_format)
            elif st["alignment_ema"].dtype != p.grad.dtype:
                st["alignment_ema"] = st["alignment_ema"].to(p.grad.dtype)
            emas.append(st["alignment_ema"])
        return emas

    def _stats(self, params: list[Tensor], grad_scale: Tensor | None, found_inf: Tensor | None,
               grads: list[Tensor] | None = None, emas: list[Tensor] | None = None) -> Tensor:
        """Updates the EMAs of `params` (one device and dtype) and returns their scales (float64).
        `grads` and `emas`, where the caller has them, save the lookups."""
        device = params[0].device
        emas = self._emas(params) if emas is None else emas
        grads = [p.grad for p in params] if grads is None else grads
        sharded = is_dtensor(params[0])
        if sharded:
            _, grads, emas = local_shards("gradfused.GradientAlignment", params, grads, emas)
        if params[0].is_complex():  # NOTE: [complex parameters] in gradfused/optim/base.py
            grads, emas = real_views(grads, emas)
        sums = torch.zeros(len(params), 3, dtype=torch.float64, device=device)
        backend = ops.backend_for("gradfused.GradientAlignment", self.fused, device)
        backend.alignment_sums_(
            grads, emas, sums, beta=self.beta,
            grad_scale=None if grad_scale is None else grad_scale.to(device),
            found_inf=None if found_inf is None else found_inf.to(device),
        )
        if sharded:  # docs/algorithms.md §4: the sums of a sharded tensor are summed over all its shards
            sum_over_shards(sums, params)
        return scales_from_sums(sums, self.eps)

    @tracks_step_calls
    @torch.no_grad()
    def step(self, closure=None):
        self._step_called[0] = True  # NOTE: [LR schedulers and torch.compile]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if isinstance(self.base, FusedOptimizer):
            if not self.base._step_through_native_plans(getattr(self, "grad_scale", None),
                                                        getattr(self, "found_inf", None), self._plan_scales):
                self._step_fused(self.base._selected(None), build_native_plans=True)
            return loss
        return self._step_torch_base(loss)

    def _plan_scales(self, native, bucket: int, params: list[Tensor]) -> Tensor:
        """The scales of one bucket of the base's StepPlan (NOTE: [the step plan in C++]), from the
        gradients it gathered and EMA lists kept per plan: the host work stays O(1) in Python per bucket."""
        key = (id(native), bucket)
        cached = self._plan_emas.get(key)
        if cached is None or cached[0] is not native:
            if len(self._plan_emas) >= 64:  # plans rebuilt many times: forget the old ones
                self._plan_emas.clear()
            cached = self._plan_emas[key] = (native, self._emas(params))
        return self._stats(params, getattr(self, "grad_scale", None), getattr(self, "found_inf", None),
                           grads=native.grads(bucket), emas=cached[1])

    @torch.no_grad()
    def step_parameters(self, params) -> None:
        """Steps only `params`, as `step` would (see FusedOptimizer.step_parameters). Needs a gradfused base:
        a torch.optim optimizer has no per-parameter step."""
        if not isinstance(self.base, FusedOptimizer):
            raise TypeError(f"gradfused.GradientAlignment.step_parameters needs a gradfused base optimizer, "
                            f"not {type(self.base).__name__}")
        self._step_fused(self.base._selected(params))

    def _step_fused(self, selected: list[list[Tensor]], build_native_plans: bool = False) -> None:
        """The alignment scales go straight into the base's fused update; `selected` is from base._selected."""
        grad_scale = getattr(self, "grad_scale", None)  # set by torch.amp.GradScaler
        found_inf = getattr(self, "found_inf", None)
        self.base._plan_all(selected)
        for group, params in zip(self.param_groups, selected):
            scales = [self._stats(bucket, grad_scale, found_inf) for bucket, _, _ in self.base._plan(group, params)]
            self.base._update(group, params, grad_scale=grad_scale, found_inf=found_inf, alignment_scales=scales)
            if build_native_plans:
                self.base._build_native_plan(group, params)

    def _step_torch_base(self, loss):
        """Any other optimizer: scale the gradients in place (and unscale them, under GradScaler), then step."""
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None:
            V.refuse_capture("gradfused.GradientAlignment", f"over {type(self.base).__name__}, skipping a step that "
                             "GradScaler found inf in reads found_inf on the host; wrap a gradfused optimizer instead")
            if found_inf.item() != 0:
                return loss  # a skipped AMP step: nothing changes, the EMAs included
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for idx in FusedOptimizer._buckets(params, by_grad_dtype=True):
                bucket = [params[i] for i in idx]
                scales = self._stats(bucket, grad_scale, None)
                for p, s in zip(bucket, scales):
                    if grad_scale is not None:  # NOTE: [GradScaler and .grad] in csrc/common/pipeline.h
                        p.grad.copy_(unscale(p.grad, grad_scale))
                    p.grad.mul_(s.to(p.grad.dtype))
        self.base.step()
        return loss

    # ---- checkpoints: the base's state_dict plus the EMAs, indexed as the base indexes parameters ----
    def _param_index(self) -> dict[Tensor, int]:
        order = [p for group in self.param_groups for p in group["params"]]
        return {p: i for i, p in enumerate(order)}

    def state_dict(self) -> dict[str, Any]:
        index = self._param_index()
        emas = {index[p]: {"alignment_ema": st["alignment_ema"]} for p, st in self.state.items() if "alignment_ema" in st}
        return {"base": self.base.state_dict(), "alignment": {"state": emas, "beta": self.beta, "eps": self.eps}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        name = "gradfused.GradientAlignment.load_state_dict"
        if not isinstance(state_dict, dict) or set(state_dict) != {"base", "alignment"}:
            raise ValueError(f"{name}: expected a dict with keys 'base' and 'alignment' (a GradientAlignment "
                             "state_dict); was it saved by another optimizer?")
        order = [p for group in self.param_groups for p in group["params"]]
        emas = state_dict["alignment"]["state"]
        for i, st in emas.items():
            if not 0 <= int(i) < len(order):
                raise ValueError(f"{name}: alignment state for parameter {i}, but there are {len(order)} parameters")
            if tuple(st["alignment_ema"].shape) != tuple(order[int(i)].shape):
                raise ValueError(f"{name}: alignment_ema of parameter {i} has shape {tuple(st['alignment_ema'].shape)}"
                                 f" but the parameter has shape {tuple(order[int(i)].shape)}")
        self.base.load_state_dict(state_dict["base"])
        self.beta = float(state_dict["alignment"]["beta"])
        self.eps = float(state_dict["alignment"]["eps"])
        self.state = defaultdict(dict)
        self._plan_emas.clear()
        for i, st in emas.items():
            p = order[int(i)]
            self.state[p]["alignment_ema"] = st["alignment_ema"].to(device=p.device, copy=True)
