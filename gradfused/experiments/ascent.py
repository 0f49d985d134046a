"""The ten maximisation problems the `gradient-ascent` package benchmarked, as a test and as
`gradfused compare --preset ascent`. Each problem builds its parameters and an objective to *maximise*;
the optimizer ascends it (GradientAscent by default, or any optimizer with maximize=True) for 1000 steps.

`reported` is the number the package's README prints for the problem (its benchmarks.py), so the run
can be compared with it: the final output, x, or the objective, as that script reports it."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

STEPS = 1000


@dataclass(frozen=True)
class Problem:
    number: int
    name: str
    # build() -> (parameters, objective() -> scalar tensor to maximise, report() -> what the package prints)
    build: Callable[[], tuple[list[Tensor], Callable[[], Tensor], Callable[[], float]]]
    package_figure: float | None  # from the package's README, where the problem is deterministic


def _linear_to_target():
    model, x, target = nn.Linear(1, 1), torch.tensor([[2.0]]), torch.tensor([[10.0]])
    return list(model.parameters()), lambda: -nn.functional.mse_loss(model(x), target), lambda: model(x).item()


def _scalar(start, objective):
    x = torch.tensor(start, requires_grad=True)
    return [x], lambda: objective(x), lambda: x[0].item()


def _output_of(model, x, reduce=lambda out: out.sum()):
    """Maximises minus the model's output, as the package does for its networks (so the output falls)."""
    return list(model.parameters()), lambda: -reduce(model(x)), lambda: reduce(model(x)).item()


def _mlp(widths):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _recurrent(cls):
    model, x = cls(10, 20, 2), torch.randn(5, 1, 10)
    state = torch.randn(2, 1, 20) if cls is nn.RNN else (torch.randn(2, 1, 20), torch.randn(2, 1, 20))

    def objective():
        out, _ = model(x, state)
        return -(out.mean() if cls is nn.RNN else out[0].mean())

    return list(model.parameters()), objective, lambda: objective().item()


PROBLEMS = [
    Problem(1, "linear model to a target of 10", _linear_to_target, 9.999994277954102),
    Problem(2, "-x^2 from x = 1", lambda: _scalar([1.0], lambda x: -(x**2).sum()), 1.375625112855263e-23),
    Problem(3, "MLP 10-50-1 output", lambda: _output_of(_mlp([10, 50, 1]), torch.randn(1, 10)), None),
    Problem(4, "MLP 20-100-50-1 output", lambda: _output_of(_mlp([20, 100, 50, 1]), torch.randn(1, 20)), None),
    Problem(5, "MLP 10-50-100-50-1 output", lambda: _output_of(_mlp([10, 50, 100, 50, 1]), torch.randn(1, 10)),
            None),
    Problem(6, "-sin(5 pi x) x from x = 0.5",
            lambda: _scalar([0.5], lambda x: -(torch.sin(5 * math.pi * x) * x).sum()), 0.31278279423713684),
    Problem(7, "-(x0^2 + x1^2) from (1, 1)", lambda: _scalar([1.0, 1.0], lambda x: -(x**2).sum()),
            1.375625112855263e-23),
    Problem(8, "Conv2d(3, 16, 3) mean output",
            lambda: _output_of(nn.Conv2d(3, 16, 3, 1), torch.randn(1, 3, 32, 32), lambda out: out.mean()), None),
    Problem(9, "RNN(10, 20, 2): -mean output", lambda: _recurrent(nn.RNN), 1.0),
    Problem(10, "LSTM(10, 20, 2): -mean first output", lambda: _recurrent(nn.LSTM), None),
]


def run_problem(problem: Problem, make_optimizer, *, seed: int = 0, steps: int = STEPS,
                record_every: int = 10) -> dict:
    """Ascends one problem; returns the package's reported number, the final objective and its curve."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        params, objective, report = problem.build()
    opt = make_optimizer(params)
    curve = []
    for step in range(steps):
        opt.zero_grad()
        value = objective()
        value.backward()
        opt.step()
        if step % record_every == 0:
            curve.append(value.item())
    with torch.no_grad():
        return dict(reported=report(), objective=objective().item(), curve=curve)


# The comparison of the preset: the package's rule in both of its forms, and ascent with other rules.
def ascent_optimizers():
    import gradfused as gf

    return {
        "GradientAscent": lambda p: gf.GradientAscent(p),
        "GradientAscent(momentum_ema=False)": lambda p: gf.GradientAscent(p, momentum_ema=False),
        "AdamW(maximize)": lambda p: gf.AdamW(p, lr=1e-2, maximize=True),
        "AdEMA(maximize)": lambda p: gf.AdEMA(p, lr=1e-2, maximize=True),
        "PersistentSGD(maximize)": lambda p: gf.PersistentSGD(p, lr=1e-2, decay=0.9, maximize=True),
    }


def run(out: str, seed: int = 0, quiet: bool = False, steps: int = STEPS, overwrite: bool = False) -> dict:
    from .compare import check_out_dir

    check_out_dir(out, overwrite)
    results = {}
    for name, make in ascent_optimizers().items():
        results[name] = {str(p.number): run_problem(p, make, seed=seed, steps=steps) for p in PROBLEMS}
        if not quiet:
            print(f"  {name}: done", flush=True)
    report = dict(seed=seed, steps=steps, problems={str(p.number): dict(name=p.name, package=p.package_figure)
                                                     for p in PROBLEMS}, results=results)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    _plot(report, os.path.join(out, "ascent_curves.png"))
    return report


def format_table(report: dict) -> str:
    names = list(report["results"])
    header = ["#", "problem", "package README"] + names
    rows = [header]
    for number, problem in report["problems"].items():
        figure = problem["package"]
        rows.append([number, problem["name"], "" if figure is None else f"{figure:.6g}"]
                    + [f"{report['results'][n][number]['reported']:.6g}" for n in names])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def _plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 5, figsize=(18, 6.5))
    for ax, (number, problem) in zip(axes.flat, report["problems"].items()):
        for name, runs in report["results"].items():
            curve = runs[number]["curve"]
            ax.plot([10 * i for i in range(len(curve))], curve, label=name, lw=1.2)
        ax.set_title(f"{number}. {problem['name']}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if number in ("3", "4", "5"):
            ax.set_yscale("symlog")
    axes.flat[0].set_ylabel("objective (maximised)")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
