"""torch.compile: `optimizer.step()` traces into one graph (fullgraph=True) for every optimizer and wrapper,
with the same results as eager; a scheduled tensor lr does not recompile; a compiled training step runs."""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

import gradfused as gf
from devices import DEVICES
from optim_table import CASES, all_states
from torch_versions import needs_compile

pytestmark = needs_compile


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _twins(make, shapes=((10,), (3, 4), ())):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, requires_grad=True) for s in shapes]
    twins = [p.detach().clone().requires_grad_() for p in params]
    return params, make(params), twins, make(twins)


def _step_side_by_side(step, eager, params, twins, gen, steps=1):
    """`steps` times: the same random gradients to both parameter lists, then `step()` and `eager.step()`."""
    for _ in range(steps):
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        step()
        eager.step()


def _assert_bitwise(params, opt, twins, twin_opt):
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for (_, s), (_, t) in zip(all_states(opt), all_states(twin_opt), strict=True):
        torch.testing.assert_close(s, t, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_compiled_step_is_one_graph_and_equals_eager(case):
    params, opt, twins, eager = _twins(lambda p: case.make(p, True))
    counter = CompileCounter()  # Dynamo's graph capture and our fake kernels; the kernels themselves run

    @torch.compile(fullgraph=True, backend=counter)
    def step():
        opt.step()

    _step_side_by_side(step, eager, params, twins, torch.Generator().manual_seed(1), steps=4)
    _assert_bitwise(params, opt, twins, eager)
    assert counter.frame_count <= 2  # the first step, which creates the state, and the steady one


def test_inductor_compiled_step_equals_eager():
    params, opt, twins, eager = _twins(lambda p: gf.GradientAlignment(gf.AdamW(p, lr=1e-2)))
    step = torch.compile(opt.step, fullgraph=True)
    _step_side_by_side(step, eager, params, twins, torch.Generator().manual_seed(1), steps=3)
    _assert_bitwise(params, opt, twins, eager)


@pytest.mark.parametrize("wrap", [False, True], ids=["AdamW", "Align(AdamW)"])
def test_scheduled_tensor_lr_does_not_recompile(wrap, recwarn):
    def make(params, lr):
        opt = gf.AdamW(params, lr=lr)
        return gf.GradientAlignment(opt) if wrap else opt

    params, opt, twins, eager = _twins(lambda p: make(p, torch.tensor(0.01)))
    eager = make(twins, 0.01)  # float lr, eager: the same numbers
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in (opt, eager)]
    counter = CompileCounter()

    @torch.compile(fullgraph=True, backend=counter)
    def step():
        opt.step()

    gen = torch.Generator().manual_seed(1)
    for i in range(6):
        _step_side_by_side(step, eager, params, twins, gen)
        for s in scheds:
            s.step()
        if i == 1:
            warmed_up = counter.frame_count
    assert counter.frame_count == warmed_up  # four lr changes, no recompilation
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.01 * 0.5**6)
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q)
    # the scheduler saw each step although it could not wrap `step` (NOTE: [LR schedulers and torch.compile])
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


def test_compiled_training_step_equals_eager():
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [gf.RAdamW(m.parameters(), lr=torch.tensor(1e-2)) for m in models]

    def train_step(model, opt, x, y):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    compiled = torch.compile(train_step)
    for _ in range(4):
        x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
        torch.testing.assert_close(compiled(models[0], opts[0], x, y), train_step(models[1], opts[1], x, y))
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_step_in_a_training_loop_never_recompiles(device):
    """A 20-step training loop, as users write it: zero_grad(set_to_none=False), backward, a compiled
    `opt.step()` (fullgraph) and an LR scheduler over a tensor lr. At most two frames (the step that
    creates the state and the steady one), so no recompilation, and eager's numbers bit for bit."""
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(device)
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [gf.AdamW(m.parameters(), lr=torch.tensor(1e-2, device=device), weight_decay=0.1) for m in models]
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5) for o in opts]
    counter = CompileCounter()

    @torch.compile(fullgraph=True, backend=counter)
    def step():
        opts[0].step()

    for _ in range(20):
        x, y = torch.randn(8, 16, device=device), torch.randint(0, 4, (8,), device=device)
        for model, opt in zip(models, opts):
            opt.zero_grad(set_to_none=False)
            torch.nn.functional.cross_entropy(model(x), y).backward()
        step()
        opts[1].step()
        for s in scheds:
            s.step()
    assert counter.frame_count <= 2
    _assert_bitwise(list(models[0].parameters()), opts[0], list(models[1].parameters()), opts[1])
