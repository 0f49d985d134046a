"""End-to-end: what the optimizer is worth in a whole training step. A GPT-2-small-shaped model (defined
here, no download: 12 layers, width 768, 12 heads, 50,257-token vocabulary with a tied output embedding,
148 parameter tensors) trains on random tokens in bf16 autocast, batch 8 x 1024, with gradfused's AdamW
and with torch's fused AdamW, in alternating rounds. Reports, per optimizer, the median time of a whole
step (forward, backward, step, zero_grad) and of the optimizer step inside it, both from CUDA events.

    python benchmarks/train_bench.py --out DIR           # on a GPU (benchmarks/gpu_check.sh runs it)
    python benchmarks/train_bench.py --small --device cpu  # a tiny model, to check the script runs
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

import gradfused as gf


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers=12, width=768, heads=12, vocab=50257, context=1024):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()  # the tied output embedding


OPTIMIZERS = {
    "gradfused.AdamW": lambda params: gf.AdamW(params, lr=3e-4, weight_decay=0.1),
    "torch.AdamW(fused)": lambda params: torch.optim.AdamW(params, lr=3e-4, weight_decay=0.1, fused=True),
}


class Timer:
    """Elapsed seconds between two marks: CUDA events on a GPU, the wall clock (after a sync) elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return end - start


def run(config: dict, batch: int, steps: int, rounds: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    template = GPT(**config)
    runs = {}
    for name, make in OPTIMIZERS.items():
        model = GPT(**config).to(device)
        model.load_state_dict(template.state_dict())
        runs[name] = (model, make(model.parameters()))
    timer = Timer(device)
    idx = torch.randint(0, config["vocab"], (batch, config["context"] + 1), device=device)
    x, y = idx[:, :-1], idx[:, 1:]
    times = {name: ([], []) for name in runs}

    def train_step(model, opt):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
        loss.backward()
        start = timer.mark()
        opt.step()
        end = timer.mark()
        opt.zero_grad(set_to_none=True)
        return start, end, loss

    for name, (model, opt) in runs.items():  # warm-up: state, autotuning, the step plan
        for _ in range(3):
            train_step(model, opt)
    for r in range(rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            model, opt = runs[name]
            for _ in range(steps):
                begin = timer.mark()
                opt_start, opt_end, _ = train_step(model, opt)
                end = timer.mark()
                times[name][0].append(timer.seconds(begin, end))
                times[name][1].append(timer.seconds(opt_start, opt_end))
    out = {}
    for name, (step_s, opt_s) in times.items():
        step_ms, opt_ms = 1e3 * statistics.median(step_s), 1e3 * statistics.median(opt_s)
        out[name] = {"step_ms": round(step_ms, 3), "optimizer_ms": round(opt_ms, 4),
                     "optimizer_share_pct": round(100 * opt_ms / step_ms, 2),
                     "step_ms_min_max": [round(1e3 * min(step_s), 3), round(1e3 * max(step_s), 3)]}
    ours, theirs = out["gradfused.AdamW"], out["torch.AdamW(fused)"]
    out["speedup"] = {"whole step": round(theirs["step_ms"] / ours["step_ms"], 3),
                      "optimizer step": round(theirs["optimizer_ms"] / ours["optimizer_ms"], 3)}
    return out


def format_table(result: dict) -> str:
    lines = [f"GPT-2-small-shaped training step, bf16 autocast, batch {result['batch']} x {result['config']['context']}; "
             f"{result['device']}; torch {result['torch']}; {result['date']}",
             f"{'optimizer':22} {'step ms':>9} {'min-max ms':>17} {'optimizer ms':>12} {'share':>7}"]
    for name in OPTIMIZERS:
        r = result["results"][name]
        lines.append(f"{name:22} {r['step_ms']:9.3f} {r['step_ms_min_max'][0]:8.3f}-{r['step_ms_min_max'][1]:<8.3f} "
                     f"{r['optimizer_ms']:12.4f} {r['optimizer_share_pct']:6.2f}%")
    s = result["results"]["speedup"]
    lines.append(f"gradfused / torch fused: {s['whole step']}x the whole step, {s['optimizer step']}x the optimizer step")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a 2-layer, width-64 model over 64 tokens, batch 2")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per optimizer per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", help="folder for train_bench.json and train_bench.txt")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    config = (dict(layers=2, width=64, heads=4, vocab=512, context=64) if args.small
              else dict(layers=12, width=768, heads=12, vocab=50257, context=1024))
    batch = 2 if args.small else 8
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "config": config, "batch": batch,
              "steps": args.steps, "rounds": args.rounds,
              "results": run(config, batch, args.steps, args.rounds, device)}
    print(format_table(result), flush=True)
    if args.out:
        with open(f"{args.out}/train_bench.json", "w") as f:
            json.dump(result, f, indent=1)
        with open(f"{args.out}/train_bench.txt", "w") as f:
            f.write(format_table(result) + "\n")
    return result


if __name__ == "__main__":
    main()
