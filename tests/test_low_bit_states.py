"""8-bit optimizer states (state_bits=8, docs/low-bit-states.md): the fused CPU and CUDA kernels against
the reference (fused=False) for every optimizer of the table, the memory they save, checkpoints in and
out of the format, bad checkpoints, GradScaler's skipped step, and training that still trains."""
import copy
import math

import pytest
import torch

import gradfused as gf
from gradfused import quantization as Q
from gradfused.optim import _low_bit as L
from devices import CUDA_SKIP
from optim_table import CASES, all_states, tolerance
from test_quantization import edge_blocks

EIGHT_BIT = dict(state_bits=8, quantize_min_numel=0)
SHAPES = [(4097,), (300,), (3, 5), (1,)]  # whole blocks and not
# every case that takes 8-bit states: centered RMSprop keeps full precision (test_centered_rmsprop_refuses...)
EIGHT_BIT_CASES = [case for case in CASES if not case.kwargs.get("centered")]


def make_params(dtype=torch.float32, shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]


def set_grads(params, gen):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)


def step_twins(pairs, steps, seed):
    """`steps` times: the same gradients to every (optimizer, params) pair, then each steps; yields after
    each step."""
    gens = [torch.Generator().manual_seed(seed) for _ in pairs]
    for step in range(steps):
        for (opt, params), gen in zip(pairs, gens):
            set_grads(params, gen)
            opt.step()
        yield step


def codes_apart(s, t, key):
    """How many values of the map apart two codes of state `key` lie, at most (a sign-magnitude code's
    neighbour across 0 is 129 bytes away: NOTE: [the 8-bit code])."""
    def rank(codes):
        codes = codes.int()
        if key in L.UNSIGNED_STATES:
            return codes
        return torch.where(codes & Q.SIGN_BIT != 0, -(codes & ~Q.SIGN_BIT), codes)
    return (rank(s) - rank(t)).abs().max().item()


