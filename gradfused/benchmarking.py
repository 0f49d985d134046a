"""What the speed benchmarks measure, shared by the pytest-benchmark suite (benchmarks/) and
`gradfused bench`: the cases, the providers, the bytes each step moves and the yardstick.

The yardstick is an in-place `a.add_(b, alpha=0.5)` over 10M fp32: 12 bytes per element, the same
read-modify-write pattern as an optimizer step (DESIGN.md, performance model)."""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import statistics
import time
from typing import Callable

import torch

import gradfused as gf

SMALL_SHRINK = 100  # GRADFUSED_BENCH_SMALL / --small: every case about 100x smaller, for a smoke run


def _split(total: int, count: int) -> Callable[[bool], list[tuple[int, ...]]]:
    """`total` elements in `count` equal tensors (SMALL_SHRINK times fewer when small)."""
    return lambda small: [(total // (SMALL_SHRINK if small else 1) // count,)] * count


def gpt2_shapes(n_layer: int = 12, n_embd: int = 768, vocab: int = 50257, n_ctx: int = 1024) -> list[tuple[int, ...]]:
    """The parameter shapes of GPT-2 (Hugging Face layout, tied output embedding); the defaults are
    GPT-2 small: 124,439,808 parameters in 148 tensors."""
    block = [(n_embd,), (n_embd,), (n_embd, 3 * n_embd), (3 * n_embd,), (n_embd, n_embd), (n_embd,),
             (n_embd,), (n_embd,), (n_embd, 4 * n_embd), (4 * n_embd,), (4 * n_embd, n_embd), (n_embd,)]
    return [(vocab, n_embd), (n_ctx, n_embd), *block * n_layer, (n_embd,), (n_embd,)]


def resnet50_shapes(widths=(64, 128, 256, 512), blocks=(3, 4, 6, 3), classes: int = 1000) -> list[tuple[int, ...]]:
    """The parameter shapes of ResNet-50 (torchvision's layout: bottleneck blocks, a batch norm's weight
    and bias after every convolution); the defaults give 25,557,032 parameters in 161 tensors."""
    def conv_bn(out: int, inp: int, k: int) -> list[tuple[int, ...]]:
        return [(out, inp, k, k), (out,), (out,)]

    shapes = conv_bn(widths[0], 3, 7)
    inp = widths[0]
    for width, count in zip(widths, blocks):
        for b in range(count):
            shapes += conv_bn(width, inp, 1) + conv_bn(width, width, 3) + conv_bn(4 * width, width, 1)
            if b == 0:  # the projection shortcut
                shapes += conv_bn(4 * width, inp, 1)
            inp = 4 * width
    return shapes + [(classes, inp), (classes,)]


def decoder_1b_shapes() -> list[tuple[int, ...]]:
    """A 1B-class decoder (GPU benchmarks only): GPT-2's block at width 2048 with an MLP of 8192, 16 layers,
    a 32k vocabulary and an untied output head; 944,148,480 parameters in 197 tensors."""
    return gpt2_shapes(n_layer=16, n_embd=2048, vocab=32768, n_ctx=2048) + [(32768, 2048)]


# name -> (shapes(small), dtype, gradfused's mixed-precision options)
CASES: dict[str, tuple[Callable[[bool], list[tuple[int, ...]]], torch.dtype, dict]] = {
    "a-10M-in-100": (_split(10_000_000, 100), torch.float32, {}),
    "b-10M-in-1000": (_split(10_000_000, 1000), torch.float32, {}),
    "c-1M-in-200": (_split(1_000_000, 200), torch.float32, {}),
    "d-gpt2-small": (lambda small: gpt2_shapes(n_embd=96, vocab=5026, n_ctx=128) if small else gpt2_shapes(),
                     torch.float32, {}),
    # pure per-tensor overhead: 1000 tensors of 100 elements
    "e-1000x100": (_split(100_000, 1000), torch.float32, {}),
    "f-resnet50": (lambda small: resnet50_shapes(widths=(8, 16, 32, 64), classes=100) if small else resnet50_shapes(),
                   torch.float32, {}),
    "g-10000x1000": (_split(10_000_000, 10_000), torch.float32, {}),
    "a-bf16": (_split(10_000_000, 100), torch.bfloat16, {}),
    "a-bf16-state-fp32": (_split(10_000_000, 100), torch.bfloat16, dict(state_dtype=torch.float32)),
    "a-bf16-master": (_split(10_000_000, 100), torch.bfloat16, dict(master_weights=True)),
    "a-bf16-stochastic": (_split(10_000_000, 100), torch.bfloat16, dict(stochastic_rounding=True, seed=0)),
    "a-bf16-states": (_split(10_000_000, 100), torch.float32, dict(state_dtype=torch.bfloat16)),
    "a-8bit-states": (_split(10_000_000, 100), torch.float32, dict(state_bits=8)),
    "d-gpt2-small-8bit-states": (lambda small: CASES["d-gpt2-small"][0](small), torch.float32, dict(state_bits=8)),
    "h-1M-8bit-states": (lambda small: [(10_000,)] if small else [(1_000_000,)], torch.float32, dict(state_bits=8)),
}
# A case with options runs gradfused's fused kernels against the same optimizer stepping fp32 working copies
# (`_fuse_precision = False`, the path the CPU took before the kernels fused mixed precision).
OPTION_PROVIDERS = ("gradfused", "gradfused_working_copies")
# A case with 8-bit states runs them against the same optimizer with fp32 states and, for AdamW, against
# bitsandbytes' AdamW8bit where it is installed.
EIGHT_BIT_PROVIDERS = ("gradfused", "gradfused_32bit", "bitsandbytes")

# fp32 bytes moved per element per step (DESIGN.md); 16-bit tensors move half as many.
BYTES_PER_ELEMENT = {"SGD": 20, "PersistentSGD": 20, "AdamW": 28, "RAdam": 28, "AdEMA": 36, "NAdam": 28, "RMSprop": 20,
                     "GradientAscent": 28, "Align(AdamW)": 40}

# optimizer -> provider -> factory(params); a provider is absent where it has no such optimizer
PROVIDERS: dict[str, dict[str, Callable]] = {
    "SGD": {  # torch's SGD exactly (momentum 0.9)
        "reference_forloop": lambda p: gf.SGD(p, lr=1e-2, momentum=0.9, fused=False),
        "torch_forloop": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, foreach=False),
        "torch_foreach": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, foreach=True),
        "torch_fused": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, fused=True),
        "gradfused": lambda p, **o: gf.SGD(p, lr=1e-2, momentum=0.9, **o),
    },
    "PersistentSGD": {
        "reference_forloop": lambda p: gf.PersistentSGD(p, decay=0.9, fused=False),
        "torch_forloop": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, foreach=False),
        "torch_foreach": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, foreach=True),
        "torch_fused": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, fused=True),
        "gradfused": lambda p, **o: gf.PersistentSGD(p, decay=0.9, **o),
    },
    "AdamW": {
        "reference_forloop": lambda p: gf.AdamW(p, fused=False),
        "torch_forloop": lambda p: torch.optim.AdamW(p, foreach=False),
        "torch_foreach": lambda p: torch.optim.AdamW(p, foreach=True),
        "torch_fused": lambda p: torch.optim.AdamW(p, fused=True),
        "gradfused": lambda p, **o: gf.AdamW(p, **o),
    },
    "RAdam": {
        "reference_forloop": lambda p: gf.RAdam(p, fused=False),
        "torch_forloop": lambda p: torch.optim.RAdam(p, foreach=False),
        "torch_foreach": lambda p: torch.optim.RAdam(p, foreach=True),
        "gradfused": lambda p, **o: gf.RAdam(p, **o),
    },
    "AdEMA": {
        "reference_forloop": lambda p: gf.AdEMA(p, fused=False),
        "gradfused": lambda p, **o: gf.AdEMA(p, **o),
    },
    "NAdam": {
        "reference_forloop": lambda p: gf.NAdam(p, fused=False),
        "torch_forloop": lambda p: torch.optim.NAdam(p, foreach=False),
        "torch_foreach": lambda p: torch.optim.NAdam(p, foreach=True),
        "gradfused": lambda p, **o: gf.NAdam(p, **o),
    },
    "RMSprop": {
        "reference_forloop": lambda p: gf.RMSprop(p, fused=False),
        "torch_forloop": lambda p: torch.optim.RMSprop(p, foreach=False),
        "torch_foreach": lambda p: torch.optim.RMSprop(p, foreach=True),
        "gradfused": lambda p, **o: gf.RMSprop(p, **o),
    },
    "GradientAscent": {
        "reference_forloop": lambda p: gf.GradientAscent(p, fused=False),
        "gradfused": lambda p, **o: gf.GradientAscent(p, **o),
    },
    "Align(AdamW)": {
        "reference_forloop": lambda p: gf.GradientAlignment(gf.AdamW(p, fused=False), fused=False),
        "torch_foreach": lambda p: gf.GradientAlignment(torch.optim.AdamW(p, foreach=True)),
        "gradfused": lambda p, **o: gf.GradientAlignment(gf.AdamW(p, **o)),
    },
}

