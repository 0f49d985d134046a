"""GPU step benchmark (benchmarks/gpu_check.sh runs it): every gradfused rule beside torch's fused AdamW
and SGD, timed with CUDA events, with an in-place `a.add_(b, alpha=0.5)` yardstick over 100M fp32
(12 bytes per element; 1.2 GB a pass, far beyond L2) measured in the same run, interleaved with the steps.

Each round times every provider once (`--steps` steps between two events), in a fresh order; the
speed ratios are taken within a round, so the spread over rounds shows the noise. Writes JSON and a text
table (to --out)."""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import time

import torch

import gradfused as gf

CASES = {  # name -> (shapes, dtype, gradfused options)
    "100M-in-100": ([(1_000_000,)] * 100, torch.float32, {}),
    "10M-in-10000": ([(1_000,)] * 10_000, torch.float32, {}),
    "100M-in-100-bf16-master": ([(1_000_000,)] * 100, torch.bfloat16, dict(master_weights=True)),
}

class BlocksPerChunk:
    """Steps `opt` with GRADFUSED_CUDA_BLOCKS_PER_CHUNK=n (NOTE: [blocks per chunk] in the launcher)."""

    def __init__(self, opt, n: int):
        self.opt, self.n = opt, str(n)

    def step(self):
        old = os.environ.get("GRADFUSED_CUDA_BLOCKS_PER_CHUNK")
        os.environ["GRADFUSED_CUDA_BLOCKS_PER_CHUNK"] = self.n
        try:
            self.opt.step()
        finally:
            if old is None:
                del os.environ["GRADFUSED_CUDA_BLOCKS_PER_CHUNK"]
            else:
                os.environ["GRADFUSED_CUDA_BLOCKS_PER_CHUNK"] = old


# name -> (factory(params, options), fp32 bytes per element) ; torch's fused kernels beside ours
PROVIDERS = {
    "gradfused.SGD(momentum)": (lambda p, o: gf.SGD(p, lr=1e-2, momentum=0.9, **o), 20),
    "gradfused.SGD(plain)": (lambda p, o: gf.SGD(p, lr=1e-2, **o), 12),
    "gradfused.PersistentSGD": (lambda p, o: gf.PersistentSGD(p, decay=0.9, **o), 20),
    "gradfused.AdamW": (lambda p, o: gf.AdamW(p, **o), 28),
    "gradfused.AdamW[1 block/chunk]": (lambda p, o: BlocksPerChunk(gf.AdamW(p, **o), 1), 28),
    "gradfused.PersistentSGD[1 block/chunk]": (lambda p, o: BlocksPerChunk(gf.PersistentSGD(p, decay=0.9, **o), 1), 20),
    "gradfused.AdamW(amsgrad)": (lambda p, o: gf.AdamW(p, amsgrad=True, **o), 36),
    "gradfused.RAdam": (lambda p, o: gf.RAdam(p, **o), 28),
    "gradfused.AdEMA": (lambda p, o: gf.AdEMA(p, **o), 36),
    "gradfused.NAdam": (lambda p, o: gf.NAdam(p, **o), 28),
    "gradfused.RMSprop": (lambda p, o: gf.RMSprop(p, **o), 20),
    "gradfused.GradientAscent": (lambda p, o: gf.GradientAscent(p, **o), 28),
    "gradfused.Align(AdamW)": (lambda p, o: gf.GradientAlignment(gf.AdamW(p, **o)), 40),
    "torch.AdamW(fused)": (lambda p, o: torch.optim.AdamW(p, fused=True), 28),
    "torch.SGD(fused,momentum)": (lambda p, o: torch.optim.SGD(p, lr=1e-2, momentum=0.9, fused=True), 20),
    "torch.SGD(fused,plain)": (lambda p, o: torch.optim.SGD(p, lr=1e-2, fused=True), 12),
}



# bytes per element with bf16 parameters and gradients, fp32 master weights and fp32 states (the ideal
# of one pass: master r/w, bf16 param write, bf16 grad read, each fp32 state r/w)
def bf16_master_bytes(fp32_bytes: int) -> int:
    states = (fp32_bytes - 12) // 8  # fp32: param r/w 8 + grad 4 + 8 per state
    return 8 + 2 + 2 + 8 * states


def yardstick(n: int):
    a = torch.randn(n, device="cuda")
    b = torch.randn(n, device="cuda")
    return (lambda: a.add_(b, alpha=0.5)), 12 * n