def _assert_match(s, t, dtype, what, key=None):
    """float32: bit for bit. float64: the native and reference fp64 steps already differ in the last bit
    of a few elements (docs/algorithms.md §5: float64 is held to assert_close's tolerance), which can
    move a value across a midpoint: a code then differs by one."""
    if dtype == torch.float32:
        torch.testing.assert_close(s, t, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")
    elif s.dtype == torch.uint8:
        assert codes_apart(s, t, key) <= 1, what
    else:
        torch.testing.assert_close(s, t, equal_nan=True, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", EIGHT_BIT_CASES, ids=str)
def test_fused_kernel_equals_the_reference(case, dtype):
    """Codes, absmax, parameters and the other states of the native step equal the reference's after
    every step: bit for bit in float32, within one code in float64 (_assert_match)."""
    a, b = make_params(dtype), make_params(dtype)
    native, ref = case.make(a, True, **EIGHT_BIT), case.make(b, False, **EIGHT_BIT)
    for step in step_twins([(native, a), (ref, b)], steps=4, seed=1):
        for p, q in zip(a, b):
            _assert_match(p, q, dtype, f"step {step}")
        for (key, s), (_, t) in zip(all_states(native), all_states(ref), strict=True):
            _assert_match(s, t, dtype, f"step {step} {key}", key[2])
    full_size = [key for key, t in all_states(native) if t.numel() > 1 and t.dtype != torch.uint8
                 and not key[2].endswith("_absmax") and key[2] != "alignment_ema"]
    assert not full_size, f"states left at full precision: {full_size}"


def _cuda_twin_steps(make, ref_params, steps=4, seed=1, **step_options):
    """The same optimizer on a CUDA copy of `ref_params` (fused) and on them (the reference), stepped with
    the same gradients; yields (step, cuda optimizer, cuda params, reference optimizer) after each step.
    step_options: grad_scale / found_inf handed to both as GradScaler does (on each one's device)."""
    cuda_params = [p.detach().to("cuda", copy=True).requires_grad_() for p in ref_params]
    cuda, ref = make(cuda_params, True), make(ref_params, False)
    for key, value in step_options.items():
        setattr(cuda, key, value.to("cuda"))
        setattr(ref, key, value)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        scale = float(step_options["grad_scale"]) if "grad_scale" in step_options else 1.0
        for p, q in zip(cuda_params, ref_params):
            q.grad = (torch.randn(q.shape, generator=gen, dtype=torch.float64) * scale).to(q.dtype)
            p.grad = q.grad.to("cuda", copy=True)
        cuda.step()
        ref.step()
        yield step, cuda, cuda_params, ref


def _assert_cuda_close(step, cuda, cuda_params, ref, ref_params, dtype):
    """Parameters and full-precision states within the dtype's tolerance; codes within one of the
    reference's, and at least 99 % of all codes equal (counted over every tensor together: in a tensor of
    a few elements one code off would already be more than 1 %)."""
    for p, q in zip(cuda_params, ref_params):
        torch.testing.assert_close(p.cpu(), q, **tolerance(dtype), msg=lambda m: f"step {step}: {m}")
    equal = total = 0
    for (key, s), (_, t) in zip(all_states(cuda), all_states(ref), strict=True):
        s = s.cpu()
        if s.dtype == torch.uint8:
            assert codes_apart(s, t, key[2]) <= 1, f"step {step} {key}"
            equal, total = equal + (s == t).sum().item(), total + s.numel()
        else:
            torch.testing.assert_close(s, t, **tolerance(dtype), equal_nan=True, msg=lambda m: f"step {step} {key}: {m}")
    assert equal >= 0.99 * total, f"step {step}: {total - equal} of {total} codes one off"


CUDA_SHAPES = SHAPES + [(70_001,)]  # 70,001: two chunks, several slices of each (NOTE: [blocks per chunk])


@pytest.mark.cuda
@CUDA_SKIP
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("case", EIGHT_BIT_CASES, ids=str)
def test_cuda_kernel_matches_the_reference(case, dtype):
    """NOTE: [8-bit states on CUDA]: the fused CUDA step against the CPU reference. Codes within one: the
    per-tensor scalars are formed in double on both devices, but CUDA's pow is not glibc's, so an fp32
    state may differ in its last bit and cross a midpoint."""
    ref_params = make_params(dtype, shapes=CUDA_SHAPES)
    for step, cuda, cuda_params, ref in _cuda_twin_steps(lambda p, fused: case.make(p, fused, **EIGHT_BIT), ref_params):
        _assert_cuda_close(step, cuda, cuda_params, ref, ref_params, dtype)


@pytest.mark.cuda
@CUDA_SKIP
@pytest.mark.parametrize("options, step_options", [
    (dict(master_weights=True), {}),
    (dict(stochastic_rounding=True, seed=3), {}),
    ({}, dict(grad_scale=torch.tensor(1024.0), found_inf=torch.tensor(0.0))),
], ids=["master-weights", "stochastic-rounding", "grad-scaler-unscale"])
def test_cuda_kernel_composes_with_mixed_precision(options, step_options):
    """bf16 parameters with 8-bit states and master weights, stochastic rounding, or GradScaler's unscale
    (the gradients stored back unscaled, NOTE: [GradScaler and .grad]), against the CPU reference."""
    ref_params = make_params(torch.bfloat16, shapes=CUDA_SHAPES)
    make = lambda p, fused: gf.AdamW(p, lr=1e-2, weight_decay=0.1, fused=fused, **options, **EIGHT_BIT)
    for step, cuda, cuda_params, ref in _cuda_twin_steps(make, ref_params, **step_options):
        _assert_cuda_close(step, cuda, cuda_params, ref, ref_params, torch.bfloat16)
        for p, q in zip(cuda_params, ref_params):
            torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=0, atol=0)


@pytest.mark.cuda
@CUDA_SKIP
@pytest.mark.parametrize("variable, default, setting", [
    ("GRADFUSED_CUDA_BLOCKS_PER_CHUNK", "4", "1"), ("GRADFUSED_CUDA_BLOCKS_PER_CHUNK", "4", "8"),
    ("GRADFUSED_CUDA_8BIT_MIN_BLOCKS", "1", "2"),
])
def test_cuda_launch_settings_change_nothing(variable, default, setting, monkeypatch):
    """However many thread blocks share a chunk (NOTE: [blocks per chunk]), every block of 256 is one
    warp's; and the occupancy variant (NOTE: [8-bit occupancy variants]) only allocates registers
    otherwise: the same codes, scales and parameters, bit for bit, as the default."""
    params = make_params(shapes=[(200_003,), (4097,)])
    runs = []
    for value in (default, setting):
        monkeypatch.setenv(variable, value)
        runs.append(list(_cuda_twin_steps(lambda p, fused: gf.AdamW(p, lr=1e-2, fused=fused, **EIGHT_BIT),
                                          [p.detach().clone() for p in params], steps=2))[-1])
    (_, a, pa, _), (_, b, pb, _) = runs
    assert all(torch.equal(p, q) for p, q in zip(pa, pb))
    for (key, s), (_, t) in zip(all_states(a), all_states(b), strict=True):
        assert torch.equal(s, t), key


@pytest.mark.cuda
@CUDA_SKIP
def test_cuda_and_cpu_encode_the_same_states_alike():
    """The same fp32 states give the same codes and scales on both devices: one step from zero states
    with lr 0, where m = (1 - beta1) g and v = (1 - beta2) g² are single products, the same on both."""
    shapes = [(4097,), (300,), (70000,)]
    cpu_params = make_params(shapes=shapes)
    cuda_params = [p.detach().to("cuda", copy=True).requires_grad_() for p in cpu_params]
    gen = torch.Generator().manual_seed(4)
    for p, q in zip(cuda_params, cpu_params):
        q.grad = torch.randn(q.shape, generator=gen)
        p.grad = q.grad.to("cuda", copy=True)
    opts = [gf.AdamW(params, lr=0.0, fused=True, **EIGHT_BIT) for params in (cuda_params, cpu_params)]
    for opt in opts:
        opt.step()
    for (key, s), (_, t) in zip(all_states(opts[0]), all_states(opts[1]), strict=True):
        assert torch.equal(s.cpu(), t), key


@pytest.mark.cuda
@CUDA_SKIP
def test_cuda_skipped_step_and_capture():
    """A found_inf on the GPU skips the 8-bit step without a host sync (codes and scales untouched), and a
    captured 8-bit step replays as the eager one."""
    params = [torch.randn(5000, device="cuda", requires_grad=True) for _ in range(2)]
    twin = [p.detach().clone().requires_grad_() for p in params]
    opts = [gf.AdamW(ps, lr=1e-2, capturable=True, **EIGHT_BIT) for ps in (params, twin)]
    for ps in (params, twin):
        for p in ps:
            p.grad = torch.ones_like(p)
    for opt in opts:
        opt.step()
    before = [(k, t.clone()) for k, t in all_states(opts[0])]
    opts[0].grad_scale, opts[0].found_inf = torch.tensor(2.0, device="cuda"), torch.tensor(1.0, device="cuda")
    opts[0].step()
    assert all(torch.equal(t, u) for (_, t), (_, u) in zip(all_states(opts[0]), before, strict=True))
    opts[0].grad_scale = opts[0].found_inf = None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opts[0].step()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        graph.replay()
        opts[1].step()
    torch.cuda.synchronize()
    for (key, s), (_, t) in zip(all_states(opts[0]), all_states(opts[1]), strict=True):
        assert torch.equal(s, t), key
    assert all(torch.equal(p, q) for p, q in zip(params, twin))


@pytest.mark.parametrize("make, per_param", [
    (lambda p: gf.AdamW(p, state_bits=8), 2.04), (lambda p: gf.AdEMA(p, state_bits=8), 3.06),
    (lambda p: gf.SGD(p, lr=0.1, momentum=0.9, state_bits=8), 1.02),
], ids=["AdamW", "AdEMA", "SGD-momentum"])
def test_state_memory_per_parameter(make, per_param):
    p = torch.zeros(1_000_000, requires_grad=True)
    opt = make([p])
    p.grad = torch.randn_like(p)
    opt.step()
    state_bytes = sum(t.numel() * t.element_size() for t in opt.state[p].values() if t.numel() > 1)
    assert state_bytes / p.numel() <= per_param


def test_small_tensors_keep_full_precision_states():
    big, small = torch.zeros(4096, requires_grad=True), torch.zeros(4095, requires_grad=True)
    opt = gf.AdamW([big, small], state_bits=8)
    big.grad, small.grad = torch.ones(4096), torch.ones(4095)
    opt.step()
    assert opt.state[big]["exp_avg"].dtype == torch.uint8 and opt.state[big]["exp_avg_sq_absmax"].shape == (16,)
    assert opt.state[small]["exp_avg"].dtype == torch.float32 and "exp_avg_absmax" not in opt.state[small]


def _stepped(make, steps=3, seed=0):
    params = make_params(seed=seed)
    opt = make(params)
    gen = torch.Generator().manual_seed(5)
    for _ in range(steps):
        set_grads(params, gen)
        opt.step()
    return params, opt


def test_checkpoint_round_trips_bit_for_bit():
    params, opt = _stepped(lambda p: gf.AdamW(p, lr=1e-2, **EIGHT_BIT))
    saved = copy.deepcopy(opt.state_dict())
    twin = [p.detach().clone().requires_grad_() for p in params]
    resumed = gf.AdamW(twin, lr=1e-2, **EIGHT_BIT)
    resumed.load_state_dict(saved)
    list(step_twins([(opt, params), (resumed, twin)], steps=2, seed=9))
    for (_, s), (_, t) in zip(all_states(opt), all_states(resumed), strict=True):
        assert torch.equal(s, t)
    assert all(torch.equal(p, q) for p, q in zip(params, twin))


def test_a_loaded_eight_bit_state_is_its_own():
    """Loading copies codes and scales alike: the loaded optimizer's steps leave the source's codes and
    scales as they were (torch's load would copy the codes, a cast, but share the float32 scales, so the
    source would decode its codes with the other's scales). Full-precision states and `step` are shared,
    as torch.optim shares them."""
    params, source = _stepped(lambda p: gf.AdamW(p, lr=1e-2, **EIGHT_BIT))
    eight_bit = lambda opt: [(k, t) for k, t in all_states(opt) if t.dtype == torch.uint8 or k[2].endswith("_absmax")]  # noqa: E731
    before = [(k, t.clone()) for k, t in eight_bit(source)]
    loaded = gf.AdamW(params, lr=1e-2, **EIGHT_BIT)
    loaded.load_state_dict(source.state_dict())
    set_grads(params, torch.Generator().manual_seed(3))
    loaded.step()
    assert len(before) == 4 * len(params)  # exp_avg and exp_avg_sq: codes and scales
    assert all(torch.equal(t, u) for (_, t), (_, u) in zip(eight_bit(source), before, strict=True))


def test_codes_saved_in_another_memory_format_are_encoded_in_the_parameters():
    """A block is 256 codes in memory order. Codes saved for a channels_last parameter and loaded for a
    contiguous one are encoded again in its layout, so that the kernel, which reads them in the
    parameter's order, and the reference, which decodes them logically, step alike (bitwise in fp32)."""
    torch.manual_seed(0)
    source_param = torch.nn.Parameter(torch.randn(4, 24, 5, 5).to(memory_format=torch.channels_last))
    source = gf.AdamW([source_param], lr=1e-2, **EIGHT_BIT)
    for _ in range(3):
        source_param.grad = torch.randn_like(source_param)
        source.step()
    grad = torch.randn(4, 24, 5, 5)
    stepped = []
    for fused in (True, False):
        p = torch.nn.Parameter(source_param.detach().contiguous())
        opt = gf.AdamW([p], lr=1e-2, fused=fused, **EIGHT_BIT)
        opt.load_state_dict(copy.deepcopy(source.state_dict()))
        assert opt.state[p]["exp_avg"].stride() == p.stride()
        p.grad = grad.clone()
        opt.step()
        stepped.append(p.detach())
    assert torch.equal(*stepped)



@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_a_model_moved_to_another_memory_format_steps_its_codes_in_the_new_layout(fused):
    """The model goes to channels_last after its 8-bit state exists: at the next step the codes are
    encoded again in the parameter's layout (a block is 256 codes in memory order), so that the step is
    that of an optimizer whose state was laid out so from the start: within the one re-encoding, and
    the kernel and the reference alike, bit for bit."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 24, 5, 5))
    opt = gf.AdamW([p], lr=1e-2, fused=fused, **EIGHT_BIT)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    twin = torch.nn.Parameter(p.detach().to(memory_format=torch.channels_last))
    twin_opt = gf.AdamW([twin], lr=1e-2, fused=fused, **EIGHT_BIT)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # encoded again in channels_last on load
    p.data = p.data.to(memory_format=torch.channels_last)  # what module.to(memory_format=...) does
    grad = torch.randn(4, 24, 5, 5)
    for q, o in ((p, opt), (twin, twin_opt)):
        q.grad = grad.clone()
        o.step()
    assert opt.state[p]["exp_avg"].stride() == p.stride()
    assert torch.equal(p.detach(), twin.detach())
    for key in ("exp_avg", "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax"):
        assert torch.equal(opt.state[p][key], twin_opt.state[twin][key]), key


def test_the_kernel_refuses_codes_laid_out_unlike_their_parameter():
    """Called directly, the op names codes whose memory order differs from the parameter's instead of
    applying each scale to another block's elements."""
    p = torch.randn(4, 24, 5, 5).to(memory_format=torch.channels_last)
    codes = [torch.full((4, 24, 5, 5), 127, dtype=torch.uint8) for _ in range(2)]
    absmax = [torch.ones(Q.num_blocks(p.numel())) for _ in range(2)]
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] holds 8-bit codes laid out unlike params\[0\]"):
        gf.ops.adam_([p], [torch.randn_like(p)], [codes[0]], [codes[1]], [], [torch.zeros(())], lr=1e-2,
                     beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=True,
                     amsgrad=False, state_absmax=absmax, state_signed=[1, 0])