# The for-loops are the oracle, not contenders: kept to the cases where they finish quickly.
SLOW_PROVIDERS = {"reference_forloop", "torch_forloop"}
SLOW_CASES = {"b-10M-in-1000", "d-gpt2-small", "a-bf16", "f-resnet50", "g-10000x1000"}
MANY_TENSORS = {"g-10000x1000"}  # the for-loops take seconds a step there even in a smoke run


def case_shapes(case: str, small: bool) -> tuple[list[tuple[int, ...]], torch.dtype]:
    shapes, dtype, _ = CASES[case]
    return shapes(small), dtype


def case_options(case: str) -> dict:
    return CASES[case][2]


def providers_of(optimizer: str, case: str) -> list[str]:
    if not case_options(case):
        return list(PROVIDERS[optimizer])
    if "state_bits" in case_options(case):
        if optimizer == "Align(AdamW)":
            return []
        has_bitsandbytes = optimizer == "AdamW" and importlib.util.find_spec("bitsandbytes") is not None
        return list(EIGHT_BIT_PROVIDERS[:3 if has_bitsandbytes else 2])
    # the ideal bytes below count an optimizer's states, which GradientAlignment's statistics pass exceeds
    return [] if optimizer == "Align(AdamW)" else list(OPTION_PROVIDERS)


