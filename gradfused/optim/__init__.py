from .adam import Adam, AdamW
from .adema import AdEMA
from .alignment import GradientAlignment
from .base import FusedOptimizer
from .gradient_ascent import GradientAscent
from .lookahead import Lookahead
from .nadam import NAdam
from .persistent_sgd import PersistentSGD
from .radam import RAdam, RAdamW
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["FusedOptimizer", "SGD", "PersistentSGD", "Adam", "AdamW", "RAdam", "RAdamW", "AdEMA", "NAdam", "RMSprop",
           "GradientAscent", "GradientAlignment", "Lookahead"]