@pytest.mark.parametrize("signed", [True, False], ids=["momentum", "square_avg"])
def test_kernel_encodes_the_edges_as_the_reference(signed):
    """The SIMD encode of the CPU kernel (csrc/cpu/quantize_simd.h) at the edges of NOTE: [the 8-bit code]
    (test_quantization.edge_blocks): after one step SGD's momentum buffer is the gradient itself and
    RMSprop's square average (alpha 0) its square, exactly, so their codes and scales must be the
    reference's for those values."""
    g = edge_blocks(True)
    p = torch.zeros_like(g, requires_grad=True)
    p.grad = g.clone()
    if signed:
        opt, key, state = gf.SGD([p], lr=1.0, momentum=0.9, **EIGHT_BIT), "momentum_buffer", g
    else:
        opt, key, state = gf.RMSprop([p], lr=1.0, alpha=0.0, **EIGHT_BIT), "square_avg", g * g
    assert opt.param_groups[0]["fused"] is not False
    opt.step()
    codes, absmax = Q.quantize_blockwise(state, signed)
    assert torch.equal(opt.state[p][key], codes) and torch.equal(opt.state[p][key + L.ABSMAX], absmax)


def test_kernel_decodes_every_code_as_the_reference():
    """The SIMD decode of the CPU kernel, every code under a normal, a denormal and a large scale: SGD with
    momentum 1, lr 1 and a zero gradient from a zero parameter turns the parameter into minus the decoded
    buffer, exactly; the buffer is then encoded again as the reference encodes those values."""
    p = torch.zeros(3 * 256, requires_grad=True)
    opt = gf.SGD([p], lr=1.0, momentum=1.0, **EIGHT_BIT)
    p.grad = torch.ones_like(p)
    opt.step()  # creates the state
    codes = torch.arange(256, dtype=torch.uint8).repeat(3)
    absmax = torch.tensor([0.75, 3e-39, 1e37])
    opt.state[p]["momentum_buffer"].copy_(codes)
    opt.state[p]["momentum_buffer" + L.ABSMAX].copy_(absmax)
    with torch.no_grad():
        p.zero_()
    p.grad = torch.zeros_like(p)
    opt.step()
    decoded = Q.dequantize_blockwise(codes, absmax, True)
    assert torch.equal(-p.detach(), decoded)
    want_codes, want_absmax = Q.quantize_blockwise(decoded + 0.0, True)  # -0 + 0: the kernel's buffer is +0
    assert torch.equal(opt.state[p]["momentum_buffer"], want_codes)
    assert torch.equal(opt.state[p]["momentum_buffer" + L.ABSMAX], want_absmax)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_gradient_element_harms_no_other_element(bad, fused):
    """One NaN (or infinite) gradient element makes its own parameter element NaN, as in torch.optim
    (and bitsandbytes); every other element of its block of 256 keeps training: its state is still
    finite and its parameter is the one it would have been (within the codes the block's new scale
    moves)."""
    torch.manual_seed(0)
    p, clean = (torch.nn.Parameter(torch.randn(1024)) for _ in range(2))
    clean.data.copy_(p.data)
    opts = [gf.AdamW([q], lr=1e-2, fused=fused, **EIGHT_BIT) for q in (p, clean)]
    for step in range(4):
        grad = torch.randn(1024)
        for q, o in zip((p, clean), opts):
            q.grad = grad.clone()
            if step == 1 and q is p:
                q.grad[300] = bad
            o.step()
    others = torch.ones(1024, dtype=torch.bool)
    others[300] = False
    assert p[300].isnan()
    assert bool(p[others].isfinite().all())
    torch.testing.assert_close(p[others], clean[others], rtol=0, atol=1e-3)
    for key in ("exp_avg", "exp_avg_sq"):
        st = opts[0].state[p]
        assert bool(st[key + "_absmax"].isfinite().all()), key
        decoded = Q.dequantize_blockwise(st[key], st[key + "_absmax"], key == "exp_avg")
        assert bool(decoded[others].isfinite().all()), key


