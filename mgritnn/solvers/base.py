"""What every solver shares: the forward/adjoint interface, the result's statistics, the registry.

A solver computes the trajectory of a cell's recurrence over a sequence (``forward``; the GRU
stack's hidden states) and the adjoint of that trajectory with the parameter gradients
(``adjoint``). Solvers differ in how they solve the time recurrence (serial sweep, MGRIT, DEER);
all of them use only the cells' step protocol (:mod:`mgritnn.cells.base`), input projection and its
gradient included, so the model, the head and the training loop never depend on which solver ran,
and any cell of the protocol runs on them.
"""
import functools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, NamedTuple

import numpy as np

from ..config import DIVERGED, NONFINITE, OK
from ..distributed import TimeComm
from ..errors import ConfigError


@dataclass
class SolveStats:
    """Counters of one forward or adjoint solve (scipy-style: status, message, counters).

    Attributes
    ----------
    status : int
        0 converged/exact, 1 not converged within the iteration limit, 2 diverged, 3 non-finite.
        ``success`` and ``failed`` (properties) summarize it.
    message : str
    iterations : int
        Iterations of an iterative solver (0 for the serial sweep).
    residual : float
        Final residual norm (0.0 for the serial sweep).
    step_evals : int
        Step (or step-VJP) evaluations of this process. The unit differs between solvers (not
        yet unified): the serial sweep and MGRIT count **stack steps**, one step of all L layers
        at one time point; DEER and quasi-DEER count their Newton iterations in **layer steps**
        (iterations x time points, summed over the layers: a stack step is L of them), while
        their fallback sweep, the final linearization and the adjoint are counted in stack
        steps. For L = 1 the units agree; compare solvers of deeper stacks with care.
    history : list of float
        Residual norm after each iteration.
    wait_time : float
        Seconds this process waited for messages of other ranks.
    seconds : float
        Wall time of the solve.
    fallback : bool
        The iteration failed and the solver ran the serial sweep instead (the result is exact).
    phases : dict
        Where the time went (MGRIT): ``"phase[level]"`` -> [seconds, calls, step evaluations].
    grew : bool
        The iteration stopped contracting: the residual after its last cycle is more than 10 %
        above the smallest one it reached, and above round-off (:func:`residual_grew`). More
        cycles will not help; the result is further from the solution than an earlier iterate.
    exponent : int
        Adjoint solves: the returned cotangents and the gradients accumulated into ``grads``
        (including what ``grads`` held on entry) are 2^-exponent times the true ones; 0:
        unscaled. The serial solver raises it where the adjoint would overflow (exploding
        gradients), so that the gradient's direction stays exact and its norm is
        ``2^exponent`` times the norm of what was returned (MGRIT and DEER: always 0).
    stalled : bool
        The iteration gave up early: a cycle contracted the residual by less than the solver's
        ``stall`` factor, or the tolerance was out of reach at its rate (MGRIT).
    """
    status: int = 0
    message: str = "exact"
    iterations: int = 0
    residual: float = 0.0
    step_evals: int = 0
    history: list = field(default_factory=list)
    wait_time: float = 0.0
    seconds: float = 0.0
    fallback: bool = False
    phases: dict = field(default_factory=dict)
    grew: bool = False
    exponent: int = 0
    stalled: bool = False

    @property
    def success(self):
        """The result is the solution: converged (or exact), or the serial sweep ran instead."""
        return self.status == OK or self.fallback

    @property
    def failed(self):
        """The result is unusable: diverged or NaN/inf, without the serial sweep's fallback
        (NOT_CONVERGED is not a failure: the paper's fixed cycle counts end there by design)."""
        return self.status in (DIVERGED, NONFINITE) and not self.fallback


