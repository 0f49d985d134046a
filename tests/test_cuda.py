"""The CUDA engine (csrc/cuda/): every optimizer of the table against the pure-PyTorch reference on the
CPU, mixed precision fused in the kernel, the random draws bitwise equal to the CPU engine's, no host
synchronisation in step(), CUDA graph capture, GradScaler, deterministic alignment sums and
checkpoints across devices. Every test here carries the `cuda` marker and skips without a GPU."""
import copy

import pytest
import torch

import gradfused as gf
from devices import cuda_ready
from optim_table import CASES, DTYPES, all_states, tolerance
from test_mixed_precision import BF16_STATES, COMBINATIONS, OPTIONS
from test_parity import STEPS, clone_params, groups, make_params

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def _engine():
    if not cuda_ready():
        pytest.fail("a GPU is present but this gradfused build has no CUDA engine (gradfused info)")


def to_cuda(params):
    return [p.detach().to("cuda", copy=True).requires_grad_() for p in params]


def step_side_by_side(opts, param_lists, dtype, steps, gen):
    """`steps` times: the same gradients (drawn on the CPU in float64, cast to `dtype`) for every list."""
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype) for p in param_lists[0]]
        for params in param_lists:
            for p, g in zip(params, grads):
                p.grad = g.to(p.device, copy=True)
        for opt in opts:
            opt.step()