def test_centered_rmsprop_refuses_eight_bit_states():
    """v - ḡ² of two separately rounded states goes negative (a NaN that spoils its block) or near zero
    (a step of g / eps): centered RMSprop keeps full-precision states, as bitsandbytes refuses it too."""
    p = torch.zeros(4096, requires_grad=True)
    with pytest.raises(ValueError, match=r"centered=True needs full-precision states.*expected state_bits=32"):
        gf.RMSprop([p], centered=True, state_bits=8)
    opt = gf.RMSprop([p], centered=True)
    with pytest.raises(ValueError, match="centered=True needs full-precision states"):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], "state_bits": 8})
    opt.param_groups[0]["state_bits"] = 8  # changed by hand: refused at the step, before anything is written
    p.grad = torch.ones(4096)
    with pytest.raises(ValueError, match="centered=True needs full-precision states"):
        opt.step()
    assert not opt.state[p] and bool((p == 0).all())

@CUDA_SKIP
@pytest.mark.cuda
def test_full_precision_checkpoint_loads_into_eight_bit_on_cuda():
    """The quantization reference encodes CUDA tensors on their device (its code table follows them)."""
    params, theirs = _stepped(lambda p: torch.optim.AdamW(p, lr=1e-2))
    cuda_params = [p.detach().cuda().requires_grad_() for p in params]
    ours = gf.AdamW(cuda_params, lr=1e-2, **EIGHT_BIT)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for p, q in zip(cuda_params, params):
        codes, _ = Q.quantize_blockwise(theirs.state[q]["exp_avg"], True)
        assert torch.equal(ours.state[p]["exp_avg"].cpu(), codes)
    for fused in (True, False):  # the kernel and the reference, which encodes with the same table
        opt = gf.AdamW(cuda_params, lr=1e-2, fused=fused, **EIGHT_BIT)
        set_grads(cuda_params, torch.Generator().manual_seed(3))
        opt.step()


