"""Drop-in behaviour: skipped parameters, schedulers, closures, checkpoints, AMP skip, determinism."""
import copy
import io
import os
import pickle
import subprocess
import sys
import time

import pytest
import torch

import gradfused as gf
from devices import DEVICES
from optim_table import CASES, Case, all_states


def fill_grads(params, gen=None):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def step_on_the_same_grads(opt, params, twin, twin_params, steps):
    """`steps` steps of two optimizers over twin parameter lists, on the same fresh gradients."""
    for _ in range(steps):
        fill_grads(params)
        for p, q in zip(params, twin_params):
            q.grad = p.grad.clone()
        opt.step()
        twin.step()


def snapshot(opt, params):
    return [p.detach().clone() for p in params], [(k, v.clone()) for k, v in all_states(opt)]


def assert_same(a, b):
    (pa, sa), (pb, sb) = a, b
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert [k for k, _ in sa] == [k for k, _ in sb]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(sa, sb))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_step_with_all_grads_none_changes_nothing(case):
    params = [torch.randn(10, requires_grad=True) for _ in range(3)]
    opt = case.make(params, True)
    before = [p.detach().clone() for p in params]
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all_states(opt) == []


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_frozen_then_unfrozen_parameter(fused):
    a, b = torch.randn(20, requires_grad=True), torch.randn(20, requires_grad=True)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    opt, ref = gf.RAdam([a, b], lr=1e-2, fused=fused), torch.optim.RAdam([a2, b2], lr=1e-2)
    for step in range(10):
        a.grad = torch.randn(20)
        a2.grad = a.grad.clone()
        b.grad = torch.randn(20) if step >= 4 else None  # frozen for 4 steps
        b2.grad = None if b.grad is None else b.grad.clone()
        opt.step()
        ref.step()
    assert opt.state[a]["step"].item() == 10 and opt.state[b]["step"].item() == 6
    torch.testing.assert_close(a, a2)
    torch.testing.assert_close(b, b2)


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
def test_lr_scheduler_matches_torch(tensor_lr):
    lr = torch.tensor(0.01) if tensor_lr else 0.01
    params = [torch.randn(64, requires_grad=True)]
    ref_params = [params[0].detach().clone().requires_grad_()]
    ours = gf.GradientAlignment(gf.AdamW(params, lr=lr))
    theirs = gf.GradientAlignment(torch.optim.AdamW(ref_params, lr=0.01))
    sched = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (ours, theirs)]
    for _ in range(7):
        fill_grads(params)
        ref_params[0].grad = params[0].grad.clone()
        ours.step()
        theirs.step()
        for s in sched:
            s.step()
    assert float(ours.param_groups[0]["lr"]) == pytest.approx(0.01 * 0.5**3)
    torch.testing.assert_close(params[0], ref_params[0])


def test_closure_is_called_and_its_loss_returned():
    w = torch.randn(5, requires_grad=True)
    opt = gf.AdamW([w])

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and w.grad is not None


@pytest.mark.parametrize("case", CASES, ids=str)
def test_checkpoint_resume_is_bitwise_identical(case):
    params = [torch.randn(s, requires_grad=True) for s in [(40,), (3, 4), ()]]
    opt = case.make(params, True)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        fill_grads(params, gen)
        opt.step()
    saved_params = [p.detach().clone() for p in params]
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # through a file, as a real checkpoint; also copies the tensors
    gen_state = gen.get_state()
    for _ in range(4):
        fill_grads(params, gen)
        opt.step()
    uninterrupted = snapshot(opt, params)

    resumed_params = [p.clone().requires_grad_() for p in saved_params]
    resumed = case.make(resumed_params, True)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    gen.set_state(gen_state)
    for _ in range(4):
        fill_grads(resumed_params, gen)
        resumed.step()
    assert_same(snapshot(resumed, resumed_params), uninterrupted)


