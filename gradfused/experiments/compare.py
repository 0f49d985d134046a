"""Trains the same model from the same initial weights with each optimizer over several seeds, and
writes the table, loss_curves.png, results.json and results.csv."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

import gradfused

from . import datasets, models
from . import optimizers as optim_specs
from ..benchmarking import quartiles
from ..environment import describe
from ..errors import CommandError
from .presets import DEFAULT, PRESETS

DEFAULT_OUT = "compare-results"  # every preset's output folder unless --out says otherwise
TIMING_STEPS = 40  # timed steps per backend in the side-by-side probe (time_backends)


@dataclass
class CompareConfig:
    dataset: str = DEFAULT["dataset"]
    model: str = DEFAULT["model"]
    widths: tuple[int, ...] = DEFAULT["widths"]
    activation: str = DEFAULT["activation"]
    optimizers: list[str] = field(default_factory=lambda: list(DEFAULT["optimizers"]))
    epochs: int = DEFAULT["epochs"]
    seeds: int = DEFAULT["seeds"]
    batch_size: int = DEFAULT["batch_size"]
    device: str = "cpu"
    backend: str = "native"
    out: str = DEFAULT_OUT
    preset: str | None = None
    tune: int = 0

    def check(self) -> None:
        for name in ("epochs", "seeds", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {getattr(self, name)!r}")
        if self.tune < 0:
            raise CommandError(f"--tune must be >= 0, got {self.tune}")
        if self.backend not in ("native", "reference"):
            raise CommandError(f"--backend must be native or reference, got {self.backend!r}")
        if not self.optimizers:
            raise CommandError("--optimizers needs at least one optimizer")
        if any(w < 1 for w in self.widths):
            raise CommandError(f"--widths must be positive, got {self.widths}")
        try:
            device = torch.device(self.device)
        except RuntimeError as e:
            raise CommandError(f"--device {self.device!r}: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CommandError("--device cuda: no CUDA device is available")


def resolve(preset: str | None, overrides: dict[str, Any]) -> CompareConfig:
    """Defaults, then the preset, then what was given explicitly."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise CommandError(f"unknown preset {preset!r} (expected one of: {', '.join(PRESETS)})")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = CompareConfig(preset=preset, **values)
    config.widths = tuple(config.widths)
    config.check()
    return config


# ---- training ---------------------------------------------------------------------------------------

def _evaluate(model, x, y) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    model.train()
    return loss, acc


def _evaluate_splits(model, data: datasets.Dataset, evaluate=None) -> dict[str, float]:
    """Loss and accuracy on the train, validation and test splits (the test split is only reported, at the
    epoch that validation selects)."""
    evaluate = evaluate or _evaluate
    out = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("val", data.x_val, data.y_val),
                        ("test", data.x_test, data.y_test)):
        out[f"{split}_loss"], out[f"{split}_acc"] = evaluate(model, x, y)
    return out


def _build_model(config: CompareConfig, data: datasets.Dataset):
    return models.build(config.model, data.num_features, data.num_classes, config.widths, config.activation)


def _initial_weights(config: CompareConfig, data: datasets.Dataset, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in _build_model(config, data).state_dict().items()}


def _model_and_optimizer(config, spec, data, init, *, fused: bool):
    """The model at the initial weights `init`, on the device, and the optimizer over it."""
    model = _build_model(config, data)
    model.load_state_dict(init)
    model.to(config.device)
    return model, spec.build(model.parameters(), fused=fused)


