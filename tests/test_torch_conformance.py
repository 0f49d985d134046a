"""Drop-in conformance: PyTorch's own optimizer test inputs (torch.testing._internal.common_optimizers,
`optim_db`) run on gradfused's optimizer of the same name, beside torch.optim's.

- Every `optim_inputs_func` configuration, on each device (the CUDA list adds torch's capturable and
  tensor-lr/betas inputs), with the native kernels and with the reference (fused=False): 10 steps, the
  parameters and every state torch keeps compared after each one, plainly, under each of torch's
  scheduler inputs, and with the state_dicts swapped between the two halfway.
- Every `optim_error_inputs_func` input raises (or warns) with torch's exception type and a message that
  torch's `error_regex` matches, except the differences listed in KNOWN_DIFFERENCES (and docs/torch-optim-differences.md).

torch's test helpers import `expecttest` (requirements-dev.txt); without it these tests skip.
"""
import copy

import pytest
import torch

import gradfused as gf
from devices import DEVICES
from torch_versions import TENSOR_BETAS_ERROR_INPUT, TORCH

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (requirements-dev.txt)")
from torch.optim.lr_scheduler import ReduceLROnPlateau  # noqa: E402
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db  # noqa: E402

OURS = {"Adam": gf.Adam, "AdamW": gf.AdamW, "RAdam": gf.RAdam, "NAdam": gf.NAdam, "RMSprop": gf.RMSprop,
        "SGD": gf.SGD}
INFOS = {info.optim_cls.__name__: info for info in optim_db if info.optim_cls.__name__ in OURS}
STEPS = 10
SWAP_AT = 5

# torch's error inputs that gradfused accepts on purpose: (optimizer, error_regex) -> why.
FOREACH_TENSOR = ("gradfused is always fused (foreach is ignored), and its kernels take a tensor lr or betas "
                  "without capturable; torch's foreach=True implementation cannot")
KNOWN_DIFFERENCES = {
    (name, regex): FOREACH_TENSOR
    for name in ("Adam", "AdamW")
    for regex in ("lr as a Tensor is not supported for capturable=False and foreach=True",
                  r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True")
    if "betas" not in regex or TORCH >= TENSOR_BETAS_ERROR_INPUT
}


def optim_inputs(device):
    return [(name, k, oi) for name, info in INFOS.items() for k, oi in enumerate(info.optim_inputs_func(device=device))]


def _id(case):
    name, k, oi = case
    return f"{name}-{k}-{oi.desc.replace(' ', '_')}"


def _devices():
    """(device name, marks) of tests/devices.py's DEVICES, whose CUDA entry is a pytest.param."""
    return [(d, ()) if isinstance(d, str) else (d.values[0], d.marks) for d in DEVICES]


CASES = [pytest.param(device, case, id=f"{device}-{_id(case)}", marks=marks)
         for device, marks in _devices() for case in optim_inputs(device)]


def _make_pair(name, kwargs, device, dtype, fused):
    """The same parameters in two groups (the second inheriting the defaults) for torch and for us."""
    if dtype == torch.float64 and isinstance(kwargs.get("lr"), torch.Tensor) and kwargs.get("weight_decay"):
        # torch's for-loop and foreach implementations form 1 - lr·wd in the dtype of a tensor lr: float32
        # beside float64 parameters, 1e-7 off; gradfused forms it in float64 (docs/torch-optim-differences.md)
        kwargs = {**kwargs, "lr": kwargs["lr"].to(torch.float64)}
    shapes = [(5, 3), (3,), (4, 2, 2)]
    start = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    theirs = [p.clone().requires_grad_() for p in start]
    ours = [p.clone().requires_grad_() for p in start]
    groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:]}]  # noqa: E731
    t = INFOS[name].optim_cls(groups(theirs), **copy.deepcopy(kwargs))  # a tensor lr is stepped by each scheduler
    g = OURS[name](groups(ours), **copy.deepcopy(kwargs), fused=fused)
    return t, theirs, g, ours


def _step_both(t, theirs, g, ours):
    """One step of each optimizer on the same fresh gradients."""
    for p, q in zip(theirs, ours):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    t.step()
    g.step()