def test_full_precision_checkpoints_load_either_way():
    """torch.optim's state (and gradfused's at 32 bits) loads into an 8-bit optimizer, encoded; an 8-bit
    one loads into state_bits=32 decoded; full_precision_state_dict gives torch.optim a checkpoint."""
    params, theirs = _stepped(lambda p: torch.optim.AdamW(p, lr=1e-2))
    ours = gf.AdamW([p.detach().clone().requires_grad_() for p in params], lr=1e-2, **EIGHT_BIT)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for p, q in zip(ours.param_groups[0]["params"], params):
        codes, absmax = Q.quantize_blockwise(theirs.state[q]["exp_avg"], True)
        assert torch.equal(ours.state[p]["exp_avg"], codes) and torch.equal(ours.state[p]["exp_avg_absmax"], absmax)
    full = gf.AdamW([p.detach().clone().requires_grad_() for p in params], lr=1e-2)
    full.load_state_dict(copy.deepcopy(ours.state_dict()))
    plain = gf.full_precision_state_dict(ours)
    back = torch.optim.AdamW([p.detach().clone().requires_grad_() for p in params], lr=1e-2)
    back.load_state_dict(copy.deepcopy(plain))
    for p8, p32, pt in zip(ours.param_groups[0]["params"], full.param_groups[0]["params"], back.param_groups[0]["params"]):
        decoded = Q.dequantize_blockwise(ours.state[p8]["exp_avg_sq"], ours.state[p8]["exp_avg_sq_absmax"], False)
        assert torch.equal(full.state[p32]["exp_avg_sq"], decoded) and "exp_avg_sq_absmax" not in full.state[p32]
        assert torch.equal(back.state[pt]["exp_avg_sq"], decoded)