@pytest.mark.parametrize("saved_fused, fused", [(False, None), (True, False)])
def test_loading_keeps_this_optimizers_implementation(saved_fused, fused):
    """torch pitfall: implementation flags saved in param_groups silently switched the implementation."""
    params = [torch.randn(8, requires_grad=True)]
    first = gf.AdamW(params, fused=saved_fused)
    fill_grads(params)
    first.step()
    second = gf.AdamW([p.detach().clone().requires_grad_() for p in params], fused=fused)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    assert second.param_groups[0]["fused"] is fused
    assert second.param_groups[0]["lr"] == first.param_groups[0]["lr"]


@pytest.mark.parametrize(
    "ours, theirs",
    [(lambda p: gf.Adam(p, lr=1e-2, amsgrad=True), lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True)),
     (lambda p: gf.AdamW(p, lr=1e-2), lambda p: torch.optim.AdamW(p, lr=1e-2)),
     (lambda p: gf.RAdam(p, lr=1e-2), lambda p: torch.optim.RAdam(p, lr=1e-2)),
     (lambda p: gf.NAdam(p, lr=1e-2), lambda p: torch.optim.NAdam(p, lr=1e-2)),
     (lambda p: gf.RMSprop(p, lr=1e-2, momentum=0.9, centered=True),
      lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9, centered=True))],
    ids=["Adam", "AdamW", "RAdam", "NAdam", "RMSprop"],
)
@pytest.mark.parametrize("direction", ["torch->gradfused", "gradfused->torch"])
def test_state_dict_cross_loads_with_torch(ours, theirs, direction):
    first, second = (theirs, ours) if direction == "torch->gradfused" else (ours, theirs)
    params = [torch.randn(30, requires_grad=True), torch.randn(4, 5, requires_grad=True)]
    opt = first(params)
    for _ in range(3):
        fill_grads(params)
        opt.step()
    continued = second(params)
    continued.load_state_dict(copy.deepcopy(opt.state_dict()))  # loading does not copy the tensors
    twin = first([p.detach().clone().requires_grad_() for p in params])
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    twin_params = twin.param_groups[0]["params"]
    step_on_the_same_grads(continued, params, twin, twin_params, steps=4)
    for p, q in zip(params, twin_params):
        torch.testing.assert_close(p, q)