def residual_grew(history, dtype, factor=1.1):
    """Whether the residuals of an iteration show that it stopped contracting.

    Parameters
    ----------
    history : sequence of float
        The residual norm after each iteration, in order (measured the same way each time).
    dtype : numpy dtype
        The floating-point type of the iteration (sets the round-off level).
    factor : float
        How far above its best the last residual must lie.

    Returns
    -------
    bool
        True when the last residual exceeds ``factor`` times the smallest earlier one and
        ``sqrt(eps)`` times the first: the iteration has moved away from the solution, and more
        iterations will not bring it back. Round-off noise near convergence (a float32 residual
        wobbling at 1e-6) lies below the floor.
    """
    h = np.asarray(history, np.float64)
    if h.size < 2 or not np.all(np.isfinite(h)):
        return False
    floor = np.sqrt(np.finfo(dtype).eps) * h[0]
    return bool(h[-1] > factor * h[:-1].min() and h[-1] > floor)


def step_sizes(dt, T, dtype, lo=0, hi=None):
    """The step sizes of the steps [lo, hi) of a sequence of T steps, checked.

    Every solver takes ``dt`` for the whole sequence (also on a rank that owns only some steps):
    a scalar, one per step (T,), or one per step and batch row (T, B), where a step size 0 makes
    the step the identity (the padded steps of a variable-length batch).

    Parameters
    ----------
    dt : float or array_like, shape (T,) or (T, B)
    T : int
    dtype : numpy dtype
    lo, hi : int
        The steps wanted (default: all).

    Returns
    -------
    ndarray, shape (hi - lo,) or (hi - lo, B), ``dtype``, C-contiguous

    Raises
    ------
    ConfigError
        A step size is negative or not finite, or ``dt`` has another shape.
    """
    hi = T if hi is None else hi
    d = np.asarray(dt, dtype)
    if d.ndim == 0:
        d = np.broadcast_to(d, (T,))
    if d.ndim > 2 or d.shape[0] != T:
        raise ConfigError(f"step sizes dt must be a scalar or have shape (T,) or (T, B) with "
                          f"T = {T}, got shape {d.shape}")
    d = np.ascontiguousarray(d[lo:hi])
    if not (np.all(np.isfinite(d)) and np.all(d >= 0)):
        raise ConfigError("step sizes dt must be finite and >= 0")
    return d


class Solver:
    """Interface of a time solver (see :class:`mgritnn.solvers.serial.SerialSolver`).

    A distributed solver splits the time axis over ranks: each rank is given the inputs of its own
    steps only (``local_steps``), the rank owning the last point evaluates the head (``is_last``),
    and ``reduce`` sums the gradient over the ranks and shares the loss and logits.
    """

    name = "base"
    is_last = True
    is_first = True
    #: The :class:`~mgritnn.distributed.TimeComm` of the ranks that share the time axis (None:
    #: one process).
    tc = None

    def local_steps(self, T):
        """The fine steps [lo, hi) of a sequence of T steps whose inputs this rank needs."""
        return 0, T

    def reduce(self, grad, loss, logits, shape=None, shared=None):
        """Combine the per-rank results (``shape``: the logits' (B, C); ``shared``: the parts of
        the gradient to sum, see :meth:`TimeParallelSolver.reduce`); one process: nothing to do."""
        return grad, loss, logits

    def warm_arrays(self):
        """What this process remembers between calls (warm-start states), as arrays for a checkpoint.

        Returns
        -------
        dict of str -> ndarray
            Empty for a solver without memory. A resumed run passes it to :meth:`load_warm_arrays`
            (on the same rank) to continue bit for bit.
        """
        return {}

    def load_warm_arrays(self, arrays):
        """Restore what :meth:`warm_arrays` returned (replacing anything remembered)."""
        if arrays:
            raise ConfigError(f"solver {self.name!r} keeps no warm-start states, got {sorted(arrays)}")

    def forward(self, cell, w, x, h0, dt=1.0, keep=True, T=None, keys=None):  # pragma: no cover
        """Trajectory of ``cell`` from the raw inputs ``x`` (n_local, *X0) of this rank's steps
        (the GRU: (n_local, B, I); the solver projects them with :meth:`Cell.project_inputs`), the
        initial state ``h0`` (*S) (the GRU: (L, B, H)) and the step size ``dt`` (``T`` steps in
        all; ``keys`` name the samples, for solvers that remember them). Returns
        ``(h_last (*S) or None, state, SolveStats)``; ``h_last`` on the rank owning the last point;
        ``state`` is what :meth:`adjoint` needs (if ``keep``)."""
        raise NotImplementedError

    def adjoint(self, cell, w, state, lam_last, grads,
                lam_first=None):  # pragma: no cover - interface
        """Adjoint solve; adds this rank's parameter gradients, those of the input projection
        included (:meth:`Cell.project_inputs_vjp`), to ``grads`` (the cell's gradient NamedTuple,
        in place). Returns ``(dxp (n_local, *X), SolveStats)``, ``dxp`` the cotangent of the
        projected inputs (the GRU: layer 0's pre-activations, (n_local, B, 3H)).

        ``lam_first`` (*S), optional: an array that receives the adjoint at the first point,
        :math:`\\lambda_0 = \\partial \\mathrm{loss} / \\partial h_0`, on the rank owning point 0
        (``is_first``); it is left alone on the other ranks. A model whose initial state depends
        on parameters (the ODENet's opening layer) needs it; the GRU (h0 = 0) does not."""
        raise NotImplementedError