def _assert_same(t, theirs, g, ours, where):
    torch_keys = None if not isinstance(t, torch.optim.SGD) else {"momentum_buffer"}  # not the `step` we gave it
    for p, q in zip(theirs, ours):
        torch.testing.assert_close(q, p, msg=lambda m: f"{where}, parameter: {m}")
        for key, value in t.state[p].items():  # every state torch keeps (ours may keep `step` too)
            if torch_keys is not None and key not in torch_keys:
                continue
            assert key in g.state[q], f"{where}: gradfused lacks state {key!r}"
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(g.state[q][key].to(value), value, msg=lambda m: f"{where}, {key}: {m}")
            else:
                assert float(g.state[q][key]) == pytest.approx(float(value)), f"{where}, {key}"


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("scenario", ["plain", "schedulers", "state_dict_swap"])
@pytest.mark.parametrize("device, case", CASES)
def test_torch_optim_input_gives_torch_numbers(device, case, scenario, dtype, fused):
    name, k, oi = case
    assert oi.params is None, "torch's inputs leave the parameters to the test"
    t, theirs, g, ours = _make_pair(name, oi.kwargs, device, dtype, fused)
    schedulers = []
    if scenario == "schedulers":
        make = INFOS[name].scheduler_inputs[k % len(INFOS[name].scheduler_inputs)]
        schedulers = [(f(t), f(g)) for f in make]
    for step in range(1, STEPS + 1):
        _step_both(t, theirs, g, ours)
        for s_t, s_g in schedulers:
            args = (1.0,) if isinstance(s_t, ReduceLROnPlateau) else ()  # a flat metric: the plateau cuts lr
            s_t.step(*args)
            s_g.step(*args)
        _assert_same(t, theirs, g, ours, f"{name} {oi.desc!r}, step {step}")
        if scenario == "state_dict_swap" and step == SWAP_AT:
            from_torch, from_us = t.state_dict(), g.state_dict()
            g.load_state_dict(copy.deepcopy(from_torch))
            t.load_state_dict(copy.deepcopy(from_us))
            _assert_same(t, theirs, g, ours, f"{name} {oi.desc!r}, after swapping state_dicts")
    for group_t, group_g in zip(t.param_groups, g.param_groups):
        assert float(group_g["lr"]) == pytest.approx(float(group_t["lr"]))


# torch defines these error inputs for the CPU only (its CUDA lists are empty for these optimizers): they
# are construction errors, the same on every device.
@pytest.mark.parametrize("name", list(INFOS))
def test_torch_error_inputs_raise_as_torch(name):
    """Each input checked; the failures are collected so that one run lists them all."""
    device = "cpu"
    failures, checked = [], 0
    for err in INFOS[name].optim_error_inputs_func(device=device, dtype=torch.float32):
        oi = err.optimizer_error_input
        kwargs = copy.deepcopy(oi.kwargs)
        known = KNOWN_DIFFERENCES.get((name, err.error_regex))
        checked += 1

        def run():
            opt = OURS[name](oi.params, **kwargs)
            if err.error_on == OptimizerErrorEnum.STEP_ERROR:
                opt.step()

        try:
            if known:  # accepted on purpose: it must construct and step
                assert oi.params is None and err.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR
                p = torch.randn(3, device=device, requires_grad=True)
                p.grad = torch.ones_like(p)
                OURS[name]([p], **kwargs).step()
            elif issubclass(err.error_type, Warning):
                with pytest.warns(err.error_type, match=err.error_regex):
                    run()
            else:
                with pytest.raises(err.error_type, match=err.error_regex):
                    run()
        except BaseException as e:  # noqa: BLE001 (collected, then reported together)
            failures.append(f"{err.error_type.__name__} {err.error_regex!r} for {oi.desc or oi.kwargs}: {e!r}")
    assert checked > 0
    assert not failures, "\n".join(failures)


def test_known_differences_are_still_torch_inputs():
    """Every documented difference names an error input torch still has."""
    present = {(name, err.error_regex) for name, info in INFOS.items()
               for err in info.optim_error_inputs_func(device="cpu", dtype=torch.float32)}
    assert set(KNOWN_DIFFERENCES) <= present


# ---- the breaks that running these inputs found, one test each (besides the suite above) ----

