"""One optimizer step, per optimizer x case x provider, with achieved GB/s against the in-place yardstick
measured around it (gradfused/benchmarking.py holds the definitions `gradfused bench` shares).
Group = optimizer/case, so --benchmark-compare reads per case."""
from __future__ import annotations

import os
import statistics

import pytest
import torch

from gradfused import benchmarking as B
from gradfused import ops as gf_ops

SMALL = os.environ.get("GRADFUSED_BENCH_SMALL") == "1"
ROUNDS = int(os.environ.get("GRADFUSED_BENCH_ROUNDS", 3 if SMALL else 15))  # more rounds on a noisy machine
ALL = B.combinations(small=SMALL)


@pytest.mark.parametrize("optimizer, case, provider", ALL, ids=["/".join(x) for x in ALL])
def bench_step(benchmark, optimizer, case, provider):
    shapes, dtype = B.case_shapes(case, SMALL)
    opt = B.make_optimizer(optimizer, case, provider, B.make_params(shapes, dtype))
    opt.step()  # creates the state outside the timed region
    benchmark.group = f"{optimizer}/{case}"
    yard = B.yardstick(SMALL)
    yard_before = statistics.median(B.timed(yard, torch.device("cpu")) for _ in range(5))
    benchmark.pedantic(opt.step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    yard_after = statistics.median(B.timed(yard, torch.device("cpu")) for _ in range(5))
    yard_gbps = 2 * yard.bytes / (yard_before + yard_after) / 1e9  # around the timed steps, same run
    gbps = B.step_bytes(optimizer, shapes, dtype, B.case_options(case)) / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(
        gbps=round(gbps, 2), yardstick_gbps=round(yard_gbps, 2), pct_of_yardstick=round(100 * gbps / yard_gbps, 1),
        state_mib=round(B.state_bytes(opt) / 2**20, 1),
        step_peak_mib=round(B.step_peak_bytes(opt.step, torch.device("cpu")) / 2**20, 3), threads=torch.get_num_threads(),
        simd=gf_ops.cpu_isa(),
    )
