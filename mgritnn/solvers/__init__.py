"""Time solvers: serial (ground truth), MGRIT, DEER, quasi-DEER and auto, in one registry by name
(:data:`SOLVERS`: name -> solver class and config class; :func:`get_solver` makes one)."""
from .base import (SOLVERS, Registered, SolveStats, Solver, TimeParallelSolver, get_solver,
                   make_config, register, registered, residual_grew)
from .auto import AutoConfig, AutoSolver
from .deer import DEERConfig, DEERSolver, QuasiDEERSolver, quasi_deer_config
from .mgrit import PRESETS as MGRIT_PRESETS
from .mgrit import MGRITConfig, MGRITSolver
from .serial import SerialSolver

#: The same function as :func:`get_solver` (its older name: ``make_solver(name, options, comm)``).
make_solver = get_solver

__all__ = ["SOLVERS", "Registered", "SolveStats", "Solver", "TimeParallelSolver", "SerialSolver",
           "MGRITConfig", "MGRITSolver", "MGRIT_PRESETS", "AutoConfig", "AutoSolver", "DEERConfig",
           "DEERSolver", "QuasiDEERSolver", "quasi_deer_config", "get_solver", "make_config",
           "make_solver", "register", "registered", "residual_grew"]
