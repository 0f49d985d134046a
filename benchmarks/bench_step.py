"""One optimizer step, per optimizer x case x provider, with achieved GB/s against the in-place yardstick
measured in the same test (DESIGN.md, performance model). Group = optimizer/case, so
--benchmark-compare reads per case."""
from __future__ import annotations

import os
import time

import pytest
import torch

import gradfused as gf

SMALL = os.environ.get("GRADFUSED_BENCH_SMALL") == "1"
SHRINK = 100 if SMALL else 1
ROUNDS = int(os.environ.get("GRADFUSED_BENCH_ROUNDS", 3 if SMALL else 15))  # more rounds on a noisy machine

# name -> (total elements, tensor count, dtype)
CASES = {
    "a-10M-in-100": (10_000_000 // SHRINK, 100, torch.float32),
    "b-10M-in-1000": (10_000_000 // SHRINK, 1000, torch.float32),
    "c-1M-in-200": (1_000_000 // SHRINK, 200, torch.float32),
    "a-bf16": (10_000_000 // SHRINK, 100, torch.bfloat16),
}

# fp32 bytes moved per element per step (DESIGN.md); 16-bit tensors move half as many.
BYTES_PER_ELEMENT = {"PersistentSGD": 20, "AdamW": 28, "RAdam": 28, "AdEMA": 36, "Align(AdamW)": 40}

# optimizer -> provider -> factory(params); None where that provider has no such optimizer
PROVIDERS = {
    "PersistentSGD": {
        "reference_forloop": lambda p: gf.PersistentSGD(p, decay=0.9, fused=False),
        "torch_forloop": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, foreach=False),
        "torch_foreach": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, foreach=True),
        "torch_fused": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, fused=True),
        "gradfused": lambda p: gf.PersistentSGD(p, decay=0.9),
    },
    "AdamW": {
        "reference_forloop": lambda p: gf.AdamW(p, fused=False),
        "torch_forloop": lambda p: torch.optim.AdamW(p, foreach=False),
        "torch_foreach": lambda p: torch.optim.AdamW(p, foreach=True),
        "torch_fused": lambda p: torch.optim.AdamW(p, fused=True),
        "gradfused": lambda p: gf.AdamW(p),
    },
    "RAdam": {
        "reference_forloop": lambda p: gf.RAdam(p, fused=False),
        "torch_forloop": lambda p: torch.optim.RAdam(p, foreach=False),
        "torch_foreach": lambda p: torch.optim.RAdam(p, foreach=True),
        "gradfused": lambda p: gf.RAdam(p),
    },
    "AdEMA": {
        "reference_forloop": lambda p: gf.AdEMA(p, fused=False),
        "gradfused": lambda p: gf.AdEMA(p),
    },
    "Align(AdamW)": {
        "reference_forloop": lambda p: gf.GradientAlignment(gf.AdamW(p, fused=False), fused=False),
        "torch_foreach": lambda p: gf.GradientAlignment(torch.optim.AdamW(p, foreach=True)),
        "gradfused": lambda p: gf.GradientAlignment(gf.AdamW(p)),
    },
}

# The reference for-loops are the oracle, not a contender: keep them to the small cases.
SLOW = {"reference_forloop", "torch_forloop"}


def yardstick_gbps(repeats: int = 5) -> float:
    """In-place a.add_(b, alpha=0.5) over 10M fp32: 12 bytes per element, the read-modify-write pattern
    of an optimizer step. The median of `repeats`."""
    n = 10_000_000 // SHRINK
    a, b = torch.rand(n), torch.rand(n)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        a.add_(b, alpha=0.5)
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return 12 * n / times[len(times) // 2] / 1e9


def make_params(total: int, count: int, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    size = total // count
    params = []
    for _ in range(count):
        p = torch.randn(size, generator=gen).to(dtype).requires_grad_()
        p.grad = torch.randn(size, generator=gen).to(dtype)
        params.append(p)
    return params


def state_bytes(opt) -> int:
    layers = [opt, opt.base] if isinstance(opt, gf.GradientAlignment) else [opt]
    return sum(v.numel() * v.element_size() for o in layers for st in o.state.values() for v in st.values()
               if isinstance(v, torch.Tensor))


ALL = [(o, c, p) for o in PROVIDERS for c in CASES for p in PROVIDERS[o]
       if not (p in SLOW and c in ("b-10M-in-1000", "a-bf16") and not SMALL)]


@pytest.mark.parametrize("optimizer, case, provider", ALL, ids=["/".join(x) for x in ALL])
def bench_step(benchmark, optimizer, case, provider):
    total, count, dtype = CASES[case]
    params = make_params(total, count, dtype)
    opt = PROVIDERS[optimizer][provider](params)
    opt.step()  # creates the state outside the timed region
    benchmark.group = f"{optimizer}/{case}"
    yard_before = yardstick_gbps()
    benchmark.pedantic(opt.step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    yard = (yard_before + yardstick_gbps()) / 2  # around the timed steps, in the same run
    bytes_moved = BYTES_PER_ELEMENT[optimizer] * (total // count) * count * dtype.itemsize / 4
    gbps = bytes_moved / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(
        gbps=round(gbps, 2), yardstick_gbps=round(yard, 2), pct_of_yardstick=round(100 * gbps / yard, 1),
        state_mib=round(state_bytes(opt) / 2**20, 1), threads=torch.get_num_threads(),
        simd=torch.ops.gradfused.cpu_isa(),
    )
