"""Presets that reproduce the research comparisons (docs/compare.md: "Research comparisons")."""
from __future__ import annotations

DEFAULT = dict(
    dataset="mnist1d", model="mlp", widths=(128, 128), activation="relu", batch_size=64, epochs=50, seeds=3,
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
    # The mix-and-match variant family side by side, as the original project ran it: lr 1e-3, momentum
    # 0.99, weight decay 1e-4 *per step* (AdamW/RAdamW/SGDW there shrink by wd, not lr·wd: weight_decay=0.1
    # here), its "RMSprop" (Adam with beta1 = 0, beta2 = 0.9, bias-corrected), gradient noise eta 0.3,
    # learning-rate dropout keeping half, and each extension over Adam, SGD-momentum and RAdam. Not
    # reproduced: graddropout_adam (its drop rate is not recorded), and the original's MNIST and network.
    "nnopt": dict(dataset="digits", model="mlp", widths=(128,), activation="relu", batch_size=64, epochs=30,
                  seeds=3, optimizers=[
                      "sgd:lr=1e-3", "sgd:lr=1e-3,momentum=0.99", "sgd:lr=1e-3,momentum=0.99,nesterov=true",
                      "persistent_sgd:lr=1e-3,decay=0.99,weight_decay=0.1,decoupled_weight_decay=true",
                      "adam:lr=1e-3,betas=0/0.9", "rmsprop:lr=1e-3", "adam:lr=1e-3",
                      "adam:lr=1e-3,weight_decay=1e-4", "adamw:lr=1e-3,weight_decay=0.1", "nadam:lr=1e-3",
                      "radam:lr=1e-3", "radamw:lr=1e-3,weight_decay=0.1",
                      "adam:lr=1e-3,grad_noise=0.3/0.55", "sgd:lr=1e-3,momentum=0.99,grad_noise=0.3/0.55",
                      "radam:lr=1e-3,grad_noise=0.3/0.55",
                      "adam:lr=1e-3,lr_dropout=0.5", "sgd:lr=1e-3,momentum=0.99,lr_dropout=0.5",
                      "radam:lr=1e-3,lr_dropout=0.5",
                      "lookahead:adam:lr=1e-3,k=5,alpha=0.5", "lookahead:sgd:lr=1e-3,momentum=0.99,k=5,alpha=0.5",
                      "lookahead:radam:lr=1e-3,k=5,alpha=0.5",
                  ]),
}
