"""Optimizers (Adam, SGD) and gradient clipping on one flat parameter buffer."""

from mgritnn.optim.adam import Adam, AdamState, state_from_arrays, state_to_arrays
from mgritnn.optim.clip import clip_by_global_norm
from mgritnn.optim.sgd import OPTIMIZERS, SGD, SGDState, make_optimizer

__all__ = [
    "Adam",
    "AdamState",
    "SGD",
    "SGDState",
    "OPTIMIZERS",
    "make_optimizer",
    "clip_by_global_norm",
    "state_to_arrays",
    "state_from_arrays",
]
