"""8-bit AdamW, and AdamW with bf16 states (rounded to nearest and at random), against 32-bit on a small
causal transformer, with bitsandbytes' AdamW8bit beside it when it imports (docs/low-bit-states.md,
"Training results"; docs/mixed-precision.md, "bf16 states").

The task is generated here: sequences of a fixed, random order-2 Markov chain over 16 tokens, each
two-token context allowing 4 next tokens with Dirichlet(1) probabilities. The best achievable loss is
the chain's conditional entropy, printed beside the results. The model is benchmarks/train_bench.py's
GPT at 2 layers, width 128, 4 heads (about 0.4M parameters; the matrices and embeddings of 4096
elements or more take 8-bit states, in gradfused and in bitsandbytes alike). Every optimizer sees the
same initial weights and the same batches; the validation loss is the mean over 16 fixed held-out batches.

    python benchmarks/transformer_8bit.py --seeds 0 1 --out benchmarks/results/DIR   # 1500 steps each
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
from torch.nn import functional as F

import gradfused as gf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_bench import GPT  # noqa: E402

VOCAB, CONTEXT, BRANCHES = 16, 64, 4


def markov_chain(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(next tokens [V, V, BRANCHES], their probabilities [V, V, BRANCHES]) of the generated language."""
    gen = torch.Generator().manual_seed(seed)
    nxt = torch.stack([torch.randperm(VOCAB, generator=gen)[:BRANCHES] for _ in range(VOCAB * VOCAB)])
    # Dirichlet(1) as normalized Exp(1) draws, from `gen` (Dirichlet.sample would read the global generator,
    # whose seed differs from process to process: another language each run)
    exp = -torch.rand(VOCAB * VOCAB, BRANCHES, generator=gen, dtype=torch.float64).log()
    probs = (exp / exp.sum(-1, keepdim=True)).float()
    return nxt.view(VOCAB, VOCAB, BRANCHES), probs.view(VOCAB, VOCAB, BRANCHES)


def entropy(probs: torch.Tensor) -> float:
    """The chain's conditional entropy per token (nats), contexts weighted uniformly: the loss floor."""
    return float(-(probs * probs.log()).sum(-1).mean())


def sample(chain, batch: int, gen: torch.Generator) -> torch.Tensor:
    nxt, probs = chain
    seq = torch.randint(VOCAB, (batch, 2), generator=gen)
    out = [seq[:, 0], seq[:, 1]]
    for _ in range(CONTEXT - 1):
        a, b = out[-2], out[-1]
        choice = torch.multinomial(probs[a, b], 1, generator=gen).squeeze(1)
        out.append(nxt[a, b].gather(1, choice[:, None]).squeeze(1))
    return torch.stack(out, 1)  # CONTEXT + 1 tokens: inputs and targets


def loss_of(model, tokens):
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def optimizers(lr: float, wd: float) -> dict:
    out = {
        "gradfused AdamW 32-bit": lambda p: gf.AdamW(p, lr=lr, weight_decay=wd),
        "gradfused AdamW 8-bit": lambda p: gf.AdamW(p, lr=lr, weight_decay=wd, state_bits=8),
        "gradfused AdamW bf16 states": lambda p: gf.AdamW(p, lr=lr, weight_decay=wd, state_dtype=torch.bfloat16),
        "gradfused AdamW bf16 states, SR": lambda p: gf.AdamW(p, lr=lr, weight_decay=wd, state_dtype=torch.bfloat16,
                                                               stochastic_rounding=True, seed=0),
        "torch AdamW": lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd),
    }
    try:
        import bitsandbytes as bnb

        out["bitsandbytes AdamW8bit"] = lambda p: bnb.optim.AdamW8bit(p, lr=lr, weight_decay=wd)
    except Exception as e:  # not installed, or no build for this machine: report without it
        print(f"bitsandbytes not compared: {type(e).__name__}: {e}")
    return out


def run(name, make, chain, steps, batch, seed) -> dict:
    torch.manual_seed(seed)
    model = GPT(layers=2, width=128, heads=4, vocab=VOCAB, context=CONTEXT)
    opt = make(list(model.parameters()))
    data, held_out = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(10_000 + seed)
    val = [sample(chain, batch, held_out) for _ in range(16)]
    curve, step_seconds = [], 0.0
    for step in range(steps):
        tokens = sample(chain, batch, data)
        loss = loss_of(model, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        start = time.perf_counter()
        opt.step()
        step_seconds += time.perf_counter() - start
        curve.append(loss.item())
    with torch.no_grad():
        val_loss = sum(loss_of(model, v).item() for v in val) / len(val)
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if isinstance(t, torch.Tensor) and t.dim() > 0)
    return {"optimizer": name, "seed": seed, "train_loss": curve, "val_loss": val_loss,
            "optimizer_ms_per_step": 1000 * step_seconds / steps, "state_MiB": state / 2**20,
            "parameters": sum(p.numel() for p in model.parameters())}


def plot(results, floor, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        curve = torch.tensor(r["train_loss"])
        smooth = curve.unfold(0, 50, 1).mean(1)  # 50-step running mean
        ax.plot(range(50, len(curve) + 1), smooth, label=f"{r['optimizer']} (seed {r['seed']}): val {r['val_loss']:.4f}")
    ax.axhline(floor, color="gray", ls=":", label=f"the chain's entropy {floor:.4f}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (50-step running mean, nats)")
    ax.set_title("2-layer causal transformer on a generated order-2 Markov language")
    ax.set_ylim(floor - 0.05, min(max(float(torch.tensor(r["train_loss"][50:]).max()) for r in results), floor + 2.5))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--out", default=None, help="folder for results.json and loss_curves.png")
    parser.add_argument("--optimizers", nargs="+", default=None, help="a subset of the optimizers' names")
    args = parser.parse_args(argv)
    chain = markov_chain(0)
    floor = entropy(chain[1])
    results = []
    for seed in args.seeds:
        for name, make in optimizers(args.lr, args.weight_decay).items():
            if args.optimizers and name not in args.optimizers:
                continue
            r = run(name, make, chain, args.steps, args.batch, seed)
            results.append(r)
            print(f"seed {seed}  {name:33s} val loss {r['val_loss']:.4f}  optimizer {r['optimizer_ms_per_step']:.2f} "
                  f"ms/step  state {r['state_MiB']:.3f} MiB", flush=True)
    print(f"loss floor (the chain's entropy): {floor:.4f} nats; {results[0]['parameters']:,} parameters; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for seed in args.seeds:
        mine = {r["optimizer"]: r["val_loss"] for r in results if r["seed"] == seed}
        base = mine["gradfused AdamW 32-bit"]
        for name, v in mine.items():
            print(f"seed {seed}  {name:33s} {100 * (v - base) / base:+.2f} % against gradfused AdamW 32-bit")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"floor": floor, "args": vars(args), "results": results}, f)
        plot(results, floor, os.path.join(args.out, "loss_curves.png"))
    return results


if __name__ == "__main__":
    main()