ALL_CLASSES = [gf.SGD, gf.PersistentSGD, gf.Adam, gf.AdamW, gf.RAdam, gf.RAdamW, gf.AdEMA, gf.NAdam, gf.RMSprop,
               gf.GradientAscent]


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_torch_implementation_switches_are_accepted(cls):
    for switches in (dict(foreach=None), dict(foreach=False), dict(foreach=True), dict(capturable=False),
                     dict(capturable=True), dict(differentiable=False)):
        p = torch.randn(4, requires_grad=True)
        opt = cls([p], **switches)
        p.grad = torch.ones_like(p)
        opt.step()
        assert all(opt.param_groups[0][k] is v for k, v in switches.items())
    with pytest.raises(RuntimeError, match=r"`fused` does not support `differentiable`"):
        cls([torch.randn(4, requires_grad=True)], differentiable=True, fused=True)
    for name, value in (("fused", 1), ("fused", 0), ("foreach", "yes"), ("capturable", None)):
        with pytest.raises(ValueError, match=rf"Invalid {name} value"):
            cls([torch.randn(4, requires_grad=True)], **{name: value})


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_hyperparameters_are_checked_before_params(cls):
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        cls(None, lr=-1.0)


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_tensor_betas_of_any_shape_give_torch_numbers(name, fused):
    kwargs = dict(lr=torch.tensor(0.01), betas=(torch.tensor([[[0.9]]]), torch.tensor([[0.99]])))
    probe = torch.zeros(2, 3, requires_grad=True)
    probe.grad = torch.ones(2, 3)
    try:
        getattr(torch.optim, name)([probe], **kwargs).step()
    except RuntimeError as e:  # older torch broadcasts the betas into the state's shape
        pytest.skip(f"torch {torch.__version__}'s own {name} refuses betas of these shapes ({e})")
    t, theirs, g, ours = _make_pair(name, kwargs, "cpu", torch.float32, fused)
    for step in range(STEPS):
        _step_both(t, theirs, g, ours)
        _assert_same(t, theirs, g, ours, f"step {step}")


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_sgd_first_step_sets_the_buffer_to_the_gradient(fused):
    p = torch.zeros(3, requires_grad=True)
    opt = gf.SGD([p], lr=1.0, momentum=0.9, dampening=0.5, fused=fused)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    assert torch.equal(opt.state[p]["momentum_buffer"], torch.tensor([1.0, 2.0, 3.0]))  # not (1 - 0.5) g
    opt.step()
    assert torch.equal(opt.state[p]["momentum_buffer"], torch.tensor([1.4, 2.8, 4.2]))  # 0.9 b + 0.5 g
    persistent = gf.PersistentSGD([q := torch.zeros(3, requires_grad=True)], lr=1.0, decay=0.9, dampening=0.5)
    q.grad = torch.tensor([1.0, 2.0, 3.0])
    persistent.step()
    assert torch.equal(persistent.state[q]["momentum_buffer"], torch.tensor([0.5, 1.0, 1.5]))  # the seed's rule


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_sgd_without_momentum_keeps_no_state(fused):
    p = torch.randn(3, requires_grad=True)
    opt = gf.SGD([p], lr=0.1, fused=fused)
    for _ in range(3):
        p.grad = torch.ones(3)
        opt.step()
    assert len(opt.state) == 0 and opt.state_dict()["state"] == {}


@pytest.mark.parametrize("decoupled", [False, True])
def test_persistent_sgd_state_dict_loads_into_torch_sgd(decoupled):
    shapes = [(5, 3), (3,)]
    ours = [torch.randn(s, requires_grad=True) for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    g = gf.PersistentSGD(ours, lr=0.1, decay=0.9, weight_decay=0.01, decoupled_weight_decay=decoupled)
    t = torch.optim.SGD(theirs, lr=0.1)
    for _ in range(3):
        for p in ours:
            p.grad = torch.randn_like(p)
        g.step()
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            q.copy_(p)
    t.load_state_dict(copy.deepcopy(g.state_dict()))  # used to load, then fail at step() with KeyError: 'momentum'
    assert t.param_groups[0]["momentum"] == 0.9
    _step_both(t, theirs, g, ours)
    if not decoupled:  # torch's SGD has no decoupled weight decay (documented in the class)
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(q, p)
    g.load_state_dict(copy.deepcopy(t.state_dict()))  # and back
    assert g.param_groups[0]["decay"] == 0.9 and "momentum" not in g.param_groups[0]
