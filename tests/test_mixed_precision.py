"""Mixed precision for bf16/fp16 parameters: fp32 states (`state_dtype`), fp32 master weights and
stochastic rounding, on every optimizer of the table; checkpoints keep the fp32 tensors fp32."""
import copy
import io

import pytest
import torch

import gradfused as gf
from gradfused.optim._precision import stochastic_round_
from optim_table import CASES, all_states

OPTIONS = {
    "state_fp32": dict(state_dtype=torch.float32),
    "master": dict(master_weights=True),
    "stochastic": dict(stochastic_rounding=True, seed=7),
}
SHAPES = [(4097,), (3, 5, 7), (), (0,)]


def _params(dtype, shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]


def _grads(params, gen):
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]


def _step_side_by_side(opts, param_lists, gen, steps):
    """`steps` times: the same random gradients (in each list's dtype) to every parameter list, then every
    optimizer steps."""
    for _ in range(steps):
        grads = _grads(param_lists[0], gen)
        for params in param_lists:
            for p, g in zip(params, grads):
                p.grad = g.to(p.dtype, copy=True)
        for opt in opts:
            opt.step()


def _states_have_dtypes(opt, option):
    for (_, key, name), t in all_states(opt):
        if name in ("step", "mu_product", "alignment_ema"):  # float32 scalars; the EMA keeps the param dtype
            continue
        want = torch.float32 if option != "stochastic" or name == "master_weight" else torch.bfloat16
        assert t.dtype == want, (key, name, t.dtype)


# stochastic rounding is defined for bf16 only (fp16 is rejected: test_bad_options_are_named)
COMBINATIONS = [(d, o) for d in (torch.bfloat16, torch.float16) for o in OPTIONS
                if o != "stochastic" or d == torch.bfloat16]


@pytest.mark.parametrize("dtype, option", COMBINATIONS, ids=[f"{d}-{o}" for d, o in COMBINATIONS])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_native_matches_reference(case, dtype, option):
    native_params = _params(dtype)
    ref_params = [p.detach().clone().requires_grad_() for p in native_params]
    native = case.make(native_params, True, **OPTIONS[option])
    ref = case.make(ref_params, False, **OPTIONS[option])
    _step_side_by_side([native, ref], [native_params, ref_params], torch.Generator().manual_seed(1), steps=8)
    # the fp32 working copies make native and reference agree to fp32 rounding before the one rounding to
    # 16 bits; docs/algorithms.md §5's 16-bit tolerance applies to the parameters
    for p, q in zip(native_params, ref_params):
        torch.testing.assert_close(p, q, atol=5e-3, rtol=5e-3)
    for (key, a), (_, b) in zip(all_states(native), all_states(ref), strict=True):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3, msg=lambda m: f"{key}: {m}")
    _states_have_dtypes(native, option)


def _working_copies(opt):
    """The same optimizer stepping fp32 working copies through the native fp32 kernel (the path the CPU
    took before the kernels fused mixed precision): the fused kernels' bitwise oracle."""
    for layer in [opt, getattr(opt, "base", None)]:
        if isinstance(layer, gf.optim.base.FusedOptimizer):
            layer._fuse_precision = False
    return opt


FUSED_COMBINATIONS = COMBINATIONS + [(torch.bfloat16, "fp32_grads"), (torch.float16, "fp32_grads")]


