"""`gradfused bench`: the speed benchmarks as a readable table for people (the pytest-benchmark suite in
benchmarks/ is the CI-facing twin; both take their definitions from gradfused/benchmarking.py)."""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from . import benchmarking as B
from .environment import describe
from .errors import CommandError


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time one optimizer step against torch.optim and the reference",
                       description="Times one optimizer step per optimizer, case and provider, alternating each "
                                   "step with the in-place yardstick a.add_(b, alpha=0.5), and prints ms per "
                                   "step, GB/s, % of the yardstick and gradfused's speedup over each baseline.")
    p.add_argument("--optimizers", nargs="+", choices=list(B.PROVIDERS), help="default: all")
    p.add_argument("--cases", nargs="+", choices=list(B.CASES), help="default: all")
    p.add_argument("--providers", nargs="+", help="default: all that exist for each optimizer")
    p.add_argument("--rounds", type=int, default=15, help="timed steps per combination (median is reported)")
    p.add_argument("--small", action="store_true", help="every case 100x smaller (a smoke run)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--json", metavar="PATH", help="write every measurement to this JSON file")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of GB/s")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        raise CommandError(f"--rounds must be >= 1, got {args.rounds}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError("--device cuda: no CUDA device is available")
    known = {p for providers in B.PROVIDERS.values() for p in providers} | set(B.OPTION_PROVIDERS) | set(B.EIGHT_BIT_PROVIDERS)
    unknown = set(args.providers or ()) - known
    if unknown:
        raise CommandError(f"unknown provider {', '.join(sorted(unknown))} (expected some of: {', '.join(sorted(known))})")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):  # before minutes of measuring
        if path:
            check_writable(flag, path)
    combos = B.combinations(args.optimizers, args.cases, args.providers, args.small)
    meta = dict(describe(args.device), small=args.small, rounds=args.rounds)
    rows = []
    for k, (optimizer, case, provider) in enumerate(combos, 1):
        print(f"[{k}/{len(combos)}] {optimizer} / {case} / {provider} ...", file=sys.stderr, flush=True)
        rows.append(B.measure(optimizer, case, provider, rounds=args.rounds, small=args.small, device=args.device))
        if args.json:  # after every measurement: a run cut short keeps what it measured
            write_json(args.json, dict(meta=meta, complete=k == len(combos), rows=rows))
    print(format_tables(rows))
    if args.plot:
        plot(rows, args.plot)
    return 0


def check_writable(flag: str, path: str) -> None:
    """A clear error now, rather than a traceback after the run, for an output path that cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CommandError(f"{flag} {path!r} is a folder; expected a file path")
    if not os.path.isdir(folder):
        raise CommandError(f"{flag} {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise CommandError(f"{flag} {path!r} is not writable")


def write_json(path: str, data: dict) -> None:
    """Written whole, then renamed: a reader (or a killed run) never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def format_tables(rows: list[dict]) -> str:
    out = []
    for optimizer in dict.fromkeys(r["optimizer"] for r in rows):
        for case in dict.fromkeys(r["case"] for r in rows if r["optimizer"] == optimizer):
            group = [r for r in rows if r["optimizer"] == optimizer and r["case"] == case]
            ours = next((r for r in group if r["provider"] == "gradfused"), None)
            lines = [("provider", "ms/step [IQR]", "µs/tensor", "GB/s", "% yardstick", "gradfused speedup [range]",
                      "state MiB", "step peak MiB")]
            for r in sorted(group, key=lambda r: r["step_ms"]):
                speedup = ""
                if ours and r is not ours:  # the range pairs the quartiles: the slowest against the fastest
                    (lo, hi), (our_lo, our_hi) = r["step_ms_iqr"], ours["step_ms_iqr"]
                    speedup = f"{r['step_ms'] / ours['step_ms']:.2f}x [{lo / our_hi:.2f}-{hi / our_lo:.2f}]"
                iqr = r["step_ms_iqr"]
                lines.append((r["provider"], f"{r['step_ms']:.3f} [{iqr[0]:.3f}-{iqr[1]:.3f}]",
                              f"{1e3 * r['step_ms'] / r['tensors']:.2f}", f"{r['gbps']:.1f}",
                              f"{r['pct_of_yardstick']:.0f} % of {r['yardstick_gbps']:.0f}", speedup,
                              f"{r['state_mib']:.2f}", f"{r['step_peak_mib']:.2f}"))
            widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
            out.append(f"{optimizer}, {case}: {group[0]['params']:,} parameters in {group[0]['tensors']} tensors")
            out += ["  " + "  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
            out.append("")
    return "\n".join(out)


def max_cases(rows: list[dict]) -> int:
    return max(len({r["case"] for r in rows if r["optimizer"] == o}) for o in {r["optimizer"] for r in rows})


def plot(rows: list[dict], path: str) -> None:
    """One panel per optimizer: achieved GB/s per case and provider, with the median yardstick. The axis
    is logarithmic, so the small-tensor cases, where the differences are largest, stay readable; each case
    is labelled with the size it ran at (--small runs are 100x smaller than the names say)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    colors = dict(zip(providers, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    yard = float(np.median([r["yardstick_gbps"] for r in rows]))
    fig, axes = plt.subplots(len(optimizers), 1, figsize=(max(10.0, 1.5 * max_cases(rows)), 2.6 * len(optimizers)),
                             squeeze=False)
    width = 0.8 / len(providers)
    for ax, optimizer in zip(axes[:, 0], optimizers):
        cases = list(dict.fromkeys(r["case"] for r in rows if r["optimizer"] == optimizer))
        for k, provider in enumerate(providers):
            values = [next((r["gbps"] for r in rows if (r["optimizer"], r["case"], r["provider"]) ==
                            (optimizer, c, provider)), np.nan) for c in cases]
            ax.bar(np.arange(len(cases)) + k * width, values, width, label=provider, color=colors[provider])
        ax.axhline(yard, color="k", ls="--", lw=1, label=f"yardstick (median {yard:.0f} GB/s)")
        ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
        sizes = {r["case"]: (r["params"], r["tensors"]) for r in rows}
        ax.set_xticklabels([f"({c.split('-')[0]}{' ' + c[c.index('bf16'):] if 'bf16' in c else ''})\n"
                            f"{sizes[c][0]:,} in {sizes[c][1]}" for c in cases], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("GB/s (log)")
        ax.set_title(optimizer, fontsize=9, loc="left")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.97), ncol=len(labels), fontsize=7)
    fig.suptitle(f"one optimizer step, achieved GB/s ({rows[0]['device']}, {rows[0]['threads']} threads)",
                 y=0.995, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)