def test_torch_optim_fails_on_eight_bit_codes_instead_of_training_on_them():
    """NOTE: [8-bit states in a state_dict]: the codes are saved under `<key>_codes_v2`, so torch.optim.AdamW,
    which would cast uint8 codes into moments of 0..255, finds no moments and fails at its first step,
    before writing anything. gradfused loads them back."""
    params, opt = _stepped(lambda p: gf.AdamW(p, lr=1e-2, **EIGHT_BIT))
    sd = copy.deepcopy(opt.state_dict())
    eight_bit = [st for st in sd["state"].values() if "exp_avg_codes_v2" in st]
    assert eight_bit and all("exp_avg" not in st and st["exp_avg_codes_v2"].dtype == torch.uint8 for st in eight_bit)
    twin = [p.detach().clone().requires_grad_() for p in params]
    theirs = torch.optim.AdamW(twin, lr=1e-2)
    theirs.load_state_dict(copy.deepcopy(sd))
    set_grads(twin, torch.Generator().manual_seed(3))
    before = [p.detach().clone() for p in twin]
    with pytest.raises(KeyError, match="exp_avg"):
        theirs.step()
    assert all(torch.equal(p, q) for p, q in zip(twin, before))
    resumed = gf.AdamW([p.detach().clone().requires_grad_() for p in params], lr=1e-2, **EIGHT_BIT)
    resumed.load_state_dict(copy.deepcopy(sd))
    for (k, s), (_, t) in zip(all_states(opt), all_states(resumed), strict=True):
        assert torch.equal(s, t), k


