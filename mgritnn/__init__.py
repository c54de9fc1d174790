"""mgritnn: parallel-in-time training of GRU networks (MGRIT and DEER) with numba and MPI, and
layer-parallel training of residual networks (:class:`ODENet`) on the same solvers.

The top level holds what a user needs: the model, the solvers' option classes, the training
configuration and loop, and the errors (every one a :class:`MgritnnError`).
"""
from .cells import DahlquistCell, NewtonConfig, NewtonGRUCell
from .errors import (CheckpointError, ConfigError, DataError, DivergenceError, MgritnnError,
                     MgritnnWarning, OutputError, SolverError)
from .model import GRUClassifier, load
from .odenet import ODENet
from .solvers import (MGRIT_PRESETS, AutoConfig, DEERConfig, MGRITConfig, SerialConfig, SolverState,
                      SolveStats, make_solver)
from .train import (GRUSpec, ODENetSpec, OptimSpec, RunSpec, SolverSpec, TrainConfig, Trainer,
                    evaluate, train)

__version__ = "0.1.0"

__all__ = ["GRUClassifier", "ODENet", "load", "MGRITConfig", "MGRIT_PRESETS", "DEERConfig",
           "AutoConfig", "SerialConfig", "SolverState", "make_solver", "NewtonConfig",
           "NewtonGRUCell", "DahlquistCell", "SolveStats", "TrainConfig", "GRUSpec", "ODENetSpec",
           "OptimSpec", "SolverSpec", "RunSpec", "Trainer", "train",
           "evaluate", "MgritnnError", "DataError", "ConfigError", "CheckpointError", "OutputError",
           "SolverError", "DivergenceError", "MgritnnWarning", "__version__"]