def _timed_step(opt, device: str) -> float:
    """Seconds of one opt.step(), synchronised on CUDA so the kernels are counted."""
    t0 = time.perf_counter()
    opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def train_run(config, spec, data, seed, init, *, progress=None) -> dict[str, Any]:
    """One optimizer, one seed: per-epoch train/validation loss and accuracy, and the time per step."""
    model, opt = _model_and_optimizer(config, spec, data, init, fused=config.backend == "native")
    order = torch.Generator().manual_seed(seed)  # the same batches for every optimizer
    n = len(data.y_train)
    epochs, step_seconds, steps = [], 0.0, 0
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(n, generator=order).to(config.device)
        for start in range(0, n, config.batch_size):
            idx = perm[start:start + config.batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            step_seconds += _timed_step(opt, config.device)
            steps += 1
        epochs.append(dict(epoch=epoch, **_evaluate_splits(model, data)))
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(f"{spec.label[:40]} seed {seed} val {epochs[-1]['val_loss']:.3f}")
    return dict(seed=seed, epochs=epochs, step_ms=1e3 * step_seconds / max(steps, 1))


def time_backends(config, spec, data, init) -> dict[str, Any]:
    """The step time of the native kernels and of the reference (gradfused optimizers only), measured side
    by side: their steps alternate on the same model and batch, so both see the same machine. Medians
    with the interquartile range over TIMING_STEPS steps, and the speedup as the median of the per-pair
    ratios with its own interquartile range (these machines are noisy: one median hides it)."""
    x, y = data.x_train[: config.batch_size], data.y_train[: config.batch_size]
    backends = {"native": _model_and_optimizer(config, spec, data, init, fused=True)}
    if spec.is_gradfused:
        backends["reference"] = _model_and_optimizer(config, spec, data, init, fused=False)
    times: dict[str, list[float]] = {name: [] for name in backends}
    for i in range(TIMING_STEPS + 3):
        for name, (model, opt) in backends.items():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            ms = 1e3 * _timed_step(opt, config.device)
            if i >= 3:  # warm-up: state creation
                times[name].append(ms)
    out: dict[str, Any] = {"step_ms_reference": None, "step_ms_reference_iqr": None, "speedup": None,
                           "speedup_iqr": None}
    for name, values in times.items():
        q1, median, q3 = quartiles(values)
        out[f"step_ms_{name}"], out[f"step_ms_{name}_iqr"] = median, [q1, q3]
    if "reference" in times:
        q1, median, q3 = quartiles([r / n for n, r in zip(times["native"], times["reference"])])
        out["speedup"], out["speedup_iqr"] = median, [q1, q3]
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def selected_epoch(run: dict[str, Any]) -> dict[str, Any]:
    """The epoch with the lowest validation loss: what a practitioner would keep. Test numbers are read
    there, never selected on."""
    return min(run["epochs"], key=lambda e: e["val_loss"])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    selected = [selected_epoch(r) for r in runs]
    out = {}
    for key, values in (("final_train_loss", [r["epochs"][-1]["train_loss"] for r in runs]),
                        ("best_val_loss", [e["val_loss"] for e in selected]),
                        ("best_epoch", [e["epoch"] for e in selected]),
                        ("test_loss", [e["test_loss"] for e in selected]),
                        ("test_acc", [e["test_acc"] for e in selected])):
        out[key + "_mean"], out[key + "_std"] = _mean_std(values)
    out["step_ms_mean"] = statistics.fmean(r["step_ms"] for r in runs)
    return out


def versions(device: str = "cpu") -> dict[str, str]:
    """The environment (commit, build kind, SIMD level, threads, CPU model: gradfused/environment.py) and
    the versions of the packages a run uses."""
    import importlib.metadata as md

    v = describe(device)
    for dist in ("numpy", "mnist1d", "scikit-learn", "matplotlib", "optuna"):
        try:
            v[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return v


def run(config: CompareConfig, *, quiet: bool = False, overwrite: bool = False) -> dict[str, Any]:
    specs = optim_specs.parse_all(config.optimizers)
    data = datasets.load(config.dataset).to(config.device)
    _build_model(config, data)  # a bad --model or --widths fails here
    check_out_dir(config.out, overwrite)  # only once every argument is known to be valid
    tuning = None
    if config.tune:
        from .tune import tune_all

        specs, tuning = tune_all(config, specs, data, quiet=quiet)
    inits = [_initial_weights(config, data, seed) for seed in range(config.seeds)]
    from tqdm import tqdm

    results = []
    with tqdm(total=len(specs) * config.seeds * config.epochs, unit="epoch", disable=quiet, file=sys.stderr,
              dynamic_ncols=True) as progress:
        for spec in specs:
            runs = [train_run(config, spec, data, seed, inits[seed], progress=progress) for seed in range(config.seeds)]
            summary = summarize(runs)
            summary.update(time_backends(config, spec, data, inits[0]))
            results.append(dict(spec=spec.text, label=spec.label, hyperparameters=spec.hyper, alignment=spec.align,
                                runs=runs, summary=summary))
    report = dict(config=dataclasses.asdict(config), versions=versions(config.device), tuning=tuning, results=results)
    write_outputs(config.out, report)
    return report


def check_out_dir(out: str, overwrite: bool) -> None:
    """Makes the folder `out`, which must be writable; one that already holds results is kept unless
    --overwrite says otherwise. Called after the arguments are checked: an argument error comes first."""
    if not overwrite and os.path.exists(os.path.join(out, "results.json")):
        raise CommandError(f"--out {out!r} already holds results (results.json); pass --overwrite to replace them, "
                           "or choose another --out")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".gradfused-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise CommandError(f"--out {out!r} is not a writable folder ({e.strerror or e})") from None


# ---- outputs ----------------------------------------------------------------------------------------

def write_outputs(out: str, report: dict[str, Any], plot=None) -> None:
    """results.json, results.csv and loss_curves.png (drawn by `plot`, plots.loss_curves by default)."""
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        # one row per epoch; each run's step time is in results.json (it is per run, not per epoch)
        metrics = ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]
        writer.writerow(["optimizer", "spec", "seed", "epoch", *metrics])
        for r in report["results"]:
            for run_ in r["runs"]:
                for e in run_["epochs"]:
                    writer.writerow([r["label"], r.get("spec", ""), run_["seed"], e["epoch"], *(e[m] for m in metrics)])
    if plot is None:
        from .plots import loss_curves as plot
    plot(report, os.path.join(out, "loss_curves.png"))


def _fmt(mean: float, std: float, digits: int = 4) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


SUMMARY_HEADER = ("final train loss", "best val loss", "at epoch", "test loss", "test acc %")


def summary_cells(s: dict[str, Any]) -> tuple[str, ...]:
    """Final train loss; the best validation loss and its epoch; test loss and accuracy (%) at that epoch;
    each as mean ± std over seeds (the columns of SUMMARY_HEADER)."""
    return (_fmt(s["final_train_loss_mean"], s["final_train_loss_std"]),
            _fmt(s["best_val_loss_mean"], s["best_val_loss_std"]),
            _fmt(s["best_epoch_mean"], s["best_epoch_std"], 0),
            _fmt(s["test_loss_mean"], s["test_loss_std"]),
            _fmt(100 * s["test_acc_mean"], 100 * s["test_acc_std"], 1))


def aligned_table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(report: dict[str, Any]) -> str:
    rows = [("optimizer", *SUMMARY_HEADER, "step ms native [IQR]",
             "step ms reference [IQR]", "speedup [IQR]")]

    def with_iqr(value, iqr, fmt: str) -> str:
        return "-" if value is None else f"{value:{fmt}} [{iqr[0]:{fmt}}-{iqr[1]:{fmt}}]"

    for r in report["results"]:
        s = r["summary"]
        rows.append((
            r["label"], *summary_cells(s), with_iqr(s["step_ms_native"], s["step_ms_native_iqr"], ".3f"),
            with_iqr(s["step_ms_reference"], s["step_ms_reference_iqr"], ".3f"),
            "-" if s["speedup"] is None else with_iqr(s["speedup"], s["speedup_iqr"], ".1f").replace(" [", "x ["),
        ))
    c = report["config"]
    head = (f"{c['dataset']}, {c['model']} {'-'.join(map(str, c['widths']))} {c['activation']}, batch {c['batch_size']}, "
            f"{c['epochs']} epochs, {c['seeds']} seeds (mean ± std), backend {c['backend']}; the best epoch is "
            "selected on validation, test is read there")
    return head + "\n" + aligned_table(rows)


def config_from_json(path: str) -> CompareConfig:
    """The configuration recorded in a results.json: a run is reproducible from that file alone."""
    try:
        with open(path) as f:
            recorded = json.load(f)["config"]
    except (OSError, ValueError, KeyError) as e:
        raise CommandError(f"--config {path!r}: not a gradfused results.json ({e})") from None
    fields = {f.name for f in dataclasses.fields(CompareConfig)}
    config = CompareConfig(**{k: v for k, v in recorded.items() if k in fields})
    config.widths = tuple(config.widths)
    config.check()
    return config

