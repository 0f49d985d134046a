"""What GradientAlignment and Lookahead share as optimizers that wrap another one."""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from .. import _native
from . import _validation as V
from .base import _step_was_called


_HOOK_DICTS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
               "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
               "_optimizer_load_state_dict_post_hooks")


class WrappingOptimizer(Optimizer):
    """An optimizer over a base optimizer whose param_groups and defaults it shares (the base's own list,
    not a copy: the base's load_state_dict replaces it, and LR schedulers must see it). Subclasses call
    `_wrap` first in `__init__`; their own state lives in `self.state`."""

    _opt_called = property(_step_was_called)  # NOTE: [LR schedulers and torch.compile]

    def _wrap(self, name: str, base_optimizer: Optimizer, fused) -> None:
        if not isinstance(base_optimizer, Optimizer):
            raise TypeError(f"{name}: base_optimizer must be a torch.optim.Optimizer, got {type(base_optimizer)!r}")
        if isinstance(base_optimizer, type(self)):
            raise ValueError(f"{name}: base_optimizer is already a {type(self).__name__}; wrapping it twice would "
                             "apply it twice per step")
        if base_optimizer.defaults.get("differentiable"):
            raise ValueError(f"{name}: the base optimizer has differentiable=True, which {name} does not support: "
                             "its own pass runs outside autograd")
        V.check_switch(name, "fused", fused)
        if fused is not False:
            _native.load()  # eagerly, not inside a step that torch.compile traces
        self.fused = fused
        self.base = base_optimizer
        self._step_called = [False]  # NOTE: [LR schedulers and torch.compile]
        # Deliberately not Optimizer.__init__: param_groups and defaults are the base's (properties below).
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self._new_hooks()
        self._patch_step_function()

    def _new_hooks(self) -> None:
        for hooks in _HOOK_DICTS:
            setattr(self, hooks, OrderedDict())

    # A deep copy or a pickle carries the base optimizer and the wrapper's own state and settings (torch's
    # Optimizer.__getstate__ keeps only defaults, state and param_groups, which are the base's here); as with
    # torch.optim, it starts without hooks.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _HOOK_DICTS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._new_hooks()
        self._step_called = [False]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.base.param_groups = groups

    @property
    def defaults(self) -> dict[str, Any]:
        return self.base.defaults

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.base.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)
