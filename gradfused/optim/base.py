"""FusedOptimizer: what every gradfused optimizer shares. A subclass declares its op, its state and its
hyperparameter checks; this class collects the tensors, creates state lazily and calls the op."""
from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import _native, ops
from .. import quantization as Q
from . import _low_bit as L
from . import _precision as P
from . import _randomness as R
from . import _validation as V
from ._dtensor import is_dtensor, local_shards
from ._state_table import StateTable

_SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64, torch.complex128)
# NOTE: [implementation switches]
# torch.optim's switches, accepted by every optimizer with torch's meaning so that code written for torch
# runs unchanged. `foreach` is ignored: every step is one fused kernel per (device, dtype) bucket, and
# foreach=True or False would give the same numbers. `capturable` needs nothing: on CUDA the step never
# reads a device value on the host (NOTE: [no host synchronisation]), so every step can be captured in a
# CUDA graph, and on the CPU it means nothing. `differentiable=True` steps with the reference, pure PyTorch
# ops under autograd (NOTE: [differentiable steps]).
SWITCH_DEFAULTS = dict(foreach=None, capturable=False, differentiable=False)
# This optimizer's choices, kept when a checkpoint is loaded: the implementation and the precision scheme.
_IMPLEMENTATION_KEYS = ("fused", *SWITCH_DEFAULTS, "state_dtype", "master_weights", "stochastic_rounding",
                        *L.DEFAULTS)
_MAX_PLANS = 256  # NOTE: [the step plan]


# NOTE: [LR schedulers and torch.compile]
# An LR scheduler wraps `optimizer.step` in a function of torch/optim/lr_scheduler.py, only to record that
# step was called; torch.compile never traces that file, so `step` under a scheduler would break the graph.
# Our step records the call itself, in `_opt_called` (what the scheduler reads), and carries the marker the
# scheduler looks for before wrapping, so it is left unwrapped and compiles with fullgraph=True. The
# record is a list item because torch.compile drops attribute assignments on optimizer objects.
def tracks_step_calls(step):
    """Marks `step` as already tracked for LR schedulers; it must set `self._step_called[0] = True`,
    a list made in __init__ (attribute assignments made while compiling are dropped, item ones are not)."""
    step._wrapped_by_lr_sched = True
    return step


def _step_was_called(opt) -> bool:
    return opt._step_called[0]


# NOTE: [differentiable steps]
# With differentiable=True (torch.optim's switch for learned optimizers and meta-learning) a step runs the
# reference (gradfused.reference), whose updates are ordinary PyTorch ops, with grad mode on, as torch's
# _use_grad_for_differentiable does: autograd then flows through the update to the parameters, gradients
# and states it read. Gradients do not flow into the hyperparameters (a tensor lr is read as a number), and
# 8-bit states (rounded) and fused=True (the kernels) are refused with it.
def grad_mode_for_step(step):
    """The step under torch.no_grad(), or with grad mode on where the optimizer is differentiable."""
    @functools.wraps(step)
    def with_grad_mode(self, *args, **kwargs):
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return step(self, *args, **kwargs)
    return with_grad_mode


# NOTE: [complex parameters]
# As torch.optim, a complex parameter is stepped as its real view (torch.view_as_real: the real and imaginary
# parts as a last dimension of 2), with its gradient and states viewed the same way; every rule is
# elementwise, so this is the rule applied to each real component. States stay complex tensors of the
# parameter's shape (checkpoints cross-load with torch.optim), and 8-bit states are kept for real parameters
# only. A group with a complex parameter steps through the checked path, not through a C++ step plan.
def real_views(*lists: list[Tensor]) -> list[list[Tensor]]:
    """Each list with its complex tensors as real views (as _dtensor.local_shards gives local shards)."""
    return [[torch.view_as_real(t) if t.is_complex() else t for t in lst] for lst in lists]