def test_torch_sgd_checkpoint_loads_into_persistent_sgd():
    params = [torch.randn(30, requires_grad=True)]
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    fill_grads(params)
    sgd.step()
    ours = gf.PersistentSGD(params, lr=0.5, decay=0.5)
    ours.load_state_dict(copy.deepcopy(sgd.state_dict()))
    assert ours.param_groups[0]["decay"] == 0.9 and ours.param_groups[0]["lr"] == 0.1
    twin = [params[0].detach().clone().requires_grad_()]
    sgd2 = torch.optim.SGD(twin, lr=0.1, momentum=0.9)
    sgd2.load_state_dict(copy.deepcopy(sgd.state_dict()))
    for _ in range(3):
        fill_grads(params)
        twin[0].grad = params[0].grad.clone()
        ours.step()
        sgd2.step()
    torch.testing.assert_close(params[0], twin[0])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_found_inf_skips_the_whole_step(case):
    params = [torch.randn(33, requires_grad=True), torch.randn(2, 3, requires_grad=True)]
    opt = case.make(params, True)
    fill_grads(params)
    opt.step()
    before = snapshot(opt, params)
    fill_grads(params)
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(1.0)
    opt.step()
    assert_same(snapshot(opt, params), before)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_grad_scaler_unscales_skips_and_backs_off(case):
    """Every optimizer under torch.amp.GradScaler equals an unscaled twin; an injected inf, then a NaN,
    leaves parameters, states and step exactly unchanged while the scale backs off. For GradientAlignment
    the twin's EMAs and scales come from unscaled gradients, so equality shows the wrapper unscales."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    twin = copy.deepcopy(model)
    params = list(model.parameters())
    opt, ref = case.make(params, True), case.make(list(twin.parameters()), True)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    x = torch.randn(16, 8)
    for step in range(6):
        opt.zero_grad()
        ref.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        twin(x).pow(2).mean().backward()
        if step in (2, 3):  # overflows: the step is skipped and the scale backs off
            model.weight.grad[0, 0] = float("inf") if step == 2 else float("nan")
            before = snapshot(opt, params)
        scaler.step(opt)
        scaler.update()
        if step in (2, 3):
            assert_same(snapshot(opt, params), before)
        else:
            ref.step()
    assert scaler.get_scale() == 64.0
    for p, q in zip(params, twin.parameters()):
        torch.testing.assert_close(p, q)
    for (_, s), (_, t) in zip(all_states(opt), all_states(ref), strict=True):
        torch.testing.assert_close(s, t)


@pytest.mark.parametrize("fused", [True, None, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_grad_scaler_leaves_grad_as_torch_adamw_does(device, dtype, fused):
    """NOTE: [GradScaler: who unscales]: after scaler.step, .grad holds bit for bit what torch's AdamW with
    the same `fused` leaves. fused=True unscales in the kernel, dividing by the scale (NOTE: [GradScaler and
    .grad]); otherwise GradScaler's unscale_ multiplies by 1/scale, as for torch's for-loop AdamW (a scale of
    3 is not a power of two, so the two differ). A step skipped for an inf leaves .grad scaled with
    fused=True, and unscaled otherwise (GradScaler's unscale_ ran before it found the inf)."""
    torch.manual_seed(0)
    grads = [torch.randn(4097, device=device).to(dtype) for _ in range(3)]
    grads[2][5] = float("inf")
    left = {}
    for who in ("torch", "gradfused"):
        p = torch.nn.Parameter(torch.ones(4097, device=device, dtype=dtype))
        opt = (torch.optim.AdamW if who == "torch" else gf.AdamW)([p], lr=1e-2, fused=fused)
        assert getattr(opt, "_step_supports_amp_scaling", False) is (fused is True)
        scaler = torch.amp.GradScaler(device, init_scale=3.0, growth_interval=1000)
        left[who] = []
        for g in grads:
            scaled = scaler.scale(g)
            p.grad = scaled.clone()
            scaler.step(opt)
            scaler.update()
            left[who].append(p.grad.clone())
    for ours, theirs in zip(left["gradfused"], left["torch"], strict=True):
        assert torch.equal(ours, theirs)
    assert torch.equal(left["torch"][2], scaled) is (fused is True)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_grad_scale_leaves_the_unscaled_gradient_in_grad(case):
    """Every optimizer of the table, native and reference: .grad ends as the gradient divided by the
    scale, neither negated (maximize) nor scaled by the alignment."""
    for fused in (True, False):
        params = [torch.randn(33, requires_grad=True), torch.randn(2, 3, requires_grad=True)]
        opt = case.make(params, fused)
        fill_grads(params)
        scaled = [p.grad.clone() for p in params]
        opt.grad_scale, opt.found_inf = torch.tensor(3.0), torch.tensor(0.0)
        opt.step()
        for p, g in zip(params, scaled):
            assert torch.equal(p.grad, (g.double() / 3.0).float()), fused


@pytest.mark.parametrize("device", DEVICES)
def test_alignment_sums_do_not_depend_on_where_the_tensor_lies(device):
    """The same values at storage offsets of 0 to 7 elements (16-byte aligned or not, as DDP's
    gradient_as_bucket_view hands out) give bitwise the same sums: the reduction order is fixed by the
    element index alone (NOTE: [deterministic alignment sums])."""
    torch.manual_seed(0)
    sizes = [(1 << 17) + 3, 4097, 5]
    grads = [torch.randn(n, device=device) for n in sizes]
    emas = [torch.randn(n, device=device) for n in sizes]
    results = []
    for offset in range(8):
        def at_offset(t):
            storage = torch.empty(t.numel() + offset, device=device)
            view = storage[offset:]
            view.copy_(t)
            return view

        sums = torch.zeros(len(sizes), 3, dtype=torch.float64, device=device)
        moved = [at_offset(e) for e in emas]
        torch.ops.gradfused.alignment_sums_([at_offset(g) for g in grads], moved, sums, beta=0.9)
        results.append((sums.cpu(), [e.cpu() for e in moved]))
    for sums, moved in results[1:]:
        assert torch.equal(sums, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(moved, results[0][1]))


def _run_for_threads(threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    params = [torch.randn(n, requires_grad=True) for n in (100_003, 3 * 2**15 + 5, 17)]
    opt = gf.GradientAlignment(gf.AdEMA(params, lr=1e-2))
    for _ in range(4):
        fill_grads(params)
        opt.step()
    return snapshot(opt, params)


def test_bitwise_identical_across_thread_counts():
    original = torch.get_num_threads()
    try:
        assert_same(_run_for_threads(1), _run_for_threads(2))
    finally:
        torch.set_num_threads(original)


_ISA_SCRIPT = """
import sys, torch, gradfused as gf
torch.manual_seed(0)
out = {}
for name, make in [("adamw", lambda p: gf.AdamW(p, lr=1e-2, amsgrad=True)), ("radam", lambda p: gf.RAdam(p, lr=1e-2)),
                   ("adema", lambda p: gf.AdEMA(p, lr=1e-2)), ("sgd", lambda p: gf.PersistentSGD(p, nesterov=True)),
                   ("align", lambda p: gf.GradientAlignment(gf.AdamW(p))), ("nadam", lambda p: gf.NAdam(p)),
                   ("rmsprop", lambda p: gf.RMSprop(p, momentum=0.9, centered=True)),
                   ("ascent", lambda p: gf.GradientAscent(p, nesterov=True, clip_value=1.0)),
                   ("random", lambda p: gf.AdamW(p, grad_noise=(0.1, 0.55), grad_dropout=0.2, lr_dropout=0.5, seed=9)),
                   ("8-bit", lambda p: gf.AdamW(p, lr=1e-2, state_bits=8, quantize_min_numel=0))]:
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        params = [torch.randn(n, dtype=dtype, requires_grad=True) for n in (1000, 37)]
        opt = make(params)
        for _ in range(7):
            for p in params:
                p.grad = torch.randn(p.shape).to(dtype)
            opt.step()
        states = [t.reshape(-1).clone() for p in params for t in opt.state[p].values()] if name == "8-bit" else []
        out[(name, str(dtype))] = [p.detach().clone() for p in params] + states
for dtype in (torch.bfloat16, torch.float16):  # inf, NaN, overflow and subnormals through the vector stores
    special = [float("inf"), float("-inf"), float("nan"), 3e38, -3e38, 1e-40, 1.0, 0.0] * 5
    p = torch.tensor(special, requires_grad=True).to(dtype).detach().requires_grad_()
    p.grad = torch.tensor(special[::-1]).to(dtype)
    gf.PersistentSGD([p], lr=1.0, decay=0.5).step()
    out[("special", str(dtype))] = [p.detach().clone()]
out["isa"] = gf.ops.cpu_isa()
torch.save(out, sys.argv[1])
"""


def test_every_instruction_set_gives_the_same_numbers(tmp_path):
    """The generic (no AVX) and AVX2 kernels run here too, capped by GRADFUSED_CPU_ISA, and must agree bitwise
    with the best kernels of this CPU: the elementwise math is the same IEEE operations in the same order.
    8-bit states too: their codes and scales, whose encode and decode each instruction set has its own of."""
    results = {}
    # the subprocess imports the very gradfused this process runs (installed or in-place build): started
    # from the repository root it would import the source tree and compile it afresh
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(gf.__file__)))
    for isa in ("generic", "avx2", "best"):  # avx2: on an AVX-512 CPU, its own kernels
        env = dict(os.environ, PYTHONPATH=package_root)
        env.pop("GRADFUSED_CPU_ISA", None)
        if isa != "best":  # any other value caps the choice (an unknown one, to generic)
            env["GRADFUSED_CPU_ISA"] = isa
        path = tmp_path / f"{isa}.pt"
        subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(path)], env=env, check=True, cwd=tmp_path)
        results[isa] = torch.load(path)
    assert results["generic"].pop("isa") == "generic"
    print("instruction sets here:", results["avx2"].pop("isa"), results["best"].pop("isa"))
    for other in ("avx2", "best"):
        for key, params in results["generic"].items():
            assert len(params) == len(results[other][key]), key
            for a, b in zip(params, results[other][key]):
                if key[0] == "align":  # only the lane count of the double sums differs
                    torch.testing.assert_close(a, b, msg=str(key))
                else:  # bitwise, NaNs included
                    assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), (other, key)


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, capsys):
    """A compile killed half way leaves torch's `lock` file; an old one is removed (with a message) so that
    the next import does not wait forever, a fresh one (a compile in progress) is waited for."""
    from gradfused import _native

    lock = tmp_path / "lock"
    lock.touch()
    _native._clear_stale_lock(str(tmp_path))
    assert lock.exists() and "waiting for another process" in capsys.readouterr().err
    old = time.time() - _native.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    _native._clear_stale_lock(str(tmp_path))
    assert not lock.exists() and "removing a stale build lock" in capsys.readouterr().err