@pytest.mark.parametrize("dtype, option", FUSED_COMBINATIONS, ids=[f"{d}-{o}" for d, o in FUSED_COMBINATIONS])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_kernels_equal_the_working_copies_bitwise(case, dtype, option):
    """NOTE: [mixed precision in one pass]: one pass over memory gives exactly the numbers of the fp32
    kernel on fp32 working copies, parameters, states and master weights, bit for bit (stochastic
    rounding draws the same Philox bits). Also float32 gradients of 16-bit parameters, with fp32 states."""
    options = dict(state_dtype=torch.float32) if option == "fp32_grads" else OPTIONS[option]
    fused_params = _params(dtype)
    work_params = [p.detach().clone().requires_grad_() for p in fused_params]
    if option == "fp32_grads":
        for p in fused_params + work_params:
            p.grad_dtype = torch.float32
    fused = case.make(fused_params, True, **options)
    work = _working_copies(case.make(work_params, True, **options))
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        for p, q in zip(fused_params, work_params):
            g = torch.randn(p.shape, generator=gen) * (1 + 1e-3)
            p.grad = g if option == "fp32_grads" else g.to(dtype)
            q.grad = p.grad.clone()
        fused.step()
        work.step()
    for p, q in zip(fused_params, work_params):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for (key, a), (_, b) in zip(all_states(fused), all_states(work), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_stochastic_rounding_keys_channels_last_by_memory_position(fused):
    """The rounding bits of a channels_last parameter follow its memory order, in the kernels and in the
    reference alike: both equal the contiguous twin's step, with the twin's bits permuted the same way."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5).bfloat16()
    last = x.to(memory_format=torch.channels_last).requires_grad_()
    twin = last.detach().permute(0, 2, 3, 1).contiguous().requires_grad_()  # the same memory, as a contiguous tensor
    opts = [gf.AdamW([p], lr=1e-2, stochastic_rounding=True, seed=5, fused=fused) for p in (last, twin)]
    for _ in range(3):
        g = torch.randn(2, 3, 4, 5).bfloat16()
        last.grad = g.to(memory_format=torch.channels_last)
        twin.grad = last.grad.permute(0, 2, 3, 1).contiguous()
        for opt in opts:
            opt.step()
    assert torch.equal(last.detach().permute(0, 2, 3, 1), twin.detach())


def test_master_weights_equal_torch_adamw_on_fp32_copies():
    """The oracle: torch.optim.AdamW stepping fp32 copies with the upcast bf16 gradients; the bf16
    parameter is the master weight rounded to nearest."""
    params = _params(torch.bfloat16)
    masters = [p.detach().float().requires_grad_() for p in params]
    ours = gf.AdamW(params, lr=1e-2, master_weights=True)
    theirs = torch.optim.AdamW(masters, lr=1e-2)
    _step_side_by_side([ours, theirs], [params, masters], torch.Generator().manual_seed(1), steps=10)
    for p, m in zip(params, masters):
        torch.testing.assert_close(ours.state[p]["master_weight"], m.detach())
        torch.testing.assert_close(p, m.detach().bfloat16(), rtol=0, atol=0)


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_fp32_gradients_of_bf16_parameters_are_not_rounded(fused):
    """param.grad_dtype = torch.float32: the fp32 gradient reaches the update unrounded. Oracle: torch's
    AdamW on fp32 copies with the same fp32 gradients, the bf16 parameter being its master rounded."""
    params = _params(torch.bfloat16)
    for p in params:
        p.grad_dtype = torch.float32
    masters = [p.detach().float().requires_grad_() for p in params]
    ours = gf.AdamW(params, lr=1e-2, master_weights=True, fused=fused)
    theirs = torch.optim.AdamW(masters, lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        for p, m in zip(params, masters):
            g = torch.randn(p.shape, generator=gen) * (1 + 1e-3)  # not representable in bf16
            p.grad, m.grad = g, g.clone()
        ours.step()
        theirs.step()
    for p, m in zip(params, masters):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(ours.state[p]["master_weight"], m.detach())
        torch.testing.assert_close(p, m.detach().bfloat16(), rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fp32_gradients_native_match_reference(case):
    """Every optimizer with float32 gradients of bf16 parameters, native against the reference."""
    native_params = _params(torch.bfloat16)
    ref_params = [p.detach().clone().requires_grad_() for p in native_params]
    for p in native_params + ref_params:
        p.grad_dtype = torch.float32
    native, ref = case.make(native_params, True), case.make(ref_params, False)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        for p, q in zip(native_params, ref_params):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        native.step()
        ref.step()
    for p, q in zip(native_params, ref_params):
        torch.testing.assert_close(p, q, atol=5e-3, rtol=5e-3)
    for (key, a), (_, b) in zip(all_states(native), all_states(ref), strict=True):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3, msg=lambda m: f"{key}: {m}")


def _train_regression(dtype, steps=300, **options):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    data = torch.randn(256, 16)
    target = torch.sin(data.sum(1, keepdim=True))
    model = model.to(dtype)
    opt = gf.AdamW(model.parameters(), lr=1e-3, **options)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(data.to(dtype)).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model.float()(data), target).item()


def test_bf16_with_master_weights_tracks_fp32():
    """300 AdamW steps (lr 1e-3) of a 16-64-1 MLP: bf16 with master weights ends within 5 % of the fp32
    run's loss (the gradients themselves are bf16, so the runs are not identical)."""
    fp32 = _train_regression(torch.float32)
    master = _train_regression(torch.bfloat16, master_weights=True)
    assert abs(master - fp32) <= 0.05 * fp32, (master, fp32)


def test_stochastic_rounding_is_unbiased():
    x = torch.full((200_000,), 1.0 + 2.0**-10)  # 1/8 of the way from bf16's 1.0 to 1.0078125
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    stochastic_round_(out, x, (0, 1, 2))
    assert set(out.float().unique().tolist()) == {1.0, 1.0 + 2.0**-7}
    # the mean error tends to zero: within 4 standard errors of a Bernoulli(1/8) draw
    sigma = 2.0**-7 * (0.125 * 0.875 / x.numel()) ** 0.5
    assert abs(out.float().mean().item() - x[0].item()) < 4 * sigma
    neg = torch.empty(x.shape, dtype=torch.bfloat16)
    stochastic_round_(neg, -x, (0, 1, 3))
    assert abs(neg.float().mean().item() + x[0].item()) < 4 * sigma
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0])
    out = torch.empty(4, dtype=torch.bfloat16)
    stochastic_round_(out, special, (0, 0, 0))
    assert out[0] == float("inf") and out[1] == -float("inf") and out[2].isnan() and out[3] == 0