class TimeParallelSolver(Solver):
    """A solver whose ranks share the time axis: the communicator, the head on the last rank, and
    the reduction of the per-rank gradients."""

    def __init__(self, comm=None):
        self.tc = TimeComm(comm)            # every message of the solver goes through it
        self.comm = self.tc.comm
        self.rank, self.size = self.tc.rank, self.tc.size

    @property
    def is_last(self):
        return self.rank == self.size - 1

    @property
    def is_first(self):
        """This rank owns point 0 (the initial state; the adjoint's ``lam_first`` lands here)."""
        return self.rank == 0

    def warm_arrays(self):
        """This rank's warm-start states (``self._warm``: key (T, sample) -> state array):
        ``keys`` (K, 2) int64 and ``states`` (K, ...) in key order; empty if none are remembered."""
        warm = getattr(self, "_warm", None)
        if not warm:
            return {}
        keys = sorted(warm)
        return {"keys": np.array(keys, np.int64).reshape(len(keys), 2),
                "states": np.stack([warm[k] for k in keys])}

    def load_warm_arrays(self, arrays):
        """Replace the warm-start states by those of :meth:`warm_arrays` (bit for bit)."""
        if not hasattr(self, "_warm"):
            return super().load_warm_arrays(arrays)
        self._warm = {}
        if arrays:
            keys, states = arrays["keys"], arrays["states"]
            if keys.ndim != 2 or keys.shape[1] != 2 or len(keys) != len(states):
                raise ConfigError(f"warm-start arrays of solver {self.name!r} do not fit: keys "
                                  f"{keys.shape}, states {states.shape}")
            self._warm = {(int(T), int(k)): np.array(s) for (T, k), s in zip(keys, states)}

    def reduce(self, grad, loss, logits, shape=None, shared=None):
        """Sum the gradient over the time ranks; broadcast the loss and the logits (of ``shape``
        (B, C)) from the last rank, in one buffer.

        ``shared`` (a sequence of slices of ``grad``, optional): sum only these parts (one
        allreduce of their concatenation) and leave the rest of ``grad`` as this rank has it,
        in place (the ODENet's layer rows stay on the rank that owns them). None: sum all of it
        (a new array)."""
        if self.size == 1:
            return grad, loss, logits
        buf = np.empty(1 + int(np.prod(shape)), np.float64)
        if self.is_last:
            buf[0], buf[1:] = loss, logits.ravel()
        self.tc.bcast(buf, root=self.size - 1)
        dtype = grad.dtype if logits is None else logits.dtype
        if shared is None:
            grad = self.tc.allreduce(grad)
        else:
            shared = list(shared)
            summed = self.tc.allreduce(np.concatenate([grad[s] for s in shared]))
            at = 0
            for s in shared:
                n = grad[s].size
                grad[s] = summed[at:at + n]
                at += n
        return grad, float(buf[0]), buf[1:].reshape(shape).astype(dtype)


