from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import ops
from . import _validation as V
from ._dtensor import is_dtensor, local_shards
from ._wrapper import WrappingOptimizer
from .base import FusedOptimizer, real_views, tracks_step_calls

_NAME = "gradfused.Lookahead"


class Lookahead(WrappingOptimizer):
    r"""Lookahead (Zhang et al. 2019) over any optimizer, gradfused or torch.optim.

    Slow weights φ start equal to the parameters θ. After every k-th step of the base optimizer,

    .. math::
        \phi \leftarrow \phi + \alpha(\theta - \phi),\qquad \theta \leftarrow \phi

    as one fused multi-tensor pass (each φ and θ read once and written once). The wrapper shares the
    base's ``param_groups``, so LR schedulers see one optimizer; it composes with
    :class:`GradientAlignment` either way round. Under ``torch.amp.GradScaler`` a skipped step (inf or NaN
    gradients) is not counted, as the base does not step.

    State (per parameter, beside the base's): ``lookahead_slow``; and the count of base steps.
    """

    def __init__(self, base_optimizer: Optimizer, k: int = 5, alpha: float = 0.5, *, fused=None):
        self._wrap(_NAME, base_optimizer, fused)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise V.invalid(_NAME, "k", k, "a whole number >= 1")
        V.check_unit_interval(_NAME, "alpha", alpha, closed=True)
        self.k, self.alpha = k, float(alpha)
        self.base_steps = 0

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, base={self.base!r})"

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @tracks_step_calls
    @torch.no_grad()
    def step(self, closure=None):
        self._step_called[0] = True  # NOTE: [LR schedulers and torch.compile]
        V.refuse_capture(_NAME, "which steps sync the slow weights (every k-th) is counted on the host, and "
                         "replays would repeat the choice made at capture; capture the base optimizer's step instead")
        for p in self._params():  # φ0 = θ0, for parameters seen for the first time
            if "lookahead_slow" not in self.state[p]:
                self.state[p]["lookahead_slow"] = p.detach().clone(memory_format=torch.preserve_format)
        with torch.enable_grad():
            loss = self.base.step(closure)
        self.base_steps += 1
        if self.base_steps % self.k == 0:
            self._sync_slow_weights()
        return loss

    def _sync_slow_weights(self) -> None:
        params = self._params()
        for idx in FusedOptimizer._buckets(params):
            bucket = [params[i] for i in idx]
            backend = ops.backend_for(_NAME, self.fused, bucket[0].device)
            slows = [self.state[p]["lookahead_slow"] for p in bucket]
            if is_dtensor(bucket[0]):
                bucket, slows = local_shards(_NAME, bucket, slows)
            if bucket[0].is_complex():  # NOTE: [complex parameters] in gradfused/optim/base.py
                bucket, slows = real_views(bucket, slows)
            backend.lookahead_(bucket, slows, alpha=self.alpha)

    # ---- checkpoints: the base's state_dict plus the slow weights, indexed as the base indexes parameters ----
    def state_dict(self) -> dict[str, Any]:
        index = {p: i for i, p in enumerate(self._params())}
        slow = {index[p]: {"lookahead_slow": st["lookahead_slow"]} for p, st in self.state.items()
                if "lookahead_slow" in st}
        return {"base": self.base.state_dict(),
                "lookahead": {"state": slow, "base_steps": self.base_steps, "k": self.k, "alpha": self.alpha}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        where = f"{_NAME}.load_state_dict"
        if not isinstance(state_dict, dict) or set(state_dict) != {"base", "lookahead"}:
            raise ValueError(f"{where}: expected a dict with keys 'base' and 'lookahead' (a Lookahead state_dict); "
                             "was it saved by another optimizer?")
        order = self._params()
        slow = state_dict["lookahead"]["state"]
        for i, st in slow.items():
            if not 0 <= int(i) < len(order):
                raise ValueError(f"{where}: slow weights for parameter {i}, but there are {len(order)} parameters")
            if tuple(st["lookahead_slow"].shape) != tuple(order[int(i)].shape):
                raise ValueError(f"{where}: lookahead_slow of parameter {i} has shape "
                                 f"{tuple(st['lookahead_slow'].shape)} but the parameter has shape "
                                 f"{tuple(order[int(i)].shape)}")
        self.base.load_state_dict(state_dict["base"])
        self.base_steps = int(state_dict["lookahead"]["base_steps"])
        self.k, self.alpha = int(state_dict["lookahead"]["k"]), float(state_dict["lookahead"]["alpha"])
        self.state = defaultdict(dict)
        for i, st in slow.items():
            p = order[int(i)]
            self.state[p]["lookahead_slow"] = st["lookahead_slow"].to(device=p.device, dtype=p.dtype, copy=True)
