"""gradfused: fused multi-tensor optimizer steps for PyTorch, drop-in for torch.optim."""
__version__ = "0.1.0"

from . import ops, reference  # noqa: E402  (ops loads the native kernels)
from .optim import AdEMA, Adam, AdamW, GradientAlignment, PersistentSGD, RAdam, RAdamW  # noqa: E402

__all__ = ["PersistentSGD", "Adam", "AdamW", "RAdam", "RAdamW", "AdEMA", "GradientAlignment", "ops", "reference",
           "__version__"]
