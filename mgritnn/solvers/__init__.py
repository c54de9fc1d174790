"""Time solvers: serial (ground truth), MGRIT, DEER, quasi-DEER and auto, in one registry by name
(:data:`SOLVERS`: name -> solver class and config class).

``make_solver(config, comm=None, state=None)`` makes one: ``config`` a config object
(``MGRITConfig(...)``, ``SerialConfig()``, ...) or a registered name, ``comm`` the ranks that share
the time axis, ``state`` a :class:`SolverState` to continue from (warm starts, MGRIT's
``tol_scale``; ``solver.state`` gives it back, ``SolverState.to_arrays`` / ``from_arrays`` save
and restore it). See :mod:`mgritnn.solvers.base` for the state and the capability checks
(``solver.supports(cell)``, ``solver.check(cell)``).
"""
from .base import (SOLVERS, Registered, SolverState, SolveStats, Solver, TimeParallelSolver,
                   get_solver, make_config, make_solver, register, registered, residual_grew)
from .auto import AutoConfig, AutoSolver
from .deer import DEERConfig, DEERSolver, QuasiDEERSolver, quasi_deer_config
from .mgrit import PRESETS as MGRIT_PRESETS
from .mgrit import MGRITConfig, MGRITSolver
from .serial import SerialConfig, SerialSolver

__all__ = ["SOLVERS", "Registered", "SolverState", "SolveStats", "Solver", "TimeParallelSolver",
           "SerialConfig", "SerialSolver", "MGRITConfig", "MGRITSolver", "MGRIT_PRESETS",
           "AutoConfig", "AutoSolver", "DEERConfig", "DEERSolver", "QuasiDEERSolver",
           "quasi_deer_config", "get_solver", "make_config", "make_solver", "register",
           "registered", "residual_grew"]