def _format_one_codes(values, signed):
    """Format 1's encoding (gradfused 0.1): per block of 256, the index of the decade map's value nearest
    to value / absmax."""
    table = Q.legacy_code_values(signed)[: 255 if signed else 256].double()
    blocks = torch.nn.functional.pad(values.reshape(-1).double(), (0, -values.numel() % 256)).view(-1, 256)
    absmax = blocks.abs().amax(dim=1)
    u = blocks / absmax.clamp_min(1e-30).unsqueeze(1)
    codes = (table[None, None, :] - u[:, :, None]).abs().argmin(dim=2)
    return codes.view(-1)[: values.numel()].to(torch.uint8).view(values.shape), absmax.float()


@pytest.mark.parametrize("layout", ["<key>_codes", "<key>"])
def test_format_one_checkpoints_load_decoded_with_their_map(layout):
    """A checkpoint of gradfused 0.1 holds codes of the decade map (format 1), under `<key>_codes` or, older,
    under `<key>`. They are decoded with that map: an 8-bit optimizer encodes the values again in format 2,
    a 32-bit one keeps them; both then step."""
    params, opt = _stepped(lambda p: gf.AdamW(p, lr=1e-2, **EIGHT_BIT))
    sd = copy.deepcopy(opt.state_dict())
    want = {}
    for index, st in sd["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            values = Q.dequantize_blockwise(st.pop(key + L.CODES), st[key + L.ABSMAX], key == "exp_avg")
            codes, absmax = _format_one_codes(values, key == "exp_avg")
            st[layout.replace("<key>", key)], st[key + L.ABSMAX] = codes, absmax
            want[index, key] = Q.legacy_dequantize_blockwise(codes, absmax, key == "exp_avg")
    for bits in (8, 32):
        loaded = gf.AdamW([p.detach().clone().requires_grad_() for p in params], lr=1e-2, state_bits=bits,
                          quantize_min_numel=0)
        loaded.load_state_dict(copy.deepcopy(sd))
        for index, p in enumerate(loaded.param_groups[0]["params"]):
            for key in ("exp_avg", "exp_avg_sq"):
                state = loaded.state[p]
                if bits == 8:
                    codes, absmax = Q.quantize_blockwise(want[index, key], key == "exp_avg")
                    assert torch.equal(state[key], codes) and torch.equal(state[key + L.ABSMAX], absmax)
                else:
                    assert torch.equal(state[key], want[index, key]) and key + L.ABSMAX not in state
        set_grads(loaded.param_groups[0]["params"], torch.Generator().manual_seed(3))
        loaded.step()
        assert all(bool(p.isfinite().all()) for p in loaded.param_groups[0]["params"])


@pytest.mark.parametrize("corrupt, message", [
    (lambda st: st.pop("exp_avg_absmax"), "'exp_avg' holds 8-bit codes, which need 'exp_avg_absmax'"),
    (lambda st: st.__setitem__("exp_avg_absmax", torch.zeros(3)), "a float32 tensor of 17 elements"),
    (lambda st: st.__setitem__("exp_avg_codes_v2", torch.zeros(7, dtype=torch.uint8)), "'exp_avg' has shape"),
])
def test_bad_eight_bit_checkpoint_is_refused_and_changes_nothing(corrupt, message):
    _, opt = _stepped(lambda p: gf.AdamW(p, lr=1e-2, **EIGHT_BIT))
    sd = copy.deepcopy(opt.state_dict())
    corrupt(sd["state"][0])
    before = [(k, t.clone()) for k, t in all_states(opt)]
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)
    assert all(torch.equal(t, u) for (_, t), (_, u) in zip(all_states(opt), before, strict=True))