def test_stochastic_rounding_keeps_updates_below_half_an_ulp():
    """1000 steps of +1e-4 on 1.0: nearest rounding never moves (half an ulp is 3.9e-3), stochastic
    rounding adds 0.1 on average."""
    def run(**options):
        p = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
        opt = gf.PersistentSGD([p], lr=1e-4, decay=0.0, **options)
        for _ in range(1000):
            p.grad = -torch.ones_like(p)
            opt.step()
        return p.float().mean().item()

    assert run() == 1.0
    assert abs(run(stochastic_rounding=True) - 1.1) < 0.01


def test_stochastic_rounding_is_reproducible_and_resumes():
    def run(resume_at=None):
        params = _params(torch.bfloat16)
        opt = gf.AdamW(params, lr=1e-2, stochastic_rounding=True, seed=3)
        gen = torch.Generator().manual_seed(1)
        for step in range(6):
            if step == resume_at:
                buffer = io.BytesIO()
                torch.save(opt.state_dict(), buffer)
                buffer.seek(0)
                params = [p.detach().clone().requires_grad_() for p in params]
                opt = gf.AdamW(params, lr=1e-2, stochastic_rounding=True, seed=3)
                opt.load_state_dict(torch.load(buffer, weights_only=True))
            for p, g in zip(params, _grads(params, gen)):
                p.grad = g
            opt.step()
        return params

    straight = run()
    for a, b in zip(straight, run()):
        assert torch.equal(a, b)
    for a, b in zip(straight, run(resume_at=3)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("option", ["state_fp32", "master"])
def test_checkpoint_keeps_fp32_state_and_resumes_bitwise(option):
    """torch's load_state_dict casts floating state to the parameter's dtype; ours keeps fp32 fp32."""
    params = _params(torch.bfloat16)
    opt = gf.RAdamW(params, lr=1e-2, **OPTIONS[option])
    gen = torch.Generator().manual_seed(1)
    _step_side_by_side([opt], [params], gen, steps=3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = gf.RAdamW(resumed_params, lr=1e-2, **OPTIONS[option])
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for (_, a), (_, b) in zip(all_states(opt), all_states(resumed), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    _step_side_by_side([opt, resumed], [params, resumed_params], gen, steps=3)
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)


def test_found_inf_leaves_master_weights_and_parameters_unchanged():
    params = _params(torch.bfloat16)
    opt = gf.AdamW(params, lr=1e-2, master_weights=True)
    gen = torch.Generator().manual_seed(1)
    for p, g in zip(params, _grads(params, gen)):
        p.grad = g
    opt.step()
    before = copy.deepcopy(([p.detach() for p in params], [t for _, t in all_states(opt)]))
    opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before[0], params))
    assert all(torch.equal(a, b) for a, (_, b) in zip(before[1], all_states(opt)))


