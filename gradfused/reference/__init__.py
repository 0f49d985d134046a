"""Pure-PyTorch per-parameter for-loops that follow docs/algorithms.md line by line: the oracle for the
fused kernels, and the `fused=False` path of every optimizer. Same names and signatures as
gradfused.ops."""
from .pipeline import alignment_sums_, lookahead_
from .rules import adam_, adema_, gradient_ascent_, nadam_, persistent_sgd_, radam_, rmsprop_

__all__ = ["persistent_sgd_", "adam_", "radam_", "adema_", "nadam_", "rmsprop_", "gradient_ascent_",
           "alignment_sums_", "lookahead_"]