def test_skipped_step_leaves_codes_and_absmax_untouched():
    params, opt = _stepped(lambda p: gf.AdamW(p, lr=1e-2, **EIGHT_BIT))
    before = [(k, t.clone()) for k, t in all_states(opt)]
    set_grads(params, torch.Generator().manual_seed(3))
    opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(t, u) for (_, t), (_, u) in zip(all_states(opt), before, strict=True))


@pytest.mark.parametrize("name, value", [("state_bits", 16), ("state_bits", True), ("quantize_min_numel", -1)])
def test_bad_options_are_named(name, value):
    with pytest.raises(ValueError, match=f"Invalid {name} value"):
        gf.AdamW([torch.zeros(3, requires_grad=True)], **{name: value})


@pytest.mark.parametrize("make", [
    lambda p, bits: gf.AdamW(p, lr=1e-2, state_bits=bits, quantize_min_numel=0),
    lambda p, bits: gf.AdEMA(p, lr=1e-2, state_bits=bits, quantize_min_numel=0),
    lambda p, bits: gf.PersistentSGD(p, lr=1e-2, decay=0.9, state_bits=bits, quantize_min_numel=0),
], ids=["AdamW", "AdEMA", "PersistentSGD"])
def test_eight_bit_states_train_as_well(make):
    """A small regression MLP, 300 steps: the 8-bit run ends within 10 % of the 32-bit run's loss."""
    losses = {}
    for bits in (32, 8):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
        x = torch.randn(256, 16)
        y = (x[:, :4].sum(1, keepdim=True)).sin()
        opt = make(list(model.parameters()), bits)
        for _ in range(300):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
        losses[bits] = loss.item()
    assert math.isfinite(losses[8]) and losses[8] <= 1.1 * losses[32] + 1e-4, losses


def test_compare_spec_takes_state_bits():
    """`gradfused compare --optimizers adamw:state_bits=8`: users run their own 8-bit comparisons."""
    from gradfused.experiments.optimizers import parse_all

    (spec,) = parse_all(["adamw:lr=1e-3,state_bits=8,quantize_min_numel=0"])
    p = torch.zeros(300, requires_grad=True)
    opt = spec.build([p])
    p.grad = torch.ones(300)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.uint8
