"""`gradfused compare --preset sequential`: sequential (layer-wise) vs simultaneous updates.

The original experiment trained sigmoid MLPs with an MSE loss by hand-written backprop, updating each layer
as soon as its gradient was known and passing the gradient back through the *updated* weights. Three
methods train the same model from the same initial weights on the same batches:

- ``autograd``: ``loss.backward(); optimizer.step()`` with plain SGD (gradfused.PersistentSGD, decay=0);
- ``simultaneous``: the hand-written backprop of `manual_step`, every layer updated after the whole pass;
- ``sequential``: ``gradfused.sequential(model, optimizer)`` around the same autograd code.

autograd and simultaneous are the same math (a check on the hand-written code); the question is whether
sequential differs from them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import gradfused

from . import datasets
from .compare import (DEFAULT_OUT, SUMMARY_HEADER, check_out_dir, _evaluate_splits, aligned_table, summarize,
                      summary_cells, versions, write_outputs)
from ..errors import CommandError

METHODS = ("autograd", "simultaneous", "sequential")


@dataclass
class SequentialConfig:
    dataset: str = "digits"
    widths: tuple[int, ...] = (128,)
    epochs: int = 30
    seeds: int = 3
    # (batch size, SGD learning rate): at each batch size a moderate rate and the largest at which
    # simultaneous updates still train well (the loss is a batch mean)
    settings: tuple[tuple[int, float], ...] = ((1, 0.1), (1, 0.5), (64, 1.0), (64, 2.0))
    device: str = "cpu"
    out: str = DEFAULT_OUT
    preset: str = "sequential"
    model: str = "mlp"  # always a sigmoid MLP; named for the plots and the table

    def check(self) -> None:
        for name in ("epochs", "seeds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise CommandError(f"--{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if not self.settings or any(b < 1 or not lr > 0 for b, lr in self.settings):
            raise CommandError(f"batch sizes must be >= 1 and learning rates > 0, got {self.settings}")
        if any(w < 1 for w in self.widths):
            raise CommandError(f"--widths must be positive, got {self.widths}")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise CommandError("--device cuda: no CUDA device is available")


# ---- the hand-written transcription -----------------------------------------------------------------

def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """½ Σ (a − y)² per sample, averaged over the batch: the original's loss."""
    return 0.5 * ((output - target) ** 2).sum() / output.shape[0]


@torch.no_grad()
def manual_step(weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                lr: float, *, sequential: bool) -> None:
    """One SGD step of a sigmoid MLP (sigmoid output too) on `mse`, by hand, updating the tensors in place.
    Per layer l from the last to the first::

        dZ = dA * σ'(z_l);  W_l -= lr dZᵀ a_{l-1};  b_l -= lr Σ dZ;  dA = dZ @ W_l

    with W_l already updated when `sequential`, and still the old one otherwise (standard backprop)."""
    acts = [x]
    for w, b in zip(weights, biases):
        acts.append(torch.sigmoid(acts[-1] @ w.T + b))
    d_act = (acts[-1] - y) / x.shape[0]
    for layer in reversed(range(len(weights))):
        out = acts[layer + 1]
        dz = d_act * out * (1 - out)
        w, b = weights[layer], biases[layer]
        grad_w, grad_b = dz.T @ acts[layer], dz.sum(0)
        if not sequential:
            d_act = dz @ w
        w -= lr * grad_w
        b -= lr * grad_b
        if sequential:
            d_act = dz @ w


def sigmoid_mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Sigmoid()]
    return nn.Sequential(*layers)


# ---- the runs ---------------------------------------------------------------------------------------

def _one_hot(y: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, classes).to(torch.float32)


def _evaluate(model, x, y, classes) -> tuple[float, float]:
    with torch.no_grad():
        out = model(x)
        return mse(out, _one_hot(y, classes)).item(), (out.argmax(1) == y).float().mean().item()