class Registered(NamedTuple):
    """A solver in the registry (:data:`SOLVERS`).

    Attributes
    ----------
    solver : type
        The solver class.
    config : type or None
        Its config class (a frozen dataclass with ``make_solver()``); None for a solver without
        options (the serial sweep).
    fixed : mapping of str -> object
        Fields of ``config`` that this name fixes (``quasi-deer``: ``quasi=True``); they are not
        options of the name.
    """
    solver: type
    config: type = None
    fixed: Mapping = MappingProxyType({})


#: The one registry of the solvers: name -> :class:`Registered`.
SOLVERS = {}


def register(cls=None, *, config=None, fixed=None):
    """Class decorator: make a solver available by its ``name``, with its config class.

    ``@register`` for a solver without options, ``@register(config=MGRITConfig)`` for one with;
    ``fixed`` names fields of ``config`` that the name fixes (e.g. ``{"quasi": True}``).
    """
    def add(cls):
        SOLVERS[cls.name] = Registered(cls, config, MappingProxyType(dict(fixed or {})))
        return cls
    return add if cls is None else add(cls)


def registered(name):
    """The :class:`Registered` entry of the solver ``name``; a ConfigError lists the names."""
    if not isinstance(name, str) or name not in SOLVERS:
        raise ConfigError(f"unknown solver {name!r}; choose one of {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name]


def make_config(name, options=None, comm=None):
    """The config of the solver ``name`` from a mapping of its options (its config class's
    fields, old names included, and ``"preset"`` for a named option set where the class has
    them) and the time communicator ``comm``; None for a solver without options.

    Raises
    ------
    ConfigError
        For an unknown name, an unknown or bad option, or options for a solver that takes none.
    """
    entry = registered(name)
    options = dict(options or {})
    if entry.config is None:
        if options:
            raise ConfigError(f"solver {name!r} takes no options, got {sorted(options)}")
        return None
    make = entry.config
    if "preset" in options:                 # a named option set, the other options override it
        if not hasattr(make, "preset"):
            raise ConfigError(f"solver {name!r} has no presets")
        make = functools.partial(make.preset, options.pop("preset"))
    try:
        return make(**options, **entry.fixed, comm=comm)
    except TypeError as e:
        raise ConfigError(f"bad option for solver {name!r}: {e}") from None


def get_solver(spec, options=None, comm=None):
    """The one way to a solver: from a name, a config, or a solver.

    Parameters
    ----------
    spec : str, config or Solver
        A registered name (``"serial"``, ``"mgrit"``, ``"deer"``, ``"quasi-deer"``, ``"auto"``:
        a new solver), a config object (``MGRITConfig(...)``: its ``make_solver()``), or a solver
        instance (returned as it is).
    options : mapping, optional
        With a name: the options of its config class (:func:`make_config`).
    comm : mpi4py communicator, optional
        With a name: the ranks that share the time axis (a solver without options runs on one).

    Raises
    ------
    ConfigError
        For an unknown name (the message lists the registered ones), bad options, options given
        with a config or solver, or a one-rank solver on several ranks.
    """
    if not isinstance(spec, str):
        if options:
            raise ConfigError(f"options {sorted(options)} go with a solver's name, not with "
                              f"{spec!r}: put them in its config")
        if isinstance(spec, Solver):
            return spec
        if hasattr(spec, "make_solver"):
            return spec.make_solver()
        registered(spec)                    # raises, naming the registered solvers
    config = make_config(spec, options, comm)
    if config is not None:
        return config.make_solver()
    if comm is not None and comm.Get_size() > 1:
        raise ConfigError(f"solver {spec!r} runs on one rank of time, but {comm.Get_size()} ranks "
                          "share the time axis: use --solver mgrit, deer or quasi-deer, or "
                          "--data-parallel equal to the number of ranks")
    return SOLVERS[spec].solver()

