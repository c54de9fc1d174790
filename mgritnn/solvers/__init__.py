"""Time solvers: serial (ground truth), MGRIT, DEER, quasi-DEER and auto (registered by name)."""
import functools

from .base import SOLVERS, SolveStats, Solver, TimeParallelSolver, get_solver, register
from .auto import AutoConfig, AutoSolver
from .deer import DEERConfig, DEERSolver, QuasiDEERSolver, quasi_deer_config
from .mgrit import PRESETS as MGRIT_PRESETS
from .mgrit import MGRITConfig, MGRITSolver
from .serial import SerialSolver

#: Option classes of the configurable solvers, by name.
SOLVER_CONFIGS = {"mgrit": MGRITConfig, "deer": DEERConfig, "quasi-deer": quasi_deer_config,
                  "auto": AutoConfig}


def make_solver(name, options=None, comm=None):
    """A solver from its name, a dict of options (the fields of its config class) and a time
    communicator. The serial solver takes no options and runs on one rank of time."""
    from ..errors import ConfigError
    options = dict(options or {})
    if name in SOLVER_CONFIGS:
        make = SOLVER_CONFIGS[name]
        if "preset" in options:             # a named option set, the other options override it
            if not hasattr(make, "preset"):
                raise ConfigError(f"solver {name!r} has no presets")
            make = functools.partial(make.preset, options.pop("preset"))
        try:
            return make(**options, comm=comm).make_solver()
        except TypeError as e:
            raise ConfigError(f"bad option for solver {name!r}: {e}") from None
    if options:
        raise ConfigError(f"solver {name!r} takes no options, got {sorted(options)}")
    solver = get_solver(name)
    if comm is not None and comm.Get_size() > 1:
        raise ConfigError(f"solver {name!r} runs on one rank of time, but {comm.Get_size()} ranks "
                          "share the time axis: use --solver mgrit, deer or quasi-deer, or --data-parallel "
                          "equal to the number of ranks")
    return solver


__all__ = ["SOLVERS", "SOLVER_CONFIGS", "SolveStats", "Solver", "TimeParallelSolver", "SerialSolver",
           "MGRITConfig", "MGRITSolver", "MGRIT_PRESETS", "AutoConfig", "AutoSolver", "DEERConfig", "DEERSolver", "QuasiDEERSolver", "quasi_deer_config", "get_solver", "make_solver", "register"]