_IMPORT_SCRIPT = """
import gradfused, gradfused._native as native
from gradfused.cli import main
for argv in (["--help"], ["compare", "--epochs", "x"], ["bench", "--rounds", "0"],
             ["compare", "--optimizers", "adamw:lr=1e-3", "adamw:lr=-1"]):
    try:
        main(argv)
    except SystemExit:
        pass
print("loaded:", native.BUILD_KIND)
"""


def test_import_help_and_argument_errors_do_not_load_the_kernels(tmp_path):
    """On a cold cache loading means a compile of minutes: `import gradfused`, --help and a bad argument,
    a bad optimizer spec included, must not wait for it."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(gf.__file__)))
    out = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT], env=dict(os.environ, PYTHONPATH=package_root),
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("loaded: None"), out.stdout + out.stderr


def test_source_tree_and_installed_copy_keep_separate_build_caches(tmp_path):
    from gradfused._native import jit_name

    tree, installed = tmp_path / "repo" / "csrc", tmp_path / "site-packages" / "gradfused" / "_csrc"
    assert jit_name(str(tree)) == jit_name(str(tree))  # one cache per location, reused
    assert jit_name(str(tree)) != jit_name(str(installed))  # never each other's
    assert torch.__version__.replace(".", "_").replace("+", "_") in jit_name(str(tree))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_amsgrad_maximum_keeps_a_nan_as_torch_does(device, fused):
    """torch.maximum propagates NaN: a NaN in max_exp_avg_sq stays NaN, in the SIMD body and in the
    scalar tail alike (index 0 and 36 of 37 elements)."""
    torch.manual_seed(0)
    p = torch.randn(37, device=device, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    ours, theirs = gf.Adam([p], lr=1e-2, amsgrad=True, fused=fused), torch.optim.Adam([q], lr=1e-2, amsgrad=True)
    for step in range(3):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
        ours.step()
        theirs.step()
        if step == 0:
            for opt, param in ((ours, p), (theirs, q)):
                opt.state[param]["max_exp_avg_sq"][[0, 36]] = float("nan")
    for key in ("max_exp_avg_sq", "exp_avg_sq"):
        torch.testing.assert_close(ours.state[p][key], theirs.state[q][key], equal_nan=True)
    assert ours.state[p]["max_exp_avg_sq"][[0, 36]].isnan().all()
    torch.testing.assert_close(p, q, equal_nan=True)


@pytest.mark.parametrize("case", [c for c in CASES if c.name.endswith("[defaults]") or c.name.endswith("[lr=0.01]")],
                         ids=str)
def test_param_group_dicts_take_any_iterable(case):
    """{"params": model.head.parameters()} (a generator, read once) in the constructor and in
    add_param_group gives the group its parameters, as torch.optim does; a set is refused, as torch does."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2), torch.nn.Linear(2, 1))
    opt = case.make([{"params": model[0].parameters(), "lr": 1e-4}, {"params": iter([model[1].weight])}], True)
    opt.add_param_group({"params": (p for p in model[2].parameters())})
    assert [len(g["params"]) for g in opt.param_groups] == [2, 1, 2]
    assert opt.param_groups[0]["lr"] == 1e-4
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert [not torch.equal(p, q) for p, q in zip(model.parameters(), before)][:3] == [True, True, True]
    with pytest.raises(TypeError, match="ordered collections"):
        opt.add_param_group({"params": {torch.nn.Parameter(torch.zeros(1))}})


