"""One optimizer step, per optimizer x case x provider x device (the CPU, and CUDA where a GPU is present),
with achieved GB/s against the yardsticks measured around it on the same device (gradfused/benchmarking.py
holds the definitions `gradfused bench` shares): the in-place add, and on CUDA a 1 GiB device-to-device
copy as well. On CUDA each timed step ends with a synchronize. Group = optimizer/case/device, so
--benchmark-compare reads per case."""
from __future__ import annotations

import os
import statistics

import pytest
import torch

from gradfused import benchmarking as B
from gradfused import ops as gf_ops

SMALL = os.environ.get("GRADFUSED_BENCH_SMALL") == "1"
ROUNDS = int(os.environ.get("GRADFUSED_BENCH_ROUNDS", 3 if SMALL else 15))  # more rounds on a noisy machine
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
ALL = [(*combination, device) for device in DEVICES for combination in B.combinations(small=SMALL)]


def _yardstick_gbps(yard, device) -> float:
    return yard.bytes / statistics.median(B.timed(yard, device) for _ in range(5)) / 1e9


@pytest.mark.parametrize("optimizer, case, provider, device", ALL, ids=["/".join(x) for x in ALL])
def bench_step(benchmark, optimizer, case, provider, device):
    device = torch.device(device)
    shapes, dtype = B.case_shapes(case, SMALL)
    opt = B.make_optimizer(optimizer, case, provider, B.make_params(shapes, dtype, device))
    opt.step()  # creates the state outside the timed region
    step = opt.step if device.type == "cpu" else lambda: (opt.step(), torch.cuda.synchronize(device))
    benchmark.group = f"{optimizer}/{case}/{device.type}"
    yards = B.yardsticks(SMALL, device)
    before = {name: _yardstick_gbps(yard, device) for name, yard in yards.items()}
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    gbps = B.step_bytes(optimizer, shapes, dtype, B.provider_options(case, provider)) / benchmark.stats.stats.median / 1e9
    for name, yard in yards.items():  # around the timed steps, same run
        yard_gbps = (before[name] + _yardstick_gbps(yard, device)) / 2
        key = "yardstick" if name == "add" else f"{name}_yardstick"
        benchmark.extra_info.update({f"{key}_gbps": round(yard_gbps, 2), f"pct_of_{key}": round(100 * gbps / yard_gbps, 1)})
    benchmark.extra_info.update(
        gbps=round(gbps, 2), state_mib=round(B.state_bytes(opt) / 2**20, 1),
        step_peak_mib=round(B.step_peak_bytes(opt.step, device) / 2**20, 3), threads=torch.get_num_threads(),
        simd=gf_ops.cpu_isa(), device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    )
