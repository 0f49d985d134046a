"""Pure-PyTorch per-parameter for-loops that follow ALGORITHMS.md line by line: the oracle for the
fused kernels, and the `fused=False` path of every optimizer. Same names and signatures as
gradfused.ops."""
from .pipeline import alignment_sums_
from .rules import adam_, adema_, persistent_sgd_, radam_

__all__ = ["persistent_sgd_", "adam_", "radam_", "adema_", "alignment_sums_"]
