"""Optimizers from the command line: `name[:k=v,...]`, `align:<base>[:k=v,...]` (GradientAlignment over
any base), `lookahead:<base or align:base>[:k=v,...]` (Lookahead over it; its own keys are k and alpha),
and `torch.<name>` for torch.optim's own. Tuples are written with '/': betas=0.9/0.999."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

import gradfused as gf
from gradfused.optim import _low_bit, _precision, _randomness

from ..errors import CommandError

GRADFUSED = {"sgd": gf.SGD, "persistent_sgd": gf.PersistentSGD, "adam": gf.Adam, "adamw": gf.AdamW, "radam": gf.RAdam,
             "radamw": gf.RAdamW, "adema": gf.AdEMA, "nadam": gf.NAdam, "rmsprop": gf.RMSprop,
             "gradient_ascent": gf.GradientAscent}
TORCH = {"torch.sgd": torch.optim.SGD, "torch.adam": torch.optim.Adam, "torch.adamw": torch.optim.AdamW,
         "torch.radam": torch.optim.RAdam, "torch.nadam": torch.optim.NAdam, "torch.rmsprop": torch.optim.RMSprop,
         "torch.adagrad": torch.optim.Adagrad}
WRAPPER_KEYS = ("beta", "eps")  # GradientAlignment's own hyperparameters; the rest go to the base
LOOKAHEAD_KEYS = ("k", "alpha")  # Lookahead's own


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if "/" in text:
        return tuple(_parse_value(part) for part in text.split("/"))
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise CommandError(f"malformed hyperparameter value {text!r} (expected a number, true/false, none, "
                           "or numbers separated by '/')") from None


def _parse_hyper(text: str, spec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in text.split(",") if text else []:
        key, sep, value = item.partition("=")
        if not item.strip():
            raise CommandError(f"{spec!r} has an empty hyperparameter (a trailing or doubled comma)")
        if not sep or not key.strip():
            raise CommandError(f"malformed hyperparameter {item!r} in {spec!r} (expected key=value)")
        if key.strip() in out:
            raise CommandError(f"{spec!r} sets {key.strip()!r} twice")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _show(value) -> str:
    """A hyperparameter in a label: floats to 4 significant digits (a tuned lr is 0.002694, not 17 digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "/".join(map(_show, value))
    return str(value)


@dataclass(frozen=True)
class OptimizerSpec:
    text: str  # as written on the command line
    name: str  # registry key of the optimizer (the base, under align)
    hyper: dict[str, Any] = field(default_factory=dict)
    align: dict[str, Any] | None = None  # GradientAlignment's hyperparameters, when wrapped
    lookahead: dict[str, Any] | None = None  # Lookahead's, when wrapped (outermost)

    @property
    def is_gradfused(self) -> bool:
        return self.name in GRADFUSED

    @property
    def label(self) -> str:
        cls = GRADFUSED.get(self.name) or TORCH[self.name]
        inner = ", ".join(f"{k}={_show(v)}" for k, v in self.hyper.items())
        label = f"{'torch.' if self.name in TORCH else ''}{cls.__name__}({inner})"
        for wrapper, hyper in (("Align", self.align), ("Lookahead", self.lookahead)):
            if hyper is not None:
                own = f"[{', '.join(f'{k}={_show(v)}' for k, v in hyper.items())}]" if hyper else ""
                label = f"{wrapper}{own}({label})"
        return label

    def with_hyper(self, hyper: dict[str, Any], align: dict[str, Any] | None) -> "OptimizerSpec":
        return OptimizerSpec(self.text, self.name, hyper, align, self.lookahead)

    def build(self, params, *, fused: bool = True) -> torch.optim.Optimizer:
        kwargs = dict(self.hyper)
        if self.is_gradfused:
            kwargs["fused"] = fused
        cls = GRADFUSED.get(self.name) or TORCH[self.name]
        try:
            opt = cls(params, **kwargs)
            if self.align is not None:
                opt = gf.GradientAlignment(opt, **self.align, fused=fused)
            if self.lookahead is not None:
                opt = gf.Lookahead(opt, **self.lookahead, fused=fused)
            return opt
        except (ValueError, TypeError) as e:
            raise CommandError(f"optimizer {self.text!r}: {e}") from None


def parse_all(texts: list[str]) -> list[OptimizerSpec]:
    """Every spec parsed and built once on a dummy parameter, before any training starts: a bad value in
    the last spec fails the command at once, not after the others have trained. Built with fused=False
    (the same checks), so that no compile of the kernels stands between a typo and its error."""
    seen = set()
    for text in texts:
        if text in seen:
            raise CommandError(f"optimizer {text!r} is given twice")
        seen.add(text)
    specs = [parse(text) for text in texts]
    for spec in specs:
        spec.build([torch.zeros(1, requires_grad=True)], fused=False)
    return specs


def parse(spec: str) -> OptimizerSpec:
    if spec.startswith("lookahead:"):
        inner, _, hyper_text = spec[len("lookahead:"):].rpartition(":")
        if "=" not in hyper_text:  # no hyperparameters: everything after the prefix is the base
            inner, hyper_text = spec[len("lookahead:"):], ""
        if not inner:
            raise CommandError(f"{spec!r}: lookahead needs a base optimizer, e.g. lookahead:adamw:lr=1e-3,k=5")
        items = hyper_text.split(",") if hyper_text else []
        own = [item for item in items if item.partition("=")[0].strip() in LOOKAHEAD_KEYS]
        rest = [item for item in items if item not in own]
        base = parse(inner + (":" + ",".join(rest) if rest else ""))
        return OptimizerSpec(spec, base.name, base.hyper, base.align, _parse_hyper(",".join(own), spec))
    parts = spec.split(":", 2 if spec.startswith("align:") else 1)
    align = None
    if parts[0] == "align":
        if len(parts) < 2 or not parts[1]:
            raise CommandError(f"{spec!r}: align needs a base optimizer, e.g. align:adam:lr=8.5e-3,beta=0.99")
        name, hyper_text = parts[1], parts[2] if len(parts) > 2 else ""
    else:
        name, hyper_text = parts[0], parts[1] if len(parts) > 1 else ""
    cls = GRADFUSED.get(name) or TORCH.get(name)
    if cls is None:
        known = ", ".join(list(GRADFUSED) + list(TORCH) + ["align:<base>", "lookahead:<base>"])
        raise CommandError(f"unknown optimizer {name!r} in {spec!r} (expected one of: {known})")
    hyper = _parse_hyper(hyper_text, spec)
    if parts[0] == "align":
        align = {k: hyper.pop(k) for k in WRAPPER_KEYS if k in hyper}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params", "fused", "foreach", "options"}
    if name in GRADFUSED:  # the options every gradfused optimizer takes as keywords
        accepted |= set(_precision.DEFAULTS) | set(_randomness.DEFAULTS) | set(_low_bit.DEFAULTS)
    unknown = set(hyper) - accepted
    if unknown:
        raise CommandError(f"{spec!r}: {cls.__name__} has no hyperparameter {', '.join(sorted(unknown))} "
                           f"(it takes: {', '.join(sorted(accepted))})")
    return OptimizerSpec(spec, name, hyper, align)