def _model(config: SequentialConfig, data) -> nn.Sequential:
    return sigmoid_mlp([data.num_features, *config.widths, data.num_classes])


def train_run(config: SequentialConfig, method: str, batch_size: int, lr: float, data, seed: int,
              init) -> dict[str, Any]:
    model = _model(config, data)
    model.load_state_dict(init)
    model.to(config.device)
    opt = gradfused.PersistentSGD(model.parameters(), lr=lr, decay=0.0)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    order = torch.Generator().manual_seed(seed)  # the same batches for every method
    n, classes = len(data.y_train), data.num_classes
    epochs, seconds, steps = [], 0.0, 0
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(n, generator=order).to(config.device)
        t0 = time.perf_counter()
        with gradfused.sequential(model, opt) if method == "sequential" else contextlib.nullcontext():
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                x, y = data.x_train[idx], _one_hot(data.y_train[idx], classes)
                if method == "simultaneous":
                    manual_step([m.weight for m in linears], [m.bias for m in linears], x, y, lr, sequential=False)
                else:  # autograd; under `sequential` the layers update themselves in backward
                    opt.zero_grad(set_to_none=True)
                    mse(model(x), y).backward()
                    if method == "autograd":
                        opt.step()
                steps += 1
        seconds += time.perf_counter() - t0
        epochs.append(dict(epoch=epoch, **_evaluate_splits(model, data, lambda m, x, y: _evaluate(m, x, y, classes))))
    return dict(seed=seed, epochs=epochs, step_ms=1e3 * seconds / max(steps, 1))


def run(config: SequentialConfig, *, quiet: bool = False, overwrite: bool = False) -> dict[str, Any]:
    from tqdm import tqdm

    from .plots import method_curves

    data = datasets.load(config.dataset).to(config.device)
    check_out_dir(config.out, overwrite)
    inits = []
    for seed in range(config.seeds):
        torch.manual_seed(seed)
        inits.append({k: v.clone() for k, v in _model(config, data).state_dict().items()})
    results = []
    total = len(config.settings) * len(METHODS) * config.seeds
    with tqdm(total=total, unit="run", disable=quiet, file=sys.stderr, dynamic_ncols=True) as progress:
        for batch_size, lr in config.settings:
            for method in METHODS:
                runs = []
                for seed in range(config.seeds):
                    runs.append(train_run(config, method, batch_size, lr, data, seed, inits[seed]))
                    progress.update(1)
                results.append(dict(label=f"{method}, batch {batch_size}, lr {lr:g}", method=method,
                                    batch_size=batch_size, lr=lr, runs=runs, summary=summarize(runs)))
    report = dict(config=dataclasses.asdict(config), versions=versions(config.device), loss="MSE", results=results)
    write_outputs(config.out, report, plot=method_curves)
    return report


def format_table(report: dict[str, Any]) -> str:
    rows = [("method", *(h.replace("loss", "MSE") for h in SUMMARY_HEADER), "ms per training step")]
    rows += [(r["label"], *summary_cells(r["summary"]), f"{r['summary']['step_ms_mean']:.3f}")
             for r in report["results"]]
    c = report["config"]
    head = (f"{c['dataset']}, sigmoid MLP {'-'.join(map(str, c['widths']))}, MSE, {c['epochs']} epochs, "
            f"{c['seeds']} seeds (mean ± std)")
    return head + "\n" + aligned_table(rows)


def resolve(overrides: dict[str, Any]) -> SequentialConfig:
    values = {k: v for k, v in overrides.items() if v is not None}
    if "batch_size" in values:  # that batch size's settings, or the moderate rate scaled from batch 1
        b = values.pop("batch_size")
        settings = tuple(s for s in SequentialConfig.settings if s[0] == b)
        values["settings"] = settings or ((b, SequentialConfig.settings[0][1] * b ** 0.5),)
    config = SequentialConfig(**values)
    config.widths = tuple(config.widths)
    config.check()
    return config