class FusedOptimizer(Optimizer):
    """Base class. Subclasses set `op_name` and implement `_state_specs`, `_op_hyperparameters` and
    `_check_hyperparameters`.

    The switch `fused` (as in torch.optim) picks the backend: True or None runs the native fused kernels,
    False the pure-PyTorch reference for-loop of gradfused.reference (the oracle, slower).

    Every optimizer also takes, as keyword arguments, the mixed-precision options of
    gradfused/optim/_precision.py (`state_dtype`, `master_weights`, `stochastic_rounding`) and the random
    pipeline options of gradfused/optim/_randomness.py (`grad_noise`, `grad_dropout`, `lr_dropout`, `seed`)."""

    op_name: ClassVar[str]
    # NOTE: [mixed precision in one pass]: the native ops fuse the mixed-precision options. False steps fp32
    # working copies instead (gradfused/optim/_precision.py), as the reference does: the fused kernels'
    # bitwise oracle in tests/test_mixed_precision.py.
    _fuse_precision: ClassVar[bool] = True

    def __init__(self, params, defaults: dict[str, Any], options: dict[str, Any] | None = None):
        """`options`: the shared keyword options (mixed precision, randomness) a subclass was given."""
        unknown = set(options or {}) - set(SWITCH_DEFAULTS) - set(P.DEFAULTS) - set(R.DEFAULTS) - set(L.DEFAULTS)
        if unknown:
            raise TypeError(f"gradfused.{type(self).__name__}: unexpected keyword argument {sorted(unknown)[0]!r}")
        defaults = {**defaults, **SWITCH_DEFAULTS, **P.DEFAULTS, **R.DEFAULTS, **L.DEFAULTS, **(options or {})}
        self._check_hyperparameters(defaults)  # before `params` is looked at, as torch.optim does
        if defaults["fused"] is not False:
            _native.load()  # here, eagerly: not inside a step that torch.compile traces
        self._reset_caches()
        super().__init__(params, defaults)
        self.state = StateTable.of(self.state)  # NOTE: [state changes] in _state_table.py

    def _reset_caches(self) -> None:
        """What a step derives from the groups and the state, not saved: made anew by __init__ and by
        __setstate__ (deepcopy, pickle), whose groups and state dicts are new objects."""
        self._plans: dict[tuple, tuple] = {}  # NOTE: [the step plan]
        self._native_plans: dict[int, tuple] = {}  # per group: NOTE: [the step plan in C++]
        self._fp32_grads: dict[int, tuple] = {}  # per group index: ids of 16-bit parameters with float32 gradients
        self._step_called = [False]  # NOTE: [LR schedulers and torch.compile]

    _opt_called = property(_step_was_called)  # NOTE: [LR schedulers and torch.compile]

    # NOTE: [GradScaler: who unscales]
    # torch.amp.GradScaler hands an optimizer whose `_step_supports_amp_scaling` is true its scale and
    # found_inf instead of unscaling .grad itself (one pass less over the gradients, no host sync). torch
    # sets the flag for fused=True only, and frameworks read it as "the step unscales internally":
    # Lightning then refuses gradient clipping under AMP, since .grad would still be scaled when it clips.
    # So the flag is torch's: set for fused=True, and for float16 parameters, whose gradients GradScaler's
    # own unscale_ refuses (docs/mixed-precision.md#gradscaler).
    @property
    def _step_supports_amp_scaling(self) -> bool:  # read by GradScaler at every step: O(1)
        return self.defaults.get("fused") is True or self._float16_params

    def _note_float16_params(self) -> None:  # when the groups change: add_param_group, __setstate__
        self._float16_params = any(p.dtype == torch.float16 for group in self.param_groups for p in group["params"])

    # ---- what a subclass declares ------------------------------------------------------------
    def _state_specs(self, group: dict) -> list[tuple[str, bool]]:
        """The op's state lists in positional order, as (state key, used by this group)."""
        raise NotImplementedError

    def _op_hyperparameters(self, group: dict) -> dict[str, Any]:
        """The op's keyword arguments, other than lr and the pipeline options."""
        raise NotImplementedError

    def _check_hyperparameters(self, group: dict) -> None:
        raise NotImplementedError

    def _scalar_state_specs(self, group: dict) -> list[tuple[str, float]]:
        """One-element float32 states beside `step` (NAdam's `mu_product`), as (state key, initial value),
        passed to the op after the state lists."""
        return []

    def _keeps_state(self, group: dict) -> bool:
        """False where a step needs no state at all (gradfused.SGD without momentum): the op then gets
        scratch step counts that are not saved (NOTE: [the step plan])."""
        return True

    def _scalar_state_keys(self, group: dict) -> list[str]:
        """The keys of `_scalar_state_specs`, without `step`."""
        return [key for key, _ in self._scalar_state_specs(group)]

    # ---- groups and checkpoints --------------------------------------------------------------
    @property
    def _name(self) -> str:
        return f"gradfused.{type(self).__name__}"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_hyperparameters(merged)
        R.resolve_seed(merged, needed=R.draws(merged))
        if merged["seed"] is not None:
            param_group["seed"] = merged["seed"]
        self._plans.clear()
        self._native_plans = {}
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif not isinstance(params, set):  # a set is refused by torch below, for its order is not fixed
            # a generator (model.head.parameters()) is read once: torch.optim's add_param_group gets the list
            params = param_group["params"] = list(params)
        for i, p in enumerate(params):
            if isinstance(p, tuple) and len(p) == 2:  # a named parameter, (name, tensor)
                p = p[1]
            if isinstance(p, Tensor):
                self._check_param(p, f"params[{i}]")
                P.check_param(self._name, merged, p, f"params[{i}]")
                if merged["fused"]:  # as torch.optim: fused=True refuses a device it cannot fuse on, here
                    ops.backend_for(self._name, True, p.device)
        super().add_param_group(param_group)
        self._note_float16_params()

    def _check_param(self, p: Tensor, where: str) -> None:
        if p.layout != torch.strided:
            raise ValueError(f"{self._name}: {where} is sparse ({p.layout}); only dense parameters are supported")
        if p.dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"{self._name}: {where} has dtype {p.dtype}; expected float32, float64, bfloat16, float16, "
                             "complex64 or complex128")
        if torch._debug_has_internal_overlap(p) == 1:  # NOTE: [every element once] in csrc/ops_shared.h
            raise ValueError(f"{self._name}: {where} (shape {tuple(p.shape)}, strides {p.stride()}) has elements that "
                             "share memory, as an expanded tensor does; an in-place update needs a parameter that "
                             "holds each element once (.clone() it)")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.state = StateTable.of(self.state)  # a loaded or copied state: NOTE: [state changes]
        self._reset_caches()
        self._note_float16_params()
        for group in self.param_groups:  # checkpoints from older versions or from torch.optim
            self._upgrade_group(group)
            for k, v in self.defaults.items():
                group.setdefault(k, v)

    def _upgrade_group(self, group: dict) -> None:
        """Maps the hyperparameter names of a torch.optim counterpart onto ours (see PersistentSGD)."""

    # NOTE: [our part of load_state_dict and state_dict]
    # torch.optim runs the user's load pre-hooks on the state_dict as given, loads it, then runs the
    # post-hooks on the loaded optimizer. Our checks and conversions sit inside that order, as hooks of
    # our own for the one call: the check after the user's pre-hooks (one may rename an old checkpoint's
    # keys), the conversions before the user's post-hooks (which must see the optimizer loaded). Saving
    # mirrors it: 8-bit codes are renamed before the user's state_dict post-hooks see the dict.
    @contextlib.contextmanager
    def _own_hooks(self, kind: str, pre=None, post=None):
        """`kind`: "state_dict" or "load_state_dict"."""
        handles = []
        if pre is not None:  # appended: after the user's pre-hooks
            handles.append(getattr(self, f"register_{kind}_pre_hook")(pre))
        if post is not None:  # prepended: before the user's post-hooks
            handles.append(getattr(self, f"register_{kind}_post_hook")(post, prepend=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def state_dict(self) -> dict[str, Any]:
        def saved_format(optimizer, state_dict):
            return {**state_dict, "state": {k: L.saved_format(st) if isinstance(st, dict) else st
                                            for k, st in state_dict["state"].items()}}
        with self._own_hooks("state_dict", post=saved_format):
            return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        loading: dict[str, Any] = {}

        def check(optimizer, state_dict):
            if isinstance(state_dict, dict) and isinstance(state_dict.get("state"), dict):
                state_dict = {**state_dict, "state": {k: L.loaded_format(st) if isinstance(st, dict) else st
                                                      for k, st in state_dict["state"].items()}}
            self._check_state_dict(state_dict)
            # Which implementation runs (and in which precision) is this optimizer's choice, not the
            # checkpoint's: a checkpoint saved with fused=False must not silently switch a native optimizer
            # to the reference (a torch pitfall). The states are converted to this precision in `tidy`.
            loading["implementation"] = [{k: group[k] for k in _IMPLEMENTATION_KEYS if k in group}
                                         for group in self.param_groups]
            loading["uncast"] = self._states_not_in_param_dtype(state_dict)
            return state_dict

        def tidy(optimizer):
            self._tidy_loaded_state(loading["implementation"], loading["uncast"])

        with self._own_hooks("load_state_dict", check, tidy):
            super().load_state_dict(state_dict)

    def _tidy_loaded_state(self, implementation: list[dict], uncast: list) -> None:
        """After torch's load: this optimizer's implementation choices, dtypes and state formats."""
        for group, keep in zip(self.param_groups, implementation):
            group.update(keep)
        # torch casts floating state to the parameter's dtype on load, which would round the fp32 moments and
        # master weights of a bf16 parameter: those are taken from the checkpoint again, in fp32.
        for p, key, value, dtype in uncast:
            self.state[p][key] = value.to(device=p.device, dtype=dtype, copy=True)
        for group in self.param_groups:  # master weights saved by an optimizer that kept them, unused here
            if not group["master_weights"]:
                for p in group["params"]:
                    self.state.get(p, {}).pop("master_weight", None)
        self._convert_state_formats()
        scalar_keys = {"step"}.union(*(self._scalar_state_keys(group) for group in self.param_groups))
        step_dtypes = {p: self._step_dtype(group) for group in self.param_groups for p in group["params"]}
        for p, st in self.state.items():  # `step` and the like live with their parameter, as float32
            if p not in step_dtypes or not isinstance(st, dict):
                continue  # not a parameter's state: torch.optim keeps such entries as they are
            if st and "step" not in st:  # torch.optim.SGD keeps no step count: its state is past step 1
                st["step"] = 1.0
            for key in scalar_keys & set(st):
                dtype = step_dtypes[p] if key == "step" else torch.float32
                if isinstance(st[key], Tensor):
                    st[key] = st[key].to(device=p.device, dtype=dtype)
                else:
                    st[key] = torch.tensor(float(st[key]), dtype=dtype, device=p.device)

    def _convert_state_formats(self) -> None:
        """A checkpoint's states in this optimizer's format: full-precision ones encoded where its states are
        8-bit, 8-bit ones decoded where they are not (docs/low-bit-states.md). Codes laid out otherwise than
        their parameter (saved in another memory format) are encoded again in its layout: a block is 256
        elements in memory order, and the kernels read the codes in the parameter's."""
        for group in self.param_groups:
            keys = [key for key, _ in self._state_specs(group)]
            for p in group["params"]:
                st = self.state.get(p)
                for key in [k for k in keys if st and k in st]:
                    if L.quantized(group, p):
                        L.put_in_parameter_order(st, key, p)
                    elif L.is_codes(st[key]):
                        L.decode(st, key, P.state_dtype(group, p))

    def _states_not_in_param_dtype(self, state_dict: dict[str, Any]) -> list[tuple[Tensor, str, Tensor, torch.dtype]]:
        """(parameter, key, saved tensor, dtype) for each saved state this optimizer keeps in another dtype
        than its parameter's (mixed precision), and for each 8-bit state: torch's load would round or cast
        these, and they are taken from the checkpoint again."""
        out = []
        for saved, group in zip(state_dict["param_groups"], self.param_groups):
            scalar_keys = {"step", *self._scalar_state_keys(group)}
            for idx, p in zip(saved["params"], group["params"]):
                dtype = P.state_dtype(group, p)
                for key, value in state_dict["state"].get(idx, {}).items():
                    want = torch.float32 if key == "master_weight" else dtype
                    eight_bit = L.is_codes(value) or key.endswith(L.ABSMAX)
                    if eight_bit:  # keep their dtypes, and are copied as a pair: torch's load would copy
                        want = value.dtype  # the codes (a cast) but share the float32 scales
                    if key not in scalar_keys and isinstance(value, Tensor) and (want != p.dtype or eight_bit):
                        out.append((p, key, value, want))
        return out

    def _check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Rejects a checkpoint of another optimizer or another model before anything is loaded."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{self._name}.load_state_dict: expected a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{self._name}.load_state_dict: the state_dict has {len(saved_groups)} parameter "
                             f"groups but this optimizer has {len(self.param_groups)}")
        for k, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{self._name}.load_state_dict: param group {k} has {len(saved['params'])} "
                                 f"parameters in the state_dict but {len(group['params'])} here")
            hyper = {**self.defaults, **{key: v for key, v in saved.items() if key != "params"}}
            self._upgrade_group(hyper)
            specs = self._state_specs(hyper)
            scalar_keys = self._scalar_state_keys(hyper)
            allowed = {key for key, _ in specs} | {key + L.ABSMAX for key, _ in specs} | {"step", "master_weight",
                                                                                        *scalar_keys}
            required = [key for key, used in specs if used]
            for idx, p in zip(saved["params"], group["params"]):
                st = state_dict["state"].get(idx)
                if not st:
                    continue
                where = f"{self._name}.load_state_dict: state of parameter {idx}"
                foreign = set(st) - allowed
                if foreign:
                    raise ValueError(f"{where} has keys {sorted(foreign)} that {type(self).__name__} does not use "
                                     f"(expected {sorted(allowed)}); was it saved by another optimizer?")
                missing = set(required + scalar_keys) - set(st)
                if missing:
                    raise ValueError(f"{where} lacks {sorted(missing)}; was it saved by another optimizer?")
                for key in required + (["master_weight"] if "master_weight" in st else []):
                    if tuple(st[key].shape) != tuple(p.shape):
                        raise ValueError(f"{where}: {key!r} has shape {tuple(st[key].shape)} but the parameter "
                                         f"has shape {tuple(p.shape)}")
                    if L.is_codes(st[key]):  # 8-bit: the codes need their absmax, one per block
                        absmax = st.get(key + L.ABSMAX)
                        blocks = Q.num_blocks(p.numel())
                        if not isinstance(absmax, Tensor) or absmax.dtype != torch.float32 or absmax.shape != (blocks,):
                            raise ValueError(f"{where}: {key!r} holds 8-bit codes, which need {key + L.ABSMAX!r}, a "
                                             f"float32 tensor of {blocks} elements (one per 256), got "
                                             f"{None if absmax is None else (absmax.dtype, tuple(absmax.shape))}")

    # ---- the step ----------------------------------------------------------------------------
    @tracks_step_calls
    @grad_mode_for_step
    def step(self, closure=None):
        """Performs one optimization step. `closure` re-evaluates the model and returns the loss."""
        self._step_called[0] = True  # NOTE: [LR schedulers and torch.compile]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._step_through_native_plans(getattr(self, "grad_scale", None), getattr(self, "found_inf", None)):
            self._step(self._selected(None), build_native_plans=True)
        return loss

    @grad_mode_for_step
    def step_parameters(self, params) -> None:
        """Steps only `params` (those of them with a gradient), each with the hyperparameters and state
        of its own group, exactly as `step` would: the per-layer step of `gradfused.sequential` and
        `gradfused.step_in_backward`. Every parameter must belong to this optimizer."""
        self._step(self._selected(params))

    def _step(self, selected: list[list[Tensor]], build_native_plans: bool = False) -> None:
        grad_scale = getattr(self, "grad_scale", None)  # set by torch.amp.GradScaler
        found_inf = getattr(self, "found_inf", None)
        self._plan_all(selected)
        for group, params in zip(self.param_groups, selected):
            self._update(group, params, grad_scale=grad_scale, found_inf=found_inf)
            if build_native_plans:
                self._build_native_plan(group, params)

    # NOTE: [the step plan in C++]
    # A whole-optimizer eager step whose groups each have a live StepPlan (csrc/step_plan.h) crosses into
    # C++ with O(1) arguments per bucket: the plan reads and checks the gradients itself. Any doubt (a
    # gradient appeared or went, changed dtype or layout; the state or the hyperparameters that shape the
    # lists changed; torch.compile is tracing) sends the step down the checked path above, which builds
    # the plan again once the same parameters have had gradients for two steps running.
    def _native_plan_key(self, group: dict) -> tuple:
        """What a live plan was built for: the lists it holds and that a plan may run at all (the native
        ops fusing the precision options)."""
        runnable = self._fused(group) is not False and self._fuse_precision
        changes = self._state_changes()  # first: it may make self.state a new table
        return (tuple(used for _, used in self._state_specs(group)), self._keeps_state(group), self.state.serial,
                changes, len(group["params"]), runnable)

    def _build_native_plan(self, group: dict, params: list[Tensor]) -> None:
        if torch.compiler.is_compiling():  # a traced step runs the checked path (NOTE: [the step plan in C++])
            return
        which = tuple(map(id, params))
        previous = self._native_plans.get(id(group))
        if previous is None or previous[1] != which:  # not the same parameters two steps running: wait
            self._native_plans[id(group)] = (None, which, None, None)
            return
        key = self._native_plan_key(group)
        if previous[0] == key or not params or not key[-1]:
            return  # the plan is live, there is nothing to step, or no plan can run this group
        plan = self._plan(group, params)
        key = self._native_plan_key(group)  # after any state the plan created
        if any(is_dtensor(bucket[0]) or bucket[0].is_complex()
               or ops.backend_for(self._name, False if self._fused(group) is False else None, bucket[0].device,
                                  warn=False) is not ops
               for bucket, _, _ in plan):
            return  # local shards, real views, or a bucket without native kernels: the checked path
        native = torch.classes.gradfused.StepPlan(group["params"])
        position = {id(p): i for i, p in enumerate(group["params"])}
        specs, scalar_keys = self._state_specs(group), self._scalar_state_keys(group)
        for b, (bucket, states, _) in enumerate(plan):
            native.add_bucket([position[id(p)] for p in bucket], bucket[0].grad.dtype)
            for name, used in specs:
                native.add_list(b, [st[name] for st in states] if used else [])
            for name in [*scalar_keys, "step"]:
                native.add_list(b, [st[name] for st in states])
        # the master weights ride beside the plan's lists: state dicts do not change under a live plan
        buckets = [(bucket[0].device, indices,
                    {**P.fused_kwargs(group, bucket[0].dtype, states), **self._low_bit_kwargs(group, bucket, states)},
                    bucket)
                   for bucket, states, indices in plan]
        self._native_plans[id(group)] = (key, which, native, buckets)

    def _step_through_native_plans(self, grad_scale: Tensor | None = None, found_inf: Tensor | None = None,
                                   alignment_scales=None) -> bool:
        """Steps every group through its StepPlan; False, having written nothing, where one cannot.
        `alignment_scales(native, b, bucket params)`, from GradientAlignment, gives bucket b's scales, after
        every gradient was gathered and before any update."""
        if torch.compiler.is_compiling() or len(self._native_plans) != len(self.param_groups):
            return False
        plans = []
        for group in self.param_groups:
            key, _, native, buckets = self._native_plans.get(id(group), (None,) * 4)
            if native is None or key != self._native_plan_key(group):
                return False
            self._recheck_hyperparameters(group)
            if not native.gather():
                return False
            plans.append((group, native, buckets))
        for group, native, buckets in plans:
            for b, (device, indices, fused_precision, params) in enumerate(buckets):
                scales = None if alignment_scales is None else alignment_scales(native, b, params)
                ops.run_plan(self.op_name, native, b, **self._op_kwargs(group, device, indices, grad_scale, found_inf,
                                                                         scales), **fused_precision)
        return True

    def _selected(self, only) -> list[list[Tensor]]:
        """Per group, the parameters to step: those with a gradient, restricted to `only` unless it is None.
        Every check runs here, before anything is written."""
        wanted = None if only is None else self._owned(only)
        return [self._collect(group, wanted) for group in self.param_groups]

    def _owned(self, params) -> set[int]:
        params = [params] if isinstance(params, Tensor) else list(params)
        owned = {id(p) for group in self.param_groups for p in group["params"]}
        for i, p in enumerate(params):
            if not isinstance(p, Tensor) or id(p) not in owned:
                raise ValueError(f"{self._name}.step_parameters: params[{i}] is not a parameter of this optimizer")
        return {id(p) for p in params}

    def _collect(self, group: dict, wanted: set[int] | None = None) -> list[Tensor]:
        """The group's parameters that have a gradient (and are in `wanted`), checked. torch's own `.grad`
        setter already guarantees the gradient's device and shape; its layout and (with grad_dtype) dtype
        can differ."""
        self._recheck_hyperparameters(group)
        params, fp32_grads = [], []
        draws = R.draws(group)
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is None or (wanted is not None and id(p) not in wanted):
                continue
            if g.layout != torch.strided or g.dtype != p.dtype or g.device != p.device:
                if g.layout == torch.strided and g.device == p.device and P.fp32_grad_ok(p, g):
                    fp32_grads.append(id(p))  # torch's param.grad_dtype = torch.float32
                else:
                    self._raise_bad_grad(group, i, p, g)
            if draws and is_dtensor(p):
                raise ValueError(f"{self._name}: params[{i}] is a sharded DTensor; grad_noise, grad_dropout, "
                                 "lr_dropout and stochastic_rounding key each element by its index in the whole "
                                 "tensor, which a shard does not know yet: they are not supported with "
                                 "FSDP2/DTensor parameters")
            params.append(p)
        self._fp32_grads[self._group_index(group)] = tuple(fp32_grads)
        return params

    def _group_index(self, group: dict) -> int:
        """The position of `group` in param_groups: a key that torch.compile traces on every supported torch,
        where id() of a dict breaks the graph before torch 2.13."""
        for k, g in enumerate(self.param_groups):
            if g is group:
                return k
        raise ValueError(f"{self._name}: the group is not one of this optimizer's param_groups")

    def _recheck_hyperparameters(self, group: dict) -> None:
        if not torch.compiler.is_compiling():  # NOTE: [hyperparameter checks under torch.compile]
            with V.without_device_reads():  # NOTE: [no host synchronisation]
                self._check_hyperparameters(group)

    # NOTE: [hyperparameter checks under torch.compile]
    # Every eager step re-checks its groups, since a scheduler or the user may have changed a value. A
    # compiled step does not: a float that changes between calls (a scheduled lr) is traced as a symbolic
    # value, which Python-level checks like math.isfinite cannot inspect without breaking the graph. The
    # values were checked when the groups were made, and the kernels treat them as plain numbers.
    def _raise_bad_grad(self, group: dict, i: int, p: Tensor, g: Tensor) -> None:
        where = f"param group {next(k for k, gr in enumerate(self.param_groups) if gr is group)}, params[{i}]"
        if g.layout != torch.strided:
            raise RuntimeError(f"{self._name}: the gradient of {where} is sparse; "
                               f"{type(self).__name__} does not support sparse gradients")
        if g.dtype != p.dtype:
            raise RuntimeError(f"{self._name}: the gradient of {where} has dtype {g.dtype} but the "
                               f"parameter has {p.dtype} (expected the parameter's dtype, or float32 for a "
                               "bfloat16/float16 parameter)")
        raise RuntimeError(f"{self._name}: the gradient of {where} is on {g.device} but the parameter "
                           f"is on {p.device}")

    @staticmethod
    def _step_dtype(group: dict) -> torch.dtype:
        """float32 as torch.optim's, but float64 where the step keys random draws: a float32 count stops at
        2^24 steps, and the draws would repeat from there (NOTE: [exact step counts] in csrc/ops_shared.h)."""
        return torch.float64 if R.draws(group) else torch.float32

    def _init_state(self, p: Tensor, group: dict, specs: list[tuple[str, bool]]) -> dict:
        state = self.state.get(p)
        if state is None:  # not self.state[p]: torch.compile cannot trace a defaultdict subclass's __missing__
            self.state[p] = {}
            state = self.state[p]  # the ParamState the table made of it
        step_dtype = self._step_dtype(group)
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=step_dtype, device=p.device)
        elif state["step"].dtype != step_dtype:  # a checkpoint, or the group's options changed
            state["step"] = state["step"].to(step_dtype)
        dtype = P.state_dtype(group, p)
        eight_bit = L.quantized(group, p)
        for key, used in specs:
            if used and key not in state:
                if eight_bit:
                    state.update(L.new_state(p, key))
                else:
                    state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        for key, initial in self._scalar_state_specs(group):
            if key not in state:
                state[key] = torch.full((), initial, dtype=torch.float32, device=p.device)
        if group["master_weights"] and p.dtype in P.HALF and "master_weight" not in state:
            state["master_weight"] = p.detach().to(torch.float32, copy=True)
        return state

    @staticmethod
    def _buckets(params: list[Tensor], by_grad_dtype: bool = False, group: dict | None = None) -> list[list[int]]:
        """Indices of `params` grouped by (device, dtype[, gradient dtype][, 8-bit states in `group`]): one op
        call per bucket, in a fixed order."""
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            buckets[(p.device, p.dtype, p.grad.dtype if by_grad_dtype else None,
                     group is not None and L.quantized(group, p))].append(i)
        return list(buckets.values())

    # NOTE: [the step plan]
    # Grouping parameters into (device, dtype) buckets and finding their state costs microseconds per
    # tensor, every step, for a result that only changes when the set of parameters with gradients does.
    # The plan caches, per group and set of parameters stepped, the buckets and each parameter's state
    # *dict* (the dicts, not the tensors: a state tensor replaced by hand is still seen). It is rebuilt when
    # the state keys in use or the state itself (load_state_dict, clear) change. A group that keeps no
    # state (_keeps_state) gets scratch step counts, held by the plan alone: its rule reads no t. Per-layer steps
    # (step_parameters) keep one plan per layer beside the whole step's; _MAX_PLANS bounds the cache
    # when the set of parameters with gradients changes from step to step.
    def _state_changes(self) -> int:
        """How often self.state changed (NOTE: [state changes] in _state_table.py); a table put in its place
        by hand (opt.state = defaultdict(dict), a reset) is made a StateTable, and every plan dropped."""
        if not isinstance(self.state, StateTable):
            self.state = StateTable.of(self.state)
            self._plans.clear()
            self._native_plans = {}
        return self.state.changes[0]

    def _plan(self, group: dict, params: list[Tensor]) -> list[tuple[list[Tensor], list[dict], list[int]]]:
        """[(bucket params, their state dicts, their indices in the optimizer)] for `params` (from _collect),
        state created as needed. The indices key the random streams."""
        specs = self._state_specs(group)
        index = self._group_index(group)
        which = (index, tuple(map(id, params)), self._fp32_grads.get(index, ()))
        stateful = self._keeps_state(group)
        # a new state dict (load_state_dict) goes through __setstate__, which drops every plan
        changes = self._state_changes()  # first: it may make self.state a new table
        key = (tuple(used for _, used in specs), stateful, self.state.serial, changes)
        cached = self._plans.get(which)
        if cached is not None and cached[0] == key:
            self._keep_codes_in_parameter_order(group, cached[1])
            return cached[1]
        plan = []
        for idx in self._buckets(params, by_grad_dtype=True, group=group):
            bucket = [params[i] for i in idx]
            states = ([self._init_state(p, group, specs) for p in bucket] if stateful else
                      [{"step": torch.zeros((), dtype=self._step_dtype(group), device=p.device)} for p in bucket])
            self._check_state_devices(group, bucket, states)
            plan.append((bucket, states, self._param_indices(bucket)))
        key = key[:3] + (self._state_changes(),)  # state creation above changed it
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[which] = (key, plan)
        self._keep_codes_in_parameter_order(group, plan)
        return plan

    def _keep_codes_in_parameter_order(self, group: dict, plan) -> None:
        """8-bit codes of a parameter whose memory format changed since they were made (the model went to
        channels_last) are encoded again in its order before the step (L.in_parameter_order). A changed
        state dict drops the plans, so this looks at each cached state only after that."""
        if group["state_bits"] != 8:
            return
        keys = [key for key, used in self._state_specs(group) if used]
        for bucket, states, _ in plan:
            for p, st in zip(bucket, states):
                for key in keys:
                    codes = st.get(key)
                    if L.is_codes(codes) and codes.stride() != p.stride():
                        L.put_in_parameter_order(st, key, p)

    def _plan_all(self, selected: list[list[Tensor]]) -> None:
        """Every group's plan, built (and so checked) before any group is written: a step fails whole."""
        for group, params in zip(self.param_groups, selected):
            if params:
                self._plan(group, params)

    def _check_state_devices(self, group: dict, bucket: list[Tensor], states: list[dict]) -> None:
        """NOTE: [one device per call] for a whole step: a state on another device than its parameter (moved
        or replaced by hand, which rebuilds the plan: NOTE: [state changes]) fails the step by name."""
        for p, st in zip(bucket, states):
            for key, value in st.items():
                if isinstance(value, Tensor) and value.device != p.device:
                    i = next(k for k, q in enumerate(group["params"]) if q is p)
                    raise RuntimeError(f"{self._name}: state {key!r} of param group {self._group_index(group)}, "
                                       f"params[{i}] is on {value.device} but the parameter is on {p.device}; all "
                                       "tensors of one step must be on one device")

    def _update(self, group: dict, params: list[Tensor], *, grad_scale: Tensor | None = None,
                found_inf: Tensor | None = None, alignment_scales: list[Tensor] | None = None) -> None:
        """Runs the op over `params` (from _collect), one call per bucket of the plan.
        `alignment_scales[b]` holds the GradientAlignment scales of bucket b, if any."""
        if not params:
            return
        specs = self._state_specs(group)
        scalar_keys = self._scalar_state_keys(group)
        for b, (bucket, states, indices) in enumerate(self._plan(group, params)):
            device = bucket[0].device
            backend = ops.backend_for(self._name, self._fused(group), device)
            op = getattr(backend, self.op_name)
            tensors = [bucket, [p.grad for p in bucket], *[[st[key] for st in states] if used else []
                                                           for key, used in specs]]
            if bucket[0].is_complex():  # NOTE: [complex parameters]
                tensors = real_views(*tensors)
            if is_dtensor(bucket[0]):  # the elementwise update of each rank's shard
                tensors = local_shards(self._name, *tensors)
            fused_precision = {}
            work = None
            if backend is ops and self._fuse_precision:  # NOTE: [mixed precision in one pass]
                fused_precision = P.fused_kwargs(group, bucket[0].dtype, states)
            elif (P.uses_fp32_work(group, bucket[0].dtype, eight_bit=L.quantized(group, bucket[0]))
                  or bucket[0].grad.dtype != bucket[0].dtype):
                work = P.Fp32Work(group, states, tensors)
                tensors = work.lists
            op(
                *tensors,
                *[[st[key] for st in states] for key in scalar_keys],
                [st["step"] for st in states],
                **self._op_kwargs(group, device, indices, grad_scale, found_inf,
                                  None if alignment_scales is None else alignment_scales[b]),
                **fused_precision,
                **self._low_bit_kwargs(group, bucket, states),
            )
            if work is not None:
                work.write_back(indices if group["stochastic_rounding"] else [], grads_written=grad_scale is not None)

    @staticmethod
    def _fused(group: dict) -> bool | None:
        """The group's `fused`, False where it is differentiable (NOTE: [differentiable steps])."""
        return False if group["differentiable"] else group.get("fused")

    def _low_bit_kwargs(self, group: dict, bucket: list[Tensor], states: list[dict]) -> dict:
        """The op's 8-bit state arguments for a bucket (docs/low-bit-states.md); none at full precision."""
        if not L.quantized(group, bucket[0]):
            return {}
        return L.op_kwargs([key for key, used in self._state_specs(group) if used], states)

    def _op_kwargs(self, group: dict, device: torch.device, indices: list[int], grad_scale: Tensor | None,
                   found_inf: Tensor | None, alignment_scales: Tensor | None = None) -> dict[str, Any]:
        """The op's keyword arguments for one bucket: lr, the hyperparameters and the pipeline options."""
        # Tensor betas, say, as torch.optim allows: the op takes numbers, and the reference would broadcast
        # a tensor of shape [1, 1, 1] into the states' shape
        hyper = self._op_hyperparameters(group)
        for k, v in hyper.items():
            if isinstance(v, Tensor):
                V.refuse_capture(self._name, f"{k} is a tensor, read on the host at each step (only lr may be a "
                                 "tensor on the GPU); pass it as a number")
                hyper[k] = v.item()
        return dict(lr=group["lr"], **hyper, **R.op_kwargs(group),
                    param_indices=indices if R.draws(group) else None,  # else the indices key nothing
                    maximize=group["maximize"],
                    grad_scale=None if grad_scale is None else grad_scale.to(device),
                    found_inf=None if found_inf is None else found_inf.to(device), alignment_scales=alignment_scales)

    def _param_indices(self, params: list[Tensor]) -> list[int]:
        """Each parameter's position in the optimizer (over all groups): a stable key for random streams."""
        index = {id(p): i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        return [index[id(p)] for p in params]

    def _check_common(self, group: dict) -> None:
        V.check_lr(self._name, group["lr"])
        V.check_nonneg(self._name, "weight_decay", group.get("weight_decay", 0.0))  # GradientAscent has none
        V.check_bool(self._name, "maximize", group["maximize"])
        V.check_switch(self._name, "fused", group.get("fused"))
        V.check_switch(self._name, "foreach", group.get("foreach"))
        V.check_bool(self._name, "capturable", group["capturable"])
        V.check_bool(self._name, "differentiable", group["differentiable"])
        if group["differentiable"] and group.get("fused"):  # torch's words (NOTE: [differentiable steps])
            raise RuntimeError(f"{self._name}: `fused` does not support `differentiable` (the kernels update in place, "
                               "outside autograd; fused=None steps a differentiable optimizer with the reference)")
        if group["differentiable"] and group["state_bits"] == 8:
            raise ValueError(f"{self._name}: differentiable=True needs full-precision states; 8-bit states are "
                             "rounded, which has no gradient (expected state_bits=32)")
        P.check(self._name, group)
        R.check(self._name, group)
        L.check(self._name, group)


