from .adam import Adam, AdamW
from .adema import AdEMA
from .alignment import GradientAlignment
from .base import FusedOptimizer
from .persistent_sgd import PersistentSGD
from .radam import RAdam, RAdamW

__all__ = ["FusedOptimizer", "PersistentSGD", "Adam", "AdamW", "RAdam", "RAdamW", "AdEMA", "GradientAlignment"]
