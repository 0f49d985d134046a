"""Peak memory of one training step, `backward(); step()` against `gradfused.step_in_backward`.

    python benchmarks/step_in_backward_memory.py [--layers 4] [--width 4096] [--optimizer adamw] [--json]

Each mode runs in a fresh process, after a first step that creates the optimizer state, and reports the
rise of the peak resident set over the resident set before the measured step (the peak is reset there,
through /proc/self/clear_refs, so nothing earlier in the process counts). The
child runs with a fixed glibc mmap threshold (MALLOC_MMAP_THRESHOLD_), so every tensor of 64 KiB or more is
mapped and unmapped on its own and RSS follows the live tensors (glibc's adaptive threshold would otherwise
keep freed blocks of up to 32 MiB in the heap).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

OPTIMIZERS = ("persistent_sgd", "adamw", "align_adamw")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (Linux >= 4.0)


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    return int(kib) * 1024


def measure_in_this_process(mode: str, layers: int, width: int, optimizer: str) -> dict:
    import torch

    import gradfused as gf

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    make = {"persistent_sgd": lambda p: gf.PersistentSGD(p, lr=1e-3, decay=0.9),
            "adamw": lambda p: gf.AdamW(p, lr=1e-3),
            "align_adamw": lambda p: gf.GradientAlignment(gf.AdamW(p, lr=1e-3))}[optimizer]
    opt = make(model.parameters())
    x = torch.randn(8, width)
    handle = gf.step_in_backward(model, opt) if mode == "step_in_backward" else None

    def train_step():
        loss = model(x).square().mean()
        loss.backward()
        if handle is None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    train_step()  # creates the state
    before = _rss_bytes()
    _reset_peak_rss()
    train_step()
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return dict(mode=mode, optimizer=optimizer, layers=layers, width=width, grad_bytes=grad_bytes,
                peak_rise_bytes=max(_peak_rss_bytes() - before, 0))


def measure(mode: str, layers: int, width: int, optimizer: str) -> dict:
    """`measure_in_this_process` in a fresh interpreter."""
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--layers", str(layers), "--width", str(width),
                          "--optimizer", optimizer], check=True, capture_output=True, text=True,
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=("step", "step_in_backward"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_in_this_process(args.child, args.layers, args.width, args.optimizer)))
        return
    rows = [measure(mode, args.layers, args.width, args.optimizer) for mode in ("step", "step_in_backward")]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    mib = 2.0 ** 20
    print(f"{args.layers} x Linear({args.width}, {args.width}) fp32, {args.optimizer}, batch 8: "
          f"gradients {rows[0]['grad_bytes'] / mib:.0f} MiB")
    for r in rows:
        print(f"  {r['mode']:<17} peak rise over the step: {r['peak_rise_bytes'] / mib:7.1f} MiB")
    print(f"  saved: {(rows[0]['peak_rise_bytes'] - rows[1]['peak_rise_bytes']) / mib:.1f} MiB")


if __name__ == "__main__":
    main()