def make_optimizer(optimizer: str, case: str, provider: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    options = provider_options(case, provider)
    if provider == "gradfused_working_copies":
        opt = PROVIDERS[optimizer]["gradfused"](params, **options)
        opt._fuse_precision = False
        return opt
    if provider == "gradfused_32bit":
        return PROVIDERS[optimizer]["gradfused"](params, **options)
    if provider == "bitsandbytes":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(params)
    return PROVIDERS[optimizer][provider](params, **options)


def provider_options(case: str, provider: str) -> dict:
    """The case's options as `provider` runs them: gradfused_32bit drops the 8-bit states."""
    options = case_options(case)
    return {k: v for k, v in options.items() if k != "state_bits"} if provider == "gradfused_32bit" else options


def combinations(optimizers=None, cases=None, providers=None, small=False) -> list[tuple[str, str, str]]:
    """(optimizer, case, provider) in a stable order; slow providers only on their cases unless small."""
    out = []
    for o in optimizers or PROVIDERS:
        for c in cases or CASES:
            for p in providers_of(o, c):
                if providers and p not in providers:
                    continue
                if p in SLOW_PROVIDERS and (c in SLOW_CASES and not small or c in MANY_TENSORS):
                    continue
                out.append((o, c, p))
    return out


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); one value is all three."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_params(shapes: list[tuple[int, ...]], dtype: torch.dtype, device="cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_()
        p.grad = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        params.append(p)
    return params


def yardstick(small: bool = False, device="cpu") -> Callable[[], None]:
    """The in-place add over 10M fp32 on the CPU, 100M on a GPU (1.2 GB a pass, beyond any L2 cache)."""
    n = (100_000_000 if torch.device(device).type == "cuda" else 10_000_000) // (SMALL_SHRINK if small else 1)
    a, b = torch.rand(n, device=device), torch.rand(n, device=device)
    step = lambda: a.add_(b, alpha=0.5)  # noqa: E731
    step.bytes = 12 * n
    return step


def copy_yardstick(small: bool = False, device="cuda") -> Callable[[], None]:
    """A device-to-device copy of 1 GiB of fp32, counted as bytes read plus written: a pure stream, the
    most a GPU's memory moves (the second yardstick on CUDA)."""
    n = 2**28 // (SMALL_SHRINK if small else 1)
    src, dst = torch.rand(n, device=device), torch.empty(n, device=device)
    step = lambda: dst.copy_(src)  # noqa: E731
    step.bytes = 8 * n
    return step


