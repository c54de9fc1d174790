"""Time solvers: serial (ground truth); the parallel ones register themselves here too."""
from .base import SOLVERS, SolveStats, Solver, get_solver, register
from .mgrit import MGRITConfig, MGRITSolver
from .serial import SerialSolver

__all__ = ["SOLVERS", "SolveStats", "Solver", "SerialSolver", "MGRITConfig", "MGRITSolver",
           "get_solver", "register"]
