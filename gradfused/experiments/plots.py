"""The pictures of compare: loss_curves.png (train and validation loss, validation accuracy) and the
sequential preset's method_curves."""
from __future__ import annotations

from typing import Any

import numpy as np


def loss_curves(report: dict[str, Any], path: str) -> None:
    """Train loss (log scale), validation loss (linear, clipped so one diverging run cannot flatten the
    others) and validation accuracy, mean with a ±std band over seeds; a dot marks each optimizer's
    selected epoch (lowest mean validation loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    legend_rows = -(-len(results) // 3)  # the legend goes below the panels, three labels a row
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6 + 0.22 * legend_rows))
    panels = (("train_loss", 1.0), ("val_loss", 1.0), ("val_acc", 100.0))
    palette = plt.cm.tab10.colors if len(results) <= 10 else plt.cm.tab20.colors  # one color per optimizer
    best_val = []
    for i, r in enumerate(results):
        color, style = palette[i % len(palette)], "-" if i < len(palette) else "--"
        for ax, (key, scale) in zip(axes, panels):
            curves = scale * np.array([[e[key] for e in run["epochs"]] for run in r["runs"]])
            epochs = np.arange(1, curves.shape[1] + 1)
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(epochs, mean, style, label=r["label"], lw=1.5, color=color)
            # On the log axis mean - std can reach zero or below; the band then stops at the best seed.
            ax.fill_between(epochs, np.maximum(mean - std, curves.min(0)), mean + std, color=color, alpha=0.18)
            if key == "val_loss":
                best = int(mean.argmin())
                best_val.append(mean[best])
                ax.plot(epochs[best], mean[best], "o", color=color, ms=5)
    low, typical = min(best_val), float(np.median(best_val))
    axes[1].set_ylim(0.9 * low, low + 3 * (typical - low) + 0.5 * typical)
    titles = ("train loss", "validation loss (clipped above; dot: selected epoch)", "validation accuracy %")
    for ax, title in zip(axes, titles):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"{report.get('loss', 'cross-entropy')}, mean ± std over seeds")
    handles, labels = axes[0].get_legend_handles_labels()
    legend_height = (0.22 * legend_rows + 0.2) / fig.get_figheight()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    c = report["config"]
    fig.suptitle(f"{c['dataset']}, {c['model']} {'-'.join(map(str, c['widths']))}, {c['seeds']} seeds"
                 + (f", preset {c['preset']}" if c.get("preset") else ""))
    fig.tight_layout(rect=(0, legend_height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def method_curves(report: dict[str, Any], path: str) -> None:
    """One panel per (batch size, lr) of `compare --preset sequential`: train (solid) and validation (dashed)
    loss of each method, mean over seeds with a ±std band on the train loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys((r["batch_size"], r["lr"]) for r in report["results"]))
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 4), squeeze=False)
    colors = {}
    for r in report["results"]:
        ax = axes[0][settings.index((r["batch_size"], r["lr"]))]
        color = colors.setdefault(r["method"], f"C{len(colors)}")
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            curves = np.array([[e[key] for e in run["epochs"]] for run in r["runs"]])
            epochs = np.arange(1, curves.shape[1] + 1)
            mean = curves.mean(0)
            ax.plot(epochs, mean, style, color=color, lw=1.5, label=f"{r['method']} ({key.split('_')[0]})")
            if key == "train_loss":
                ax.fill_between(epochs, np.maximum(mean - curves.std(0), curves.min(0)), mean + curves.std(0),
                                color=color, alpha=0.2)
        ax.set_title(f"batch {r['batch_size']}, lr {r['lr']:g}")
    for ax in axes[0]:
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"{report.get('loss', 'loss')}, mean over seeds")
    axes[0][-1].legend(fontsize=7, loc="best")
    c = report["config"]
    fig.suptitle(f"sequential vs simultaneous updates: {c['dataset']}, sigmoid MLP "
                 f"{'-'.join(map(str, c['widths']))}, {c['seeds']} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