def yardsticks(small: bool, device: torch.device) -> dict[str, Callable[[], None]]:
    """The yardsticks a report measures on `device`: the in-place add, and on CUDA the 1 GiB copy too."""
    out = {"add": yardstick(small, device)}
    if device.type == "cuda":
        out["copy"] = copy_yardstick(small, device)
    return out


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def step_bytes(optimizer: str, shapes: list[tuple[int, ...]], dtype: torch.dtype, options: dict | None = None) -> float:
    """The bytes one step must move at the least: every tensor read once and every result written once.
    With 16-bit parameters, fp32 states (state_dtype, master weights) and a master weight add theirs; bf16
    states of fp32 parameters move half a state's bytes."""
    fp32 = BYTES_PER_ELEMENT[optimizer]
    narrow = dtype.itemsize / 4
    per_element = fp32 * narrow
    options = options or {}
    if options.get("state_bits") == 8:  # each state: a code read and written, and its absmax per 256
        return (12 * narrow + (fp32 - 12) / 8 * (2 + 8 / 256)) * sum(math.prod(s) for s in shapes)
    if dtype.itemsize == 2 and (options.get("state_dtype") == torch.float32 or options.get("master_weights")):
        states = (fp32 - 12) / 8  # param read and written, grad read: 12 bytes; each state read and written: 8
        per_element += states * 8 * (1 - narrow)
    if dtype.itemsize == 2 and options.get("master_weights"):
        per_element += 8
    if dtype == torch.float32 and options.get("state_dtype") == torch.bfloat16:  # each state: 2 bytes each way
        per_element -= (fp32 - 12) / 8 * 4
    return per_element * sum(math.prod(s) for s in shapes)


def state_bytes(opt) -> int:
    layers = [opt, opt.base] if isinstance(opt, gf.GradientAlignment) else [opt]
    return sum(v.numel() * v.element_size() for o in layers for st in o.state.values() for v in st.values()
               if isinstance(v, torch.Tensor))


@contextlib.contextmanager
def _stderr_silenced():
    """The profiler's C++ side prints two lines per session on fd 2; a benchmark table wants none."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def step_peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """The most memory one call of `step` holds at once beyond what was allocated before it: from the
    CUDA caching allocator's peak, or on the CPU from the allocation events of torch's profiler
    (every tensor allocation and free, in order; malloc's own caching does not blur it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure(optimizer: str, case: str, provider: str, *, rounds: int, small: bool = False, device="cpu") -> dict:
    """Median time of `rounds` steps, each followed by one yardstick run (alternating, so both see the
    same machine), with achieved GB/s, % of the yardstick, state MiB and the peak memory of one more step."""
    device = torch.device(device)
    shapes, dtype = case_shapes(case, small)
    opt = make_optimizer(optimizer, case, provider, make_params(shapes, dtype, device))
    opt.step()  # state is created outside the timed steps
    yards = yardsticks(small, device)
    for yard in yards.values():
        yard()
    steps, yard_times = [], {name: [] for name in yards}
    for _ in range(rounds):
        steps.append(timed(opt.step, device))
        for name, yard in yards.items():
            yard_times[name].append(timed(yard, device))
    step_q1, step_s, step_q3 = quartiles(steps)
    gbps = step_bytes(optimizer, shapes, dtype, provider_options(case, provider)) / step_s / 1e9
    out = dict(optimizer=optimizer, case=case, provider=provider, device=str(device), rounds=rounds,
               step_ms=1e3 * step_s, step_ms_iqr=[1e3 * step_q1, 1e3 * step_q3], gbps=gbps)
    for name, yard in yards.items():  # the add is "yardstick"; on CUDA the copy is "copy_yardstick" too
        key = "yardstick" if name == "add" else f"{name}_yardstick"
        yard_gbps = yard.bytes / statistics.median(yard_times[name]) / 1e9
        out.update({f"{key}_gbps": yard_gbps, f"pct_of_{key}": 100 * gbps / yard_gbps})
    return dict(out, state_mib=state_bytes(opt) / 2**20, step_peak_mib=step_peak_bytes(opt.step, device) / 2**20,
                params=sum(math.prod(s) for s in shapes), tensors=len(shapes), threads=torch.get_num_threads())
