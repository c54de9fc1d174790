"""Training: the run's configuration (:mod:`.config`) and the :class:`Trainer` (:mod:`.trainer`)
that runs its epochs, composing the parts, each in its own module: data and batches
(:mod:`.data`), communicators (:mod:`.ranks`), per-model adapters (:mod:`.models`), checkpoints
(:mod:`.checkpoint`), reports (:mod:`.report`), nested iteration (:mod:`.nested`), the L-BFGS
driver (:mod:`.lbfgs`), the gradients' quality (:mod:`.quality`), owned layers (:mod:`.owned`)
and the evaluation (:mod:`.metrics`).

A run is fixed by a :class:`TrainConfig`; :func:`train` (or a :class:`Trainer`) runs it.
"""
from .checkpoint import gather_warm_arrays, load_checkpoint, save_checkpoint
from .config import (MODELS, ODENET_ACTIVATIONS, SETTINGS, FlatConfigWarning, GRUSpec, ModelSpec,
                     ODENetSpec, OptimSpec, RunSpec, SolverSpec, TrainConfig, _MINIBATCH_FIELDS,
                     _MODEL_FIELDS)
from .data import Batch
from .metrics import evaluate
from .models import build_model
from .ranks import _Ranks
from .trainer import StepResult, Trainer, optimizer_from_config, train

__all__ = ["MODELS", "ODENET_ACTIVATIONS", "SETTINGS", "FlatConfigWarning", "GRUSpec", "ModelSpec",
           "ODENetSpec", "OptimSpec", "RunSpec", "SolverSpec", "TrainConfig", "Trainer", "Batch", "StepResult",
           "build_model", "evaluate", "gather_warm_arrays", "load_checkpoint",
           "optimizer_from_config", "save_checkpoint", "train"]