@pytest.mark.parametrize("kwargs, dtype, message", [
    (dict(state_dtype=torch.int32), torch.bfloat16, "Invalid state_dtype value: torch.int32"),
    (dict(state_dtype=torch.float16), torch.bfloat16, "state_dtype=torch.float16 does not fit params[0]"),
    (dict(master_weights=True, state_dtype=torch.bfloat16), torch.bfloat16, "master_weights=True keeps fp32 states"),
    (dict(master_weights=True, stochastic_rounding=True), torch.bfloat16, "choose one of"),
    (dict(stochastic_rounding=True), torch.float16, "stochastic_rounding=True needs bfloat16 parameters"),
    (dict(master_weights="yes"), torch.bfloat16, "Invalid master_weights value: 'yes'"),
    (dict(seed=-1), torch.bfloat16, "Invalid seed value: -1"),
])
def test_bad_options_are_named(kwargs, dtype, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        gf.AdamW(_params(dtype), **kwargs)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'master_weight'"):
        gf.AdamW(_params(torch.bfloat16), master_weight=True)


@pytest.mark.parametrize("saved, loaded", [({}, OPTIONS["state_fp32"]), (OPTIONS["master"], {})],
                         ids=["bf16-state->fp32-state", "master->plain"])
def test_loading_converts_states_to_this_optimizers_precision(saved, loaded):
    """The precision scheme is this optimizer's choice (as `fused`): a checkpoint's states are converted."""
    params = _params(torch.bfloat16)
    first = gf.AdamW(params, lr=1e-2, **saved)
    gen = torch.Generator().manual_seed(1)
    for p, g in zip(params, _grads(params, gen)):
        p.grad = g
    first.step()
    second = gf.AdamW([p.detach().clone().requires_grad_() for p in params], lr=1e-2, **loaded)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    want = torch.float32 if loaded else torch.bfloat16
    for p, q in zip(params, second.param_groups[0]["params"]):
        for key in ("exp_avg", "exp_avg_sq"):
            assert second.state[q][key].dtype == want
            torch.testing.assert_close(second.state[q][key], first.state[p][key].to(want), rtol=0, atol=0)
    assert second.param_groups[0]["state_dtype"] == loaded.get("state_dtype")
    assert second.param_groups[0]["master_weights"] == loaded.get("master_weights", False)
    assert all("master_weight" not in second.state[q] for q in second.param_groups[0]["params"])


@pytest.mark.parametrize("option", list(OPTIONS))
def test_cpu_step_allocates_no_working_copies(option):
    """NOTE: [mixed precision in one pass] on the CPU: a step of bf16 parameters with any option allocates
    nothing (the working copies took 4 bytes per element and more)."""
    from gradfused.benchmarking import step_peak_bytes

    params = _params(torch.bfloat16, shapes=[(50_000,), (3, 1000)])
    opt = gf.AdamW(params, lr=1e-2, **OPTIONS[option])
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert step_peak_bytes(opt.step, torch.device("cpu")) == 0


# ---- bf16 states on fp32 parameters (state_dtype=torch.bfloat16) ----

BF16_STATES = {"bf16_states": dict(state_dtype=torch.bfloat16),
               "bf16_states_stochastic": dict(state_dtype=torch.bfloat16, stochastic_rounding=True, seed=7)}


def _bf16_state_dtypes_hold(opt):
    for (_, _, name), t in all_states(opt):
        if name not in ("step", "mu_product", "alignment_ema", "eta"):
            assert t.dtype == torch.bfloat16, (name, t.dtype)


@pytest.mark.parametrize("option", list(BF16_STATES))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_bf16_states_fused_equal_the_working_copies_and_the_reference_bitwise(case, option):
    """fp32 parameters with bf16 states: every value computed in fp32 and each state rounded once on its
    store, to nearest or at random (Philox word 1 + k for state k). The fused kernel, the native fp32 kernel
    on fp32 working copies of the states and the reference give the same parameters and states, bit for
    bit."""
    options = BF16_STATES[option]
    lists = [_params(torch.float32) for _ in range(3)]
    fused = case.make(lists[0], True, **options)
    work = _working_copies(case.make(lists[1], True, **options))
    ref = case.make(lists[2], False, **options)
    _step_side_by_side([fused, work, ref], lists, torch.Generator().manual_seed(1), steps=6)
    for other in (work, ref):
        for p, q in zip(lists[0], lists[1] if other is work else lists[2]):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
        for (key, a), (_, b) in zip(all_states(fused), all_states(other), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{key}: {m}")
    assert all(p.dtype == torch.float32 for p in lists[0])
    _bf16_state_dtypes_hold(fused)


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_bf16_states_round_at_random_without_bias(fused):
    """exp_avg of a constant gradient 1 with beta1 = 0.999 after 3000 steps is 1 - 0.999^3000 = 0.9502.
    Rounded to nearest bf16 it stalls near 0.5, where (1 - beta1)(1 - m) is below half an ulp; rounded at
    random it tracks the exact value (the mean over 4096 elements)."""
    means = {}
    for stochastic in (False, True):
        p = torch.zeros(4096, requires_grad=True)
        opt = gf.AdamW([p], lr=0.0, betas=(0.999, 0.999), weight_decay=0.0, fused=fused,
                       state_dtype=torch.bfloat16, stochastic_rounding=stochastic, seed=3)
        p.grad = torch.ones(4096)
        for _ in range(3000):
            opt.step()
        means[stochastic] = opt.state[p]["exp_avg"].float().mean().item()
    exact = 1 - 0.999 ** 3000
    assert means[False] < 0.6, means
    assert abs(means[True] - exact) < 0.01 * exact, means


def test_bf16_states_halve_the_state_memory():
    p = torch.zeros(4096, requires_grad=True)
    opt = gf.AdamW([p], state_dtype=torch.bfloat16)
    p.grad = torch.ones(4096)
    opt.step()
    state_bytes = sum(t.numel() * t.element_size() for t in opt.state[p].values() if t.dim() > 0)
    assert state_bytes == 4 * 4096  # two bf16 moments: 4 bytes a parameter, against fp32's 8


@pytest.mark.parametrize("saved, loaded", [
    ({}, dict(state_dtype=torch.bfloat16)),
    (dict(state_dtype=torch.bfloat16), {}),
    (dict(state_bits=8, quantize_min_numel=0), dict(state_dtype=torch.bfloat16)),
    (dict(state_dtype=torch.bfloat16), dict(state_bits=8, quantize_min_numel=0)),
], ids=["fp32->bf16", "bf16->fp32", "8bit->bf16", "bf16->8bit"])
def test_bf16_state_checkpoints_convert_to_and_from_fp32_and_8bit(saved, loaded):
    """A checkpoint's states take this optimizer's format: fp32 states are rounded to bf16, bf16 ones
    widened exactly, 8-bit ones decoded then rounded, bf16 ones encoded; the next step runs."""
    from gradfused import quantization as Q
    params = _params(torch.float32, shapes=[(4097,), (3, 5)])
    first = gf.AdamW(params, lr=1e-2, **saved)
    gen = torch.Generator().manual_seed(1)
    for p, g in zip(params, _grads(params, gen)):
        p.grad = g
    first.step()
    copies = [p.detach().clone().requires_grad_() for p in params]
    second = gf.AdamW(copies, lr=1e-2, **loaded)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for p, q in zip(params, copies):
        for key in ("exp_avg", "exp_avg_sq"):
            theirs, ours = first.state[p][key], second.state[q][key]
            if theirs.dtype == torch.uint8:
                theirs = Q.dequantize_blockwise(theirs, first.state[p][key + "_absmax"], key == "exp_avg")
            if ours.dtype == torch.uint8:  # encoded from the bf16 values, as quantize_blockwise does
                codes, absmax = Q.quantize_blockwise(theirs, key == "exp_avg")
                assert torch.equal(ours, codes) and torch.equal(second.state[q][key + "_absmax"], absmax)
            else:
                assert ours.dtype == (torch.bfloat16 if loaded.get("state_dtype") else torch.float32)
                torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=0, atol=0)
    for q, g in zip(copies, _grads(copies, gen)):
        q.grad = g
    second.step()
    assert all(bool(q.isfinite().all()) for q in copies)


@pytest.mark.parametrize("kwargs, message", [
    (dict(state_dtype=torch.bfloat16), "state_dtype=torch.bfloat16 does not fit params[0] of dtype torch.float64"),
    (dict(stochastic_rounding=True), "stochastic_rounding=True needs bfloat16 parameters, or float32 parameters "
                                     "with state_dtype=torch.bfloat16"),
])
def test_bf16_state_options_that_do_not_fit_are_named(kwargs, message):
    dtype = torch.float64 if "state_dtype" in kwargs else torch.float32
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        gf.AdamW(_params(dtype), **kwargs)
