"""GPU step benchmark (benchmarks/gpu_check.sh runs it): gradfused's rules beside torch's fused (or
foreach) optimizers on real parameter layouts (GPT-2 124M, ResNet-50, a 1B-class decoder, 10,000 x 1,000)
and on 100M in 100 tensors, timed with CUDA events, with two yardsticks measured in the same run,
interleaved with the steps: an in-place `a.add_(b, alpha=0.5)` over 100M fp32 (12 bytes per element; 1.2 GB
a pass, far beyond L2) and a 1 GiB device-to-device copy (bytes read plus written). bf16 providers and the
CUDA-graph replays run in the same rounds as the fp32 eager steps they are compared with.

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
from gradfused import benchmarking as B

# The parameter layouts (gradfused/benchmarking.py writes them from the architectures)
LAYOUTS = {
    "gpt2-124M": B.gpt2_shapes(),  # 148 tensors
    "resnet50": B.resnet50_shapes(),  # 161 tensors, 25.6M
    "decoder-0.94B": B.decoder_1b_shapes(),  # 197 tensors
    "10000x1000": [(1_000,)] * 10_000,
    "100M-in-100": [(1_000_000,)] * 100,
}

class WithLaunchSetting:
    """Steps `opt` with the environment variable `name` set to `value` for that step alone: the CUDA
    launcher reads its settings at each call (NOTE: [blocks per chunk], GRADFUSED_CUDA_BLOCKS_PER_CHUNK;
    NOTE: [8-bit occupancy variants], GRADFUSED_CUDA_8BIT_MIN_BLOCKS), so one run compares them."""

    def __init__(self, opt, name: str, value: int):
        self.opt, self.name, self.value = opt, name, str(value)

    def step(self):
        old = os.environ.get(self.name)
        os.environ[self.name] = self.value
        try:
            self.opt.step()
        finally:
            if old is None:
                del os.environ[self.name]
            else:
                os.environ[self.name] = old


def one_block_per_chunk(opt):
    return WithLaunchSetting(opt, "GRADFUSED_CUDA_BLOCKS_PER_CHUNK", 1)


def two_8bit_blocks_per_sm(opt):
    return WithLaunchSetting(opt, "GRADFUSED_CUDA_8BIT_MIN_BLOCKS", 2)


class CapturedStep:
    """`opt.step()` captured once in a CUDA graph; `step()` replays it (torch's capture recipe: the first
    step, which creates the state, runs eagerly on a side stream)."""

    def __init__(self, opt):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            opt.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            opt.step()

    def step(self):
        self.graph.replay()


BF16 = (torch.bfloat16, {})
BF16_MASTER = (torch.bfloat16, dict(master_weights=True))
EIGHT_BIT = (torch.float32, dict(state_bits=8))
BF16_EIGHT_BIT = (torch.bfloat16, dict(state_bits=8))


def _bitsandbytes():
    """bitsandbytes, for the 8-bit comparison: gpu_check.sh installs its wheel from .whl/ when carried."""
    import bitsandbytes

    return bitsandbytes
# name -> (factory(params, options), fp32 bytes per element[, (dtype, gradfused options)]); torch's fused
# kernels beside ours. A provider with a dtype of its own runs in the same rounds as the fp32 ones, so the
# ratio of a bf16 step to the fp32 step is measured side by side.
PROVIDERS = {
    "gradfused.SGD(momentum)": (lambda p, o: gf.SGD(p, lr=1e-2, momentum=0.9, **o), 20),
    "gradfused.SGD(plain)": (lambda p, o: gf.SGD(p, lr=1e-2, **o), 12),
    "gradfused.PersistentSGD": (lambda p, o: gf.PersistentSGD(p, decay=0.9, **o), 20),
    "gradfused.AdamW": (lambda p, o: gf.AdamW(p, **o), 28),
    "gradfused.AdamW[graph]": (lambda p, o: CapturedStep(gf.AdamW(p, **o)), 28),
    "gradfused.AdamW(bf16)": (lambda p, o: gf.AdamW(p, **o), 28, BF16),
    "gradfused.AdamW(bf16,master)": (lambda p, o: gf.AdamW(p, **o), 28, BF16_MASTER),
    "gradfused.AdamW[1 block/chunk]": (lambda p, o: one_block_per_chunk(gf.AdamW(p, **o)), 28),
    "gradfused.PersistentSGD[1 block/chunk]": (lambda p, o: one_block_per_chunk(gf.PersistentSGD(p, decay=0.9, **o)), 20),
    "gradfused.AdamW(amsgrad)": (lambda p, o: gf.AdamW(p, amsgrad=True, **o), 36),
    "gradfused.RAdam": (lambda p, o: gf.RAdam(p, **o), 28),
    "gradfused.AdEMA": (lambda p, o: gf.AdEMA(p, **o), 36),
    "gradfused.NAdam": (lambda p, o: gf.NAdam(p, **o), 28),
    "gradfused.RMSprop": (lambda p, o: gf.RMSprop(p, **o), 20),
    "gradfused.GradientAscent": (lambda p, o: gf.GradientAscent(p, **o), 28),
    "gradfused.Align(AdamW)": (lambda p, o: gf.GradientAlignment(gf.AdamW(p, **o)), 40),
    "gradfused.AdamW(8-bit)": (lambda p, o: gf.AdamW(p, **o), 28, EIGHT_BIT),
    "gradfused.AdamW(8-bit)[2 blocks/SM]": (lambda p, o: two_8bit_blocks_per_sm(gf.AdamW(p, **o)), 28, EIGHT_BIT),
    "gradfused.AdamW(bf16,8-bit)": (lambda p, o: gf.AdamW(p, **o), 28, BF16_EIGHT_BIT),
    "gradfused.AdamW(bf16,8-bit)[2 blocks/SM]": (lambda p, o: two_8bit_blocks_per_sm(gf.AdamW(p, **o)), 28,
                                                 BF16_EIGHT_BIT),
    "gradfused.AdEMA(8-bit)": (lambda p, o: gf.AdEMA(p, **o), 36, EIGHT_BIT),
    "gradfused.SGD(momentum,8-bit)": (lambda p, o: gf.SGD(p, lr=1e-2, momentum=0.9, **o), 20, EIGHT_BIT),
    "bitsandbytes.AdamW8bit": (lambda p, o: _bitsandbytes().optim.AdamW8bit(p), 28, EIGHT_BIT),
    "torch.AdamW(fused)": (lambda p, o: torch.optim.AdamW(p, fused=True), 28),
    "torch.AdamW(fused,capturable)[graph]": (lambda p, o: CapturedStep(torch.optim.AdamW(p, fused=True, capturable=True)), 28),
    "torch.AdamW(fused,bf16)": (lambda p, o: torch.optim.AdamW(p, fused=True), 28, BF16),
    "torch.RAdam(foreach)": (lambda p, o: torch.optim.RAdam(p, foreach=True), 28),
    "torch.NAdam(foreach)": (lambda p, o: torch.optim.NAdam(p, foreach=True), 28),
    "torch.SGD(fused,momentum)": (lambda p, o: torch.optim.SGD(p, lr=1e-2, momentum=0.9, fused=True), 20),
    "torch.SGD(fused,plain)": (lambda p, o: torch.optim.SGD(p, lr=1e-2, fused=True), 12),
}
ALL_RULES = [name for name in PROVIDERS if "[graph]" not in name and "bf16" not in name
             and not name.startswith(("torch.RAdam", "torch.NAdam"))]
# case -> (layout, dtype and options of the providers without their own, providers)
CASES = {
    "gpt2-124M": ("gpt2-124M", (torch.float32, {}), [
        "gradfused.AdamW", "torch.AdamW(fused)", "gradfused.SGD(momentum)", "torch.SGD(fused,momentum)",
        "gradfused.RAdam", "torch.RAdam(foreach)", "gradfused.NAdam", "torch.NAdam(foreach)", "gradfused.Align(AdamW)",
        "gradfused.AdamW(bf16)", "torch.AdamW(fused,bf16)", "gradfused.AdamW(bf16,master)"]),
    "resnet50": ("resnet50", (torch.float32, {}), [
        "gradfused.AdamW", "torch.AdamW(fused)", "gradfused.SGD(momentum)", "torch.SGD(fused,momentum)",
        "gradfused.Align(AdamW)", "gradfused.AdamW(bf16,master)"]),
    "decoder-0.94B": ("decoder-0.94B", (torch.float32, {}), [
        "gradfused.AdamW", "torch.AdamW(fused)", "gradfused.AdamW(bf16,master)"]),
    "10000x1000": ("10000x1000", (torch.float32, {}), [
        "gradfused.AdamW", "torch.AdamW(fused)", "gradfused.AdamW[graph]", "torch.AdamW(fused,capturable)[graph]",
        "gradfused.SGD(plain)", "torch.SGD(fused,plain)", "gradfused.SGD(momentum)", "torch.SGD(fused,momentum)"]),
    "100M-in-100": ("100M-in-100", (torch.float32, {}), ALL_RULES),
    "gpt2-124M-8bit": ("gpt2-124M", (torch.float32, {}), [
        "gradfused.AdamW(8-bit)", "gradfused.AdamW(8-bit)[2 blocks/SM]", "gradfused.AdamW", "torch.AdamW(fused)",
        "bitsandbytes.AdamW8bit", "gradfused.AdamW(bf16,8-bit)", "gradfused.AdamW(bf16,8-bit)[2 blocks/SM]",
        "gradfused.AdamW(bf16)", "gradfused.AdEMA(8-bit)", "gradfused.AdEMA",
        "gradfused.SGD(momentum,8-bit)", "gradfused.SGD(momentum)"]),
    "100M-in-100-bf16-master": ("100M-in-100", BF16_MASTER,
                                [name for name in ALL_RULES if name.startswith("gradfused.")]),
}
# (numerator, denominator): each ratio is taken within a round, so its spread over rounds shows the noise
RATIOS = [
    ("torch.AdamW(fused)", "gradfused.AdamW"), ("torch.SGD(fused,momentum)", "gradfused.SGD(momentum)"),
    ("torch.SGD(fused,plain)", "gradfused.SGD(plain)"), ("torch.SGD(fused,momentum)", "gradfused.PersistentSGD"),
    ("torch.RAdam(foreach)", "gradfused.RAdam"), ("torch.NAdam(foreach)", "gradfused.NAdam"),
    ("torch.AdamW(fused,bf16)", "gradfused.AdamW(bf16)"),
    ("torch.AdamW(fused,capturable)[graph]", "gradfused.AdamW[graph]"),
    ("gradfused.Align(AdamW)", "gradfused.AdamW"), ("gradfused.AdamW(bf16,master)", "gradfused.AdamW"),
    ("gradfused.AdamW[1 block/chunk]", "gradfused.AdamW"), ("gradfused.PersistentSGD[1 block/chunk]", "gradfused.PersistentSGD"),
    ("gradfused.AdamW", "gradfused.AdamW(8-bit)"), ("torch.AdamW(fused)", "gradfused.AdamW(8-bit)"),
    ("bitsandbytes.AdamW8bit", "gradfused.AdamW(8-bit)"), ("gradfused.AdamW", "gradfused.AdamW(bf16,8-bit)"),
    ("gradfused.AdamW(bf16)", "gradfused.AdamW(bf16,8-bit)"), ("gradfused.AdEMA", "gradfused.AdEMA(8-bit)"),
    ("gradfused.SGD(momentum)", "gradfused.SGD(momentum,8-bit)"),
    ("gradfused.AdamW(8-bit)", "gradfused.AdamW(8-bit)[2 blocks/SM]"),
    ("gradfused.AdamW(bf16,8-bit)", "gradfused.AdamW(bf16,8-bit)[2 blocks/SM]"),
]


def bytes_per_element(fp32_bytes: int, dtype: torch.dtype, options: dict) -> int:
    """The ideal bytes of one pass: fp32 as given; 16-bit parameters, gradients and states half of it; with
    master weights, the master read and written, the 16-bit parameter written, the 16-bit gradient read
    and each fp32 state read and written; with 8-bit states, each state's code read and written (its
    absmax, 8 bytes per 256 elements, left out)."""
    states = (fp32_bytes - 12) // 8  # fp32: param r/w 8 + grad 4 + 8 per state
    if options.get("state_bits") == 8:
        return 3 * dtype.itemsize + 2 * states
    if options.get("master_weights"):
        return 8 + 2 + 2 + 8 * states
    return fp32_bytes * dtype.itemsize // 4


def time_steps(fn, steps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / steps


def bench_case(case: str, rounds: int, steps: int) -> dict:
    layout, (case_dtype, case_options), providers = CASES[case]
    shapes = LAYOUTS[layout]
    numel = sum(torch.Size(s).numel() for s in shapes)
    opts, peaks, kinds = {}, {}, {}
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name in providers:
        dtype, options = PROVIDERS[name][2] if len(PROVIDERS[name]) > 2 else (case_dtype, case_options)
        params = [torch.randn(s, device="cuda", dtype=dtype, generator=gen).requires_grad_() for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, device="cuda", dtype=dtype, generator=gen) * 1e-3
        try:
            opt = PROVIDERS[name][0](params, options)
        except ImportError as e:  # bitsandbytes without its wheel: the case runs without it
            print(f"{name} left out: {e}", flush=True)
            continue
        opt.step()  # state creation outside the timed region
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        opt.step()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
        opts[name], kinds[name] = opt, (dtype, options)
    yards = B.yardsticks(False, torch.device("cuda"))  # the in-place add over 100M and the 1 GiB copy
    times = {name: [] for name in opts}
    yard_times = {name: [] for name in yards}
    order = list(opts)
    for _ in range(rounds):
        random.shuffle(order)
        for name, yard in yards.items():
            yard_times[name].append(time_steps(yard, steps))
        for name in order:
            times[name].append(time_steps(opts[name].step, steps))
    yard_gbps = {name: yards[name].bytes / statistics.median(ts) / 1e9 for name, ts in yard_times.items()}
    out = {"numel": numel, "tensors": len(shapes), "dtype": str(case_dtype),
           "options": {k: str(v) for k, v in case_options.items()},
           "yardstick_gbps": {name: round(v, 1) for name, v in yard_gbps.items()}, "providers": {}}
    for name, ts in times.items():
        per_element = bytes_per_element(PROVIDERS[name][1], *kinds[name])
        med = statistics.median(ts)
        gbps = per_element * numel / med / 1e9
        out["providers"][name] = {
            "median_ms": round(med * 1e3, 4), "min_ms": round(min(ts) * 1e3, 4), "max_ms": round(max(ts) * 1e3, 4),
            "bytes_per_element": per_element, "gbps": round(gbps, 1),
            **{f"pct_of_{yard}": round(100 * gbps / v, 1) for yard, v in yard_gbps.items()},
            "step_peak_extra_mib": round(peaks[name] / 2**20, 2),
        }
    out["ratios"] = {}
    for num, den in RATIOS:
        if num in times and den in times:
            r = sorted(a / b for a, b in zip(times[num], times[den]))
            out["ratios"][f"{num} / {den}"] = {"median": round(statistics.median(r), 3), "min": round(r[0], 3),
                                               "max": round(r[-1], 3)}
    del opts
    torch.cuda.empty_cache()
    return out


def format_table(result: dict) -> str:
    lines = [f"device: {result['device']}; torch {result['torch']}; gradfused {result['commit']}; {result['date']}"]
    for case, r in result["cases"].items():
        yards = r["yardstick_gbps"]
        lines.append(f"\n== {case}: {r['numel']:,} elements in {r['tensors']} tensors, {r['dtype']} {r['options']}; "
                     f"yardsticks (GB/s): " + ", ".join(f"{k} {v}" for k, v in yards.items()))
        lines.append(f"{'provider':40} {'median ms':>10} {'min-max ms':>17} {'B/elem':>6} {'GB/s':>7} "
                     + " ".join(f"{'% ' + k:>6}" for k in yards) + f" {'peak+MiB':>8}")
        for name, p in r["providers"].items():
            lines.append(f"{name:40} {p['median_ms']:10.4f} {p['min_ms']:8.4f}-{p['max_ms']:<8.4f} {p['bytes_per_element']:6d} "
                         f"{p['gbps']:7.1f} " + " ".join(f"{p['pct_of_' + k]:6.1f}" for k in yards)
                         + f" {p['step_peak_extra_mib']:8.2f}")
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
        result["cases"][case] = bench_case(case, args.rounds, args.steps)
        print(format_table({**result, "cases": {case: result["cases"][case]}}), flush=True)
    with open(f"{args.out}/gpu_bench.json", "w") as f:
        json.dump(result, f, indent=1)
    with open(f"{args.out}/gpu_bench.txt", "w") as f:
        f.write(format_table(result) + "\n")


if __name__ == "__main__":
    main()
