"""Presets that reproduce the research comparisons (README: "Research comparisons")."""
from __future__ import annotations

DEFAULT = dict(
    dataset="mnist1d", model="mlp", widths=(128, 128), activation="relu", batch_size=64, epochs=100, seeds=3,
    optimizers=["adamw:lr=3e-3", "persistent_sgd:lr=0.01,decay=0.9", "adema:lr=1e-3", "radam:lr=3e-3",
                "align:adam:lr=3e-3,beta=0.9"],
)

PRESETS = {
    # GradRetentionNet: PersistentSGD vs AdamW. Originally MNIST 784-256-10 ReLU, batch 64, 10 epochs.
    "grn": dict(dataset="digits", model="mlp", widths=(256,), activation="relu", batch_size=64, epochs=10, seeds=5,
                optimizers=["persistent_sgd:lr=0.01,decay=0.99", "adamw:lr=0.01,weight_decay=0.01"]),
    # Gradient Alignment Optimizer: GAO(Adam) vs Adam on MNIST-1D with the originally tuned hyperparameters.
    "gao": dict(dataset="mnist1d", model="mlp", widths=(128, 128), activation="relu", batch_size=64, epochs=100,
                seeds=5, optimizers=["adam:lr=0.0069", "align:adam:lr=0.0085,beta=0.99"]),
}