def test_grad_scaler_flag_is_torchs():
    """NOTE: [GradScaler: who unscales]: in-kernel unscaling for fused=True, as torch's fused optimizers, and
    for float16 parameters, whose gradients GradScaler's unscale_ refuses; otherwise GradScaler unscales, so
    Lightning allows gradient clipping under AMP. GradientAlignment follows its base."""
    p32 = [torch.nn.Parameter(torch.randn(3))]
    p16 = [torch.nn.Parameter(torch.randn(3, dtype=torch.float16))]
    assert gf.AdamW(p32, fused=True)._step_supports_amp_scaling is True
    assert gf.AdamW(p32)._step_supports_amp_scaling is False
    assert gf.AdamW(p32, fused=False)._step_supports_amp_scaling is False
    assert gf.AdamW(p16, master_weights=True)._step_supports_amp_scaling is True
    assert gf.GradientAlignment(gf.AdamW(p32, fused=True))._step_supports_amp_scaling is True
    assert gf.GradientAlignment(gf.SGD(p32, lr=0.1))._step_supports_amp_scaling is False
    assert copy.deepcopy(gf.AdamW(p32, fused=True))._step_supports_amp_scaling is True


def test_float16_parameters_train_under_grad_scaler_without_fused():
    """GradScaler's own unscale_ refuses float16 gradients ("Attempting to unscale FP16 gradients"): with
    float16 parameters the step unscales them itself."""
    p = torch.nn.Parameter(torch.randn(8, dtype=torch.float16))
    opt = gf.AdamW([p], lr=1e-2, master_weights=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    before = p.detach().clone()
    p.grad = scaler.scale(torch.randn(8, dtype=torch.float16))
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(p, before) and scaler.get_scale() == 4.0


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("case", CASES + [Case("Lookahead(AdamW)", lambda p, fused: gf.Lookahead(gf.AdamW(p, fused=fused), k=2))],
                         ids=str)
def test_a_copied_optimizer_steps_as_the_original(case, how):
    """copy.deepcopy or pickle of any gradfused optimizer or wrapper (its parameters come along, without
    their .grad, as torch copies a Parameter) steps exactly as the original."""
    params = [torch.randn(s, requires_grad=True) for s in [(4097,), (3, 5), ()]]
    opt = case.make(params, True)
    for _ in range(3):
        fill_grads(params)
        opt.step()
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    twin_params = [p for group in twin.param_groups for p in group["params"]]
    step_on_the_same_grads(opt, params, twin, twin_params, steps=3)
    for p, q in zip(params, twin_params, strict=True):
        assert torch.equal(p, q)
