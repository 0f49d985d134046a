"""How well candidate 8-bit codes train: the 300-step regression MLP of tests/test_low_bit_states.py,
through the reference pipeline (fused=False), final loss per seed for fp32 states and for each code.

  python benchmarks/code_format_accuracy.py [seeds] [codes] [optimizers]
  python benchmarks/code_format_accuracy.py 6 base8,decade,minifloat3 PersistentSGD,AdamW,AdEMA

Codes: `base8`, the shipped code (format 2, gradfused.quantization as it is); `decade`, format 1 (the
decade map of bitsandbytes, which gradfused 0.1 used); `minifloat3`, a uniform minifloat with 3 mantissa
bits, tried on the way to format 2. The last two are emulated: quantization's functions are swapped for a
table of the code's values and a nearest-value search (docs/low-bit-states.md, "Why base 8")."""
from __future__ import annotations

import sys

import torch

import gradfused as gf
from gradfused import quantization as Q

SHIPPED = (Q.quantize_blockwise, Q.dequantize_blockwise)


def minifloat_values(signed: bool) -> list[float]:
    """0, 1, and 8 evenly spaced values in each octave below 1, as many octaves as the codes allow."""
    octaves = 15 if signed else 31
    return [0.0, 1.0] + [2.0 ** -(j + 1) * (1 + k / 8) for j in range(octaves) for k in range(8)]


def table(code: str, signed: bool) -> torch.Tensor:
    """The code's values, sorted, float32."""
    if code == "decade":
        count = 255 if signed else 256
        return Q.legacy_code_values(signed)[:count].clone()
    magnitudes = minifloat_values(signed)
    values = sorted({-m for m in magnitudes} | set(magnitudes)) if signed else sorted(magnitudes)
    return torch.tensor(values, dtype=torch.float64).float()


def emulate(code: str) -> None:
    """Swaps quantization's encode and decode for a nearest search over `code`'s table; codes index the
    table (only the reference pipeline runs, so nothing else reads them)."""
    def quantize(x, signed):
        values = table(code, signed).double()
        blocks = Q._blocks(Q._memory_order(x).double())
        absmax = torch.where(blocks.isfinite(), blocks.abs(), 0).amax(dim=1)
        u = blocks / absmax.clamp_min(1e-300).unsqueeze(1)
        codes = torch.searchsorted((values[1:] + values[:-1]) / 2, u.contiguous())
        zero = int((values == 0).nonzero().item())
        if not signed:  # as the shipped code: a positive second moment never becomes 0
            codes = torch.where((blocks > 0) & (codes == zero), zero + 1, codes)
        flat = codes.view(-1)[: x.numel()].to(torch.uint8)
        return Q._like_in_memory_order(flat, x), absmax.float()

    def dequantize(codes, absmax, signed, dtype=torch.float32):
        return Q._decode(codes, absmax, table(code, signed), dtype)

    Q.quantize_blockwise, Q.dequantize_blockwise = (quantize, dequantize) if code != "base8" else SHIPPED


OPTIMIZERS = {
    "AdamW": lambda p, bits: gf.AdamW(p, lr=1e-2, state_bits=bits, quantize_min_numel=0, fused=False),
    "AdEMA": lambda p, bits: gf.AdEMA(p, lr=1e-2, state_bits=bits, quantize_min_numel=0, fused=False),
    "PersistentSGD": lambda p, bits: gf.PersistentSGD(p, lr=1e-2, decay=0.9, state_bits=bits,
                                                      quantize_min_numel=0, fused=False),
}


def final_loss(make, bits: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    x = torch.randn(256, 16)
    y = x[:, :4].sum(1, keepdim=True).sin()
    opt = make(list(model.parameters()), bits)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return loss.item()


def main(argv: list[str]) -> None:
    seeds = range(int(argv[0]) if argv else 3)
    codes = argv[1].split(",") if len(argv) > 1 else ["base8", "decade", "minifloat3"]
    names = argv[2].split(",") if len(argv) > 2 else list(OPTIMIZERS)
    print("optimizer, code: final loss for seeds", list(seeds), "(and the mean change against fp32)")
    for name in names:
        make = OPTIMIZERS[name]
        emulate("base8")
        base = [final_loss(make, 32, s) for s in seeds]
        print(f"{name:14} {'fp32':10} " + " ".join(f"{b:.4e}" for b in base), flush=True)
        for code in codes:
            emulate(code)
            losses = [final_loss(make, 8, s) for s in seeds]
            change = sum(l / b - 1 for l, b in zip(losses, base)) / len(base)
            print(f"{name:14} {code:10} " + " ".join(f"{l:.4e}" for l in losses) + f"  ({change:+.1%})",
                  flush=True)
    emulate("base8")


if __name__ == "__main__":
    main(sys.argv[1:])