def assert_all_close(cuda_opt, cuda_params, ref_opt, ref_params, tol, what=""):
    for p, q in zip(cuda_params, ref_params):
        torch.testing.assert_close(p.cpu(), q, **tol, msg=lambda m: f"{what} param: {m}")
    cuda_states, ref_states = all_states(cuda_opt), all_states(ref_opt)
    assert [k for k, _ in cuda_states] == [k for k, _ in ref_states]
    for (key, a), (_, b) in zip(cuda_states, ref_states):
        assert a.device.type == "cuda" and a.dtype == b.dtype, key
        torch.testing.assert_close(a.cpu(), b, **tol, msg=lambda m: f"{what} {key}: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_matches_reference(case, dtype):
    """Shapes 0, 0-d, 1, 4097, 2**20+3, (3,5,7) and a non-contiguous view, two groups, 8 steps, every state."""
    ref_params = make_params(dtype)
    cuda_params = to_cuda(ref_params)
    ref = case.make(groups(ref_params, case), False)
    cuda = case.make(groups(cuda_params, case), True)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        step_side_by_side([cuda, ref], [cuda_params, ref_params], dtype, 1, gen)
        assert_all_close(cuda, cuda_params, ref, ref_params, tolerance(dtype), f"step {step + 1}")


@pytest.mark.parametrize("dtype, option", COMBINATIONS, ids=[f"{d}-{o}" for d, o in COMBINATIONS])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_mixed_precision_matches_reference(case, dtype, option):
    """state_dtype=float32, master weights and stochastic rounding fused in the kernel, against the CPU
    reference's fp32 working copies (the same Philox bits for stochastic rounding)."""
    shapes = [(4097,), (3, 5, 7), (), (0,), (2**20 + 3,)]
    gen = torch.Generator().manual_seed(0)
    ref_params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    cuda_params = to_cuda(ref_params)
    ref = case.make(ref_params, False, **OPTIONS[option])
    cuda = case.make(cuda_params, True, **OPTIONS[option])
    step_side_by_side([cuda, ref], [cuda_params, ref_params], dtype, STEPS, torch.Generator().manual_seed(1))
    assert_all_close(cuda, cuda_params, ref, ref_params, {"atol": 5e-3, "rtol": 5e-3})


@pytest.mark.parametrize("option", list(BF16_STATES))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_bf16_states_of_fp32_parameters_match_reference(case, option):
    """state_dtype=torch.bfloat16 on fp32 parameters, to nearest and at random (Philox words 1 + k, the
    CPU's bits), against the CPU reference's fp32 working copies: the states within the 16-bit tolerance
    of docs/algorithms.md §5 (one bf16 rounding apart where fp32 sums differ in their last bit)."""
    shapes = [(4097,), (3, 5, 7), (), (0,), (2**20 + 3,)]
    gen = torch.Generator().manual_seed(0)
    ref_params = [torch.randn(s, generator=gen, dtype=torch.float64).float().requires_grad_() for s in shapes]
    cuda_params = to_cuda(ref_params)
    ref = case.make(ref_params, False, **BF16_STATES[option])
    cuda = case.make(cuda_params, True, **BF16_STATES[option])
    step_side_by_side([cuda, ref], [cuda_params, ref_params], torch.float32, STEPS, torch.Generator().manual_seed(1))
    assert all(p.dtype == torch.float32 for p in cuda_params)
    assert_all_close(cuda, cuda_params, ref, ref_params, {"atol": 5e-3, "rtol": 5e-3})


@pytest.mark.parametrize("option", [None, "state_fp32", "master", "stochastic"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_fp32_gradients_of_bf16_parameters(case, option):
    """param.grad_dtype = torch.float32: the kernel reads the fp32 gradient as such (a uniform branch),
    against the CPU reference's fp32 working copies."""
    gen = torch.Generator().manual_seed(0)
    ref_params = [torch.randn(s, generator=gen, dtype=torch.float64).bfloat16().requires_grad_()
                  for s in [(4097,), (3, 5, 7), (), (0,)]]
    cuda_params = to_cuda(ref_params)
    for p in ref_params + cuda_params:
        p.grad_dtype = torch.float32
    kwargs = OPTIONS[option] if option else {}
    ref, cuda = case.make(ref_params, False, **kwargs), case.make(cuda_params, True, **kwargs)
    step_side_by_side([cuda, ref], [cuda_params, ref_params], torch.float32, STEPS, torch.Generator().manual_seed(1))
    assert cuda_params[0].grad.dtype == torch.float32
    assert_all_close(cuda, cuda_params, ref, ref_params, {"atol": 5e-3, "rtol": 5e-3})


def test_mixed_precision_is_one_pass_without_working_copies():
    """bf16 parameters with master weights: the step allocates no fp32 working copies on the GPU."""
    params = [torch.randn(1 << 20, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(4)]
    opt = gf.AdamW(params, master_weights=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    opt.step()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before < 1 << 16  # bytes: no tensor-sized temporary


@pytest.mark.parametrize("option", ["dropout", "noise"])
def test_random_draws_equal_the_cpu_engines(option):
    """The same Philox keys on both engines: the dropout masks are bitwise equal; the noise, formed with
    the devices' own log and cos in double, agrees to float32 rounding."""
    kw = dict(decay=0.9, grad_dropout=0.3, lr_dropout=0.5, seed=11) if option == "dropout" else \
        dict(decay=0.9, grad_noise=(0.01, 0.55), seed=11)
    cpu_params = [torch.randn(s, dtype=torch.float32).requires_grad_() for s in [(4097,), (2**20 + 3,), (7, 9)]]
    cuda_params = to_cuda(cpu_params)
    cpu, cuda = gf.PersistentSGD(cpu_params, **kw), gf.PersistentSGD(cuda_params, **kw)
    step_side_by_side([cpu, cuda], [cpu_params, cuda_params], torch.float32, 5, torch.Generator().manual_seed(2))
    for p, q in zip(cpu_params, cuda_params):
        if option == "dropout":
            assert torch.equal(p, q.cpu())
        else:
            torch.testing.assert_close(p, q.cpu(), rtol=2e-6, atol=1e-7)


def _model_and_data(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).cuda()
    x, y = torch.randn(32, 64, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    return model, x, y


# fused=True: GradScaler hands the step its scale and found_inf on the GPU, as for torch's fused optimizers
# (NOTE: [GradScaler: who unscales]); otherwise its own unscale_ reads found_inf on the host
OPTIMIZERS = {
    "AdamW": lambda p, lr: gf.AdamW(p, lr=lr, weight_decay=0.1, fused=True),
    "RAdam": lambda p, lr: gf.RAdam(p, lr=lr, fused=True),
    "NAdam": lambda p, lr: gf.NAdam(p, lr=lr, fused=True),
    "AdEMA": lambda p, lr: gf.AdEMA(p, lr=lr, t_alpha_beta3=5, fused=True),
    "PersistentSGD": lambda p, lr: gf.PersistentSGD(p, lr=lr, decay=0.9, fused=True),
    "Align(AdamW)": lambda p, lr: gf.GradientAlignment(gf.AdamW(p, lr=lr, fused=True)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_never_synchronises_the_host(name):
    """torch.cuda.set_sync_debug_mode('error') raises on any host sync: a whole GradScaler step with a
    tensor lr raises nothing."""
    model, x, y = _model_and_data()
    opt = OPTIMIZERS[name](model.parameters(), torch.tensor(1e-3, device="cuda"))
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        scaler.step(opt)  # GradScaler's own path: found_inf and grad_scale stay on the device
        scaler.update()
        opt.zero_grad()


def _with_tensor_lr(opt):
    """Each group's lr as a one-element tensor on the GPU, which a scheduler updates in place."""
    for group in opt.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device="cuda")
    return opt


# every optimizer and GradientAlignment case of the table, with its own lr made a tensor
CAPTURABLE = {**OPTIMIZERS, **{case.name: (lambda case: lambda p, lr: _with_tensor_lr(case.make(list(p), True)))(case)
                               for case in CASES}}


@pytest.mark.parametrize("name", CAPTURABLE)
def test_cuda_graph_capture_of_a_training_step_equals_eager(name):
    """Forward, backward, GradScaler and step() captured in one CUDA graph and replayed, with an LR
    scheduler updating the tensor lr between replays, equal eager training step for step. NOTE: [CUDA
    graph capture] in gradfused/optim/_validation.py."""
    steps = 6

    def setup():
        model, x, y = _model_and_data()
        opt = CAPTURABLE[name](model.parameters(), torch.tensor(1e-2, device="cuda"))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return model, x, y, opt, sched

    def train_step(model, x, y, opt, scaler):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    model_e, x, y, opt_e, sched_e = setup()
    scaler_e = torch.amp.GradScaler("cuda", init_scale=128.0, growth_interval=1000)
    for _ in range(steps):
        opt_e.zero_grad(set_to_none=False)
        train_step(model_e, x, y, opt_e, scaler_e)
        sched_e.step()

    model_g, x, y, opt_g, sched_g = setup()
    scaler_g = torch.amp.GradScaler("cuda", init_scale=128.0, growth_interval=1000)
    for p in model_g.parameters():  # gradients exist before capture, so the graph zeroes them in place
        p.grad = torch.zeros_like(p)
    graph = torch.cuda.CUDAGraph()
    # the first step (state creation) runs eagerly on a side stream, as torch's capture recipe asks
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt_g.zero_grad(set_to_none=False)
        train_step(model_g, x, y, opt_g, scaler_g)
    torch.cuda.current_stream().wait_stream(side)
    sched_g.step()
    with torch.cuda.graph(graph):
        opt_g.zero_grad(set_to_none=False)
        train_step(model_g, x, y, opt_g, scaler_g)
    for _ in range(steps - 1):
        graph.replay()
        sched_g.step()
    torch.cuda.synchronize()
    for p, q in zip(model_e.parameters(), model_g.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    states_e, states_g = all_states(opt_e), all_states(opt_g)
    assert [k for k, _ in states_e] == [k for k, _ in states_g]
    for (key, a), (_, b) in zip(states_e, states_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}: {m}")


def _capture_one_step(opt, params):
    """A first step eagerly on a side stream (state creation), then one captured."""
    for p in params:
        p.grad = torch.randn_like(p)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        opt.step()


REFUSED_CAPTURES = {
    "Lookahead": (lambda p: gf.Lookahead(gf.AdamW(p), k=2), "Lookahead cannot be captured.*every k-th"),
    "cpu lr": (lambda p: gf.AdamW(p, lr=torch.tensor(1e-3)), "lr is a CPU tensor.*replay the value it had at capture"),
    "tensor betas": (lambda p: gf.Adam(p, betas=(torch.tensor(0.9, device="cuda"), 0.999)),
                     "Adam cannot be captured.*beta1 is a tensor"),
}


@pytest.mark.parametrize("what", REFUSED_CAPTURES)
def test_capture_refuses_a_value_it_would_freeze(what):
    """Never a silently frozen value: what a captured step would read on the host is refused by name."""
    make, message = REFUSED_CAPTURES[what]
    params = to_cuda([torch.randn(s) for s in [(4097,), (3, 5)]])
    opt = make(params)
    with pytest.raises(RuntimeError, match=message):
        _capture_one_step(opt, params)


def test_capture_refuses_alignment_over_torch_under_grad_scaler():
    params = to_cuda([torch.randn(s) for s in [(4097,), (3, 5)]])
    opt = gf.GradientAlignment(torch.optim.AdamW(params, capturable=True))
    opt.grad_scale, opt.found_inf = torch.ones((), device="cuda"), torch.zeros((), device="cuda")
    with pytest.raises(RuntimeError, match="GradientAlignment cannot be captured.*over AdamW.*found_inf"):
        _capture_one_step(opt, params)


@pytest.mark.parametrize("case", [c for c in CASES if not c.name.startswith("Align")][:12], ids=str)
def test_injected_inf_changes_nothing_without_a_sync(case):
    params = to_cuda([torch.randn(s) for s in [(4097,), (3, 5), ()]])
    opt = case.make(params, True)
    scaler = torch.amp.GradScaler("cuda", init_scale=64.0)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # state exists
    before = [p.detach().clone() for p in params], [(k, v.clone()) for k, v in all_states(opt)]
    for p in params:
        p.grad = torch.randn_like(p) * 64.0
    params[1].grad[2, 3] = float("inf")
    # what torch.amp.GradScaler hands an optimizer that unscales itself: both tensors on the device
    opt.grad_scale = torch.tensor(64.0, device="cuda")
    opt.found_inf = torch.ones((), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        del opt.grad_scale, opt.found_inf
    for p, q in zip(params, before[0]):
        assert torch.equal(p, q)
    for (key, a), (_, b) in zip(all_states(opt), before[1]):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("where", ["cuda", "cpu"])
def test_grad_scale_on_either_device_unscales(where):
    """grad_scale as GradScaler keeps it (on the GPU) or as a CPU tensor, read on the host without a sync."""
    params = to_cuda([torch.randn(s) for s in [(4097,), (3, 5)]])
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt, twin = gf.AdamW(params, lr=1e-2), gf.AdamW(twins, lr=1e-2)
    for p, q in zip(params, twins):
        q.grad = torch.randn_like(q)
        p.grad = q.grad * 8.0
    opt.grad_scale = torch.tensor(8.0, device=where)
    opt.step()
    twin.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q)


def test_alignment_scales_are_bitwise_reproducible():
    def run():
        torch.manual_seed(3)
        params = [torch.randn(s, device="cuda", requires_grad=True) for s in [(2**20 + 3,), (4097,), (3, 5)]]
        opt = gf.GradientAlignment(gf.AdamW(params, lr=1e-2), beta=0.9)
        sums = []
        for _ in range(4):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
            sums.append(opt._stats(params, None, None).cpu())
        return sums, [p.detach().cpu() for p in params]

    (sums_a, params_a), (sums_b, params_b) = run(), run()
    for a, b in zip(sums_a + params_a, sums_b + params_b):
        assert torch.equal(a, b)


@pytest.mark.parametrize("direction", ["cuda->cpu", "cpu->cuda"])
@pytest.mark.parametrize("case", [c for c in CASES if not c.random][::3], ids=str)
def test_state_dict_moves_between_devices(case, direction):
    src_device, dst_device = direction.split("->")
    gen = torch.Generator().manual_seed(4)
    base = [torch.randn(s, generator=gen) for s in [(4097,), (3, 5), ()]]
    src_params = [b.to(src_device).requires_grad_() for b in base]
    src = case.make(src_params, True)
    step_side_by_side([src], [src_params], torch.float32, 3, gen)
    dst_params = [p.detach().to(dst_device).requires_grad_() for p in src_params]
    dst = case.make(dst_params, True)
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    for _, t in all_states(dst):
        assert t.device.type == dst_device
    step_side_by_side([src, dst], [src_params, dst_params], torch.float32, 3, gen)
    for p, q in zip(src_params, dst_params):
        torch.testing.assert_close(p.cpu(), q.cpu(), rtol=1e-5, atol=1e-6)


def test_lookahead_on_cuda_matches_cpu():
    cpu_params = [torch.randn(s).requires_grad_() for s in [(4097,), (3, 5), ()]]
    cuda_params = to_cuda(cpu_params)
    cpu = gf.Lookahead(gf.AdamW(cpu_params, lr=1e-2), k=2, alpha=0.5)
    cuda = gf.Lookahead(gf.AdamW(cuda_params, lr=1e-2), k=2, alpha=0.5)
    step_side_by_side([cpu, cuda], [cpu_params, cuda_params], torch.float32, 5, torch.Generator().manual_seed(5))
    for p, q in zip(cpu_params, cuda_params):
        torch.testing.assert_close(p, q.cpu())


def test_more_tensors_than_one_launch_holds():
    """2000 tensors (launches are cut at 192 tensors and 1024 chunks) and one of 70 chunks."""
    shapes = [(3,)] * 1000 + [(70 * 65536 + 5,)] + [(1,)] * 999
    ref_params = [torch.randn(s).requires_grad_() for s in shapes]
    cuda_params = to_cuda(ref_params)
    ref, cuda = gf.AdamW(ref_params, lr=1e-2), gf.AdamW(cuda_params, lr=1e-2)
    step_side_by_side([cuda, ref], [cuda_params, ref_params], torch.float32, 2, torch.Generator().manual_seed(6))
    assert_all_close(cuda, cuda_params, ref, ref_params, {})
