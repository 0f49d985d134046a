"""Datasets that need no network, generated (MNIST-1D) or shipped (scikit-learn's digits), cached after
the first generation."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CommandError


# The share of each dataset's training split held out for validation: compare selects the best epoch
# (and --tune its hyperparameters) on it, and reports the test split only at the selected epoch.
VALIDATION_FRACTION = 0.2


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def num_classes(self) -> int:
        return int(self.y_train.max()) + 1

    def to(self, device) -> "Dataset":
        return Dataset(self.name, *(t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val,
                                                             self.x_test, self.y_test)))


def cache_dir() -> str:
    root = os.environ.get("GRADFUSED_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gradfused")
    return os.path.join(root, "datasets")


def _make_mnist1d() -> dict[str, np.ndarray]:
    # Generated locally with the package's default arguments (seed 42): 4000 train / 1000 test, 40 features.
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()  # make_dataset reseeds numpy's global generator; leave it as it was
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    return {"x_train": d["x"], "y_train": d["y"], "x_test": d["x_test"], "y_test": d["y_test"]}


def _make_digits() -> dict[str, np.ndarray]:
    # scikit-learn's 8x8 digits (1797 images, shipped inside the package), pixels scaled to [0, 1],
    # split 80/20 by a fixed permutation.
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    x, y = digits.data[order] / 16.0, digits.target[order]
    split = int(0.8 * len(y))
    return {"x_train": x[:split], "y_train": y[:split], "x_test": x[split:], "y_test": y[split:]}


MAKERS = {"mnist1d": _make_mnist1d, "digits": _make_digits}


def load(name: str) -> Dataset:
    if name not in MAKERS:
        raise CommandError(f"unknown dataset {name!r} (expected one of: {', '.join(MAKERS)})")
    path = os.path.join(cache_dir(), f"{name}.npz")
    if os.path.exists(path):
        arrays = dict(np.load(path))
    else:
        arrays = MAKERS[name]()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + f".{os.getpid()}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a concurrent run never reads half a file
    x, y = (torch.as_tensor(arrays["x_train"], dtype=torch.float32),
            torch.as_tensor(arrays["y_train"], dtype=torch.long))
    split = len(y) - int(VALIDATION_FRACTION * len(y))  # the last fifth: both generators already shuffle
    return Dataset(
        name, x[:split], y[:split], x[split:], y[split:],
        torch.as_tensor(arrays["x_test"], dtype=torch.float32),
        torch.as_tensor(arrays["y_test"], dtype=torch.long),
    )
