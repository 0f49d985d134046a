"""gradfused: fused multi-tensor optimizer steps for PyTorch, drop-in for torch.optim."""
__version__ = "0.1.0"

from . import ops, reference  # noqa: E402  (ops loads the native kernels)
from .in_backward import sequential, step_in_backward  # noqa: E402
from .optim import (AdEMA, Adam, AdamW, GradientAlignment, GradientAscent, Lookahead, NAdam,  # noqa: E402
                    PersistentSGD, RAdam, RAdamW, RMSprop, SGD)
from .optim._low_bit import full_precision_state_dict  # noqa: E402

__all__ = ["SGD", "PersistentSGD", "Adam", "AdamW", "RAdam", "RAdamW", "AdEMA", "NAdam", "RMSprop", "GradientAscent",
           "GradientAlignment", "Lookahead",
           "sequential", "step_in_backward", "full_precision_state_dict", "ops", "reference",
           "__version__"]
