"""The table that drives the tests (as PyTorch's OptimizerInfo): every optimizer with its option sets.
`make(params, fused)` builds the optimizer; `fused=False` is the pure-PyTorch reference."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import gradfused as gf


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[list, bool], torch.optim.Optimizer]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name

    @property
    def random(self) -> bool:
        """Uses a random pipeline option (noise or dropout)."""
        return any(k in self.kwargs for k in ("grad_noise", "grad_dropout", "lr_dropout"))


# make(params, fused, **extra): `extra` (mixed-precision options, say) goes to the gradfused optimizer and
# overrides the case's own options of the same name (its seed, say)
def _plain(cls, **kwargs):
    return lambda params, fused, **extra: cls(params, fused=fused, **{**kwargs, **extra})


def _aligned(cls, **kwargs):
    return lambda params, fused, **extra: gf.GradientAlignment(cls(params, fused=fused, **{**kwargs, **extra}),
                                                               beta=0.9, fused=fused)


def _cases(cls, option_sets, wrap=_plain):
    prefix = cls.__name__ if wrap is _plain else f"Align({cls.__name__})"
    out = []
    for opts in option_sets:
        label = ",".join(f"{k}={v}" for k, v in opts.items()) or "defaults"
        out.append(Case(f"{prefix}[{label}]", wrap(cls, **opts), opts))
    return out


CASES: list[Case] = (
    _cases(gf.PersistentSGD, [
        {}, {"decay": 0.9, "dampening": 0.1}, {"decay": 0.9, "nesterov": True}, {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True}, {"maximize": True}, {"decay": 0.0},
    ])
    + _cases(gf.SGD, [
        {"lr": 1e-2}, {"lr": 1e-2, "momentum": 0.9, "dampening": 0.5}, {"lr": 1e-2, "momentum": 0.9, "nesterov": True},
        {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.1, "maximize": True}, {"lr": 1e-2, "lr_dropout": 0.3, "seed": 2},
    ])
    + _cases(gf.Adam, [
        {"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1}, {"lr": 1e-2, "amsgrad": True},
        {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}, {"lr": 1e-2, "maximize": True, "amsgrad": True},
    ])
    + _cases(gf.AdamW, [{"lr": 1e-2}, {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1}, {"lr": 1e-2, "maximize": True}])
    + _cases(gf.RAdam, [
        {"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1}, {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"lr": 1e-2, "maximize": True},
    ])
    + _cases(gf.RAdamW, [{"lr": 1e-2}])
    + _cases(gf.AdEMA, [
        {"lr": 1e-2}, {"lr": 1e-2, "t_alpha_beta3": 5}, {"lr": 1e-2, "alpha": 0.0},
        {"lr": 1e-2, "weight_decay": 0.1, "maximize": True, "betas": (0.8, 0.99, 0.999)},
    ])
    + _cases(gf.NAdam, [
        {"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1},
        {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
    ])
    + _cases(gf.RMSprop, [
        {"lr": 1e-2}, {"lr": 1e-2, "momentum": 0.9, "centered": True, "weight_decay": 0.1},
        {"lr": 1e-2, "centered": True, "maximize": True},
    ])
    + _cases(gf.GradientAscent, [
        {}, {"nesterov": True, "clip_value": 0.5, "lr_decay": 0.9, "warmup_steps": 3},
        {"momentum_ema": False, "maximize": False},
    ])
    # the random pipeline options (docs/algorithms.md §1 steps 5, 6, 8), each on at least one rule
    + _cases(gf.AdamW, [{"lr": 1e-2, "grad_noise": (0.01, 0.55), "seed": 1}])
    + _cases(gf.PersistentSGD, [{"decay": 0.9, "grad_dropout": 0.3, "lr_dropout": 0.5, "seed": 2}])
    + _cases(gf.RAdamW, [{"lr": 1e-2, "grad_noise": (0.01, 0.55), "lr_dropout": 0.5, "seed": 3}])
    + _cases(gf.AdamW, [{"lr": 1e-2}], wrap=_aligned)
    + _cases(gf.PersistentSGD, [{"decay": 0.9, "weight_decay": 0.01}], wrap=_aligned)
    + _cases(gf.AdEMA, [{"lr": 1e-2, "t_alpha_beta3": 4}], wrap=_aligned)
    + _cases(gf.NAdam, [{"lr": 1e-2, "lr_dropout": 0.5, "seed": 4}], wrap=_aligned)
)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """docs/algorithms.md §5: assert_close defaults for fp32/fp64; atol = rtol = 5e-3 for 16-bit."""
    if dtype in (torch.bfloat16, torch.float16):
        return {"atol": 5e-3, "rtol": 5e-3}
    return {}


def all_states(opt: torch.optim.Optimizer) -> list[tuple[Any, torch.Tensor]]:
    """Every state tensor of an optimizer (and of the optimizer it wraps), in a stable order."""
    out = []
    layers = [opt] + ([opt.base] if isinstance(opt, gf.GradientAlignment) else [])
    for layer in layers:
        for group in layer.param_groups:
            for i, p in enumerate(group["params"]):
                for key, value in sorted(layer.state.get(p, {}).items()):
                    if isinstance(value, torch.Tensor):
                        out.append(((type(layer).__name__, i, key), value))
    return out
