"""Training: the run's configuration (:mod:`.config`) and the loop that carries it out (:mod:`.trainer`).

A run is fixed by a :class:`TrainConfig`; :func:`train` (or a :class:`Trainer`) runs it.
"""
from .config import MODELS, ODENET_ACTIVATIONS, TrainConfig, _MINIBATCH_FIELDS, _MODEL_FIELDS
from .trainer import (Batch, StepResult, Trainer, _Ranks, build_model, evaluate,
                      gather_warm_arrays, load_checkpoint, optimizer_from_config, save_checkpoint,
                      train)

__all__ = ["MODELS", "ODENET_ACTIVATIONS", "TrainConfig", "Trainer", "Batch", "StepResult",
           "build_model", "evaluate", "gather_warm_arrays", "load_checkpoint",
           "optimizer_from_config", "save_checkpoint", "train"]