def time_steps(fn, steps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / steps


def bench_case(case: str, providers: list[str], rounds: int, steps: int) -> dict:
    shapes, dtype, options = CASES[case]
    numel = sum(torch.Size(s).numel() for s in shapes)
    opts, peaks = {}, {}
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name in providers:
        if name.startswith("torch") and options:  # torch has no fused master weights: not comparable
            continue
        params = [torch.randn(s, device="cuda", dtype=dtype, generator=gen).requires_grad_() for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, device="cuda", dtype=dtype, generator=gen) * 1e-3
        opt = PROVIDERS[name][0](params, options)
        opt.step()  # state creation outside the timed region
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        opt.step()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
        opts[name] = opt
    yard, yard_bytes = yardstick(100_000_000)
    times = {name: [] for name in opts}
    yard_times = []
    order = list(opts)
    for _ in range(rounds):
        random.shuffle(order)
        yard_times.append(time_steps(yard, steps))
        for name in order:
            times[name].append(time_steps(opts[name].step, steps))
        yard_times.append(time_steps(yard, steps))
    yard_gbps = yard_bytes / statistics.median(yard_times) / 1e9
    out = {"numel": numel, "tensors": len(shapes), "dtype": str(dtype), "options": {k: str(v) for k, v in options.items()},
           "yardstick_gbps": round(yard_gbps, 1), "providers": {}}
    for name, ts in times.items():
        fp32_bytes = PROVIDERS[name][1]
        per_element = bf16_master_bytes(fp32_bytes) if options.get("master_weights") else fp32_bytes
        med = statistics.median(ts)
        gbps = per_element * numel / med / 1e9
        out["providers"][name] = {
            "median_ms": round(med * 1e3, 4), "min_ms": round(min(ts) * 1e3, 4), "max_ms": round(max(ts) * 1e3, 4),
            "bytes_per_element": per_element, "gbps": round(gbps, 1), "pct_of_yardstick": round(100 * gbps / yard_gbps, 1),
            "step_peak_extra_mib": round(peaks[name] / 2**20, 2),
        }
    # ratios within each round: the spread shows the noise
    def ratios(num: str, den: str) -> dict | None:
        if num not in times or den not in times:
            return None
        r = sorted(a / b for a, b in zip(times[num], times[den]))
        return {"median": round(statistics.median(r), 3), "min": round(r[0], 3), "max": round(r[-1], 3)}

    out["ratios"] = {k: v for k, v in {
        "torch.AdamW(fused) / gradfused.AdamW": ratios("torch.AdamW(fused)", "gradfused.AdamW"),
        "torch.SGD(fused,momentum) / gradfused.SGD(momentum)": ratios("torch.SGD(fused,momentum)", "gradfused.SGD(momentum)"),
        "torch.SGD(fused,plain) / gradfused.SGD(plain)": ratios("torch.SGD(fused,plain)", "gradfused.SGD(plain)"),
        "torch.SGD(fused,momentum) / gradfused.PersistentSGD": ratios("torch.SGD(fused,momentum)", "gradfused.PersistentSGD"),
        "gradfused.Align(AdamW) / gradfused.AdamW": ratios("gradfused.Align(AdamW)", "gradfused.AdamW"),
        "gradfused.AdamW[1 block/chunk] / gradfused.AdamW": ratios("gradfused.AdamW[1 block/chunk]", "gradfused.AdamW"),
        "gradfused.PersistentSGD[1 block/chunk] / gradfused.PersistentSGD":
            ratios("gradfused.PersistentSGD[1 block/chunk]", "gradfused.PersistentSGD"),
    }.items() if v is not None}
    del opts
    torch.cuda.empty_cache()
    return out


def format_table(result: dict) -> str:
    lines = [f"device: {result['device']}; torch {result['torch']}; gradfused {result['commit']}; {result['date']}"]
    for case, r in result["cases"].items():
        lines.append(f"\n== {case}: {r['numel']:,} elements in {r['tensors']} tensors, {r['dtype']} {r['options']}; "
                     f"yardstick {r['yardstick_gbps']} GB/s")
        lines.append(f"{'provider':44} {'median ms':>10} {'min-max ms':>17} {'B/elem':>6} {'GB/s':>7} {'% yard':>6} {'peak+MiB':>8}")
        for name, p in r["providers"].items():
            lines.append(f"{name:44} {p['median_ms']:10.4f} {p['min_ms']:8.4f}-{p['max_ms']:<8.4f} {p['bytes_per_element']:6d} "
                         f"{p['gbps']:7.1f} {p['pct_of_yardstick']:6.1f} {p['step_peak_extra_mib']:8.2f}")
        for k, v in r["ratios"].items():
            lines.append(f"  {k}: {v['median']}x (min {v['min']}, max {v['max']} over rounds)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    args = ap.parse_args()
    # GRADFUSED_COMMIT: the device tool's copy of the tree may carry stale git metadata
    commit = os.environ.get("GRADFUSED_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "commit": commit or "unknown",
              "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "steps_per_timing": args.steps, "cases": {}}
    for case in args.cases:
        result["cases"][case] = bench_case(case, list(PROVIDERS), args.rounds, args.steps)
        print(format_table({**result, "cases": {case: result["cases"][case]}}), flush=True)
    with open(f"{args.out}/gpu_bench.json", "w") as f:
        json.dump(result, f, indent=1)
    with open(f"{args.out}/gpu_bench.txt", "w") as f:
        f.write(format_table(result) + "\n")


if __name__ == "__main__":
    main()
