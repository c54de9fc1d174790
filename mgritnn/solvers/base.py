"""What every solver shares: the forward/adjoint interface, the result's statistics, the registry.

A solver computes the trajectory of a cell's recurrence over a sequence (``forward``; the GRU
stack's hidden states) and the adjoint of that trajectory with the parameter gradients
(``adjoint``). Solvers differ in how they solve the time recurrence (serial sweep, MGRIT, DEER);
all of them use only the cells' step protocol (:mod:`mgritnn.cells.base`), input projection and its
gradient included, so the model, the head and the training loop never depend on which solver ran,
and any cell of the protocol runs on them.

Making a solver, its state, and what it needs of a cell:

* ``make_solver(config, comm=None, state=None)``: ``config`` a solver config (``MGRITConfig(...)``,
  ``SerialConfig()``, ...) or a registered name (``"mgrit"``: its default config); ``comm`` the
  ranks that share the time axis (it is not part of the config: a config is a value, the same on
  every rank and in every run). ``make_config(name, options)`` builds a config from a name and a
  mapping of options (the command line's way).
* What a solver remembers between solves (MGRIT's and DEER's warm starts, MGRIT's ``tol_scale``)
  is a :class:`SolverState` value, this rank's own: ``solver.state`` gives it (the solver updates
  it in place as it solves), ``make_solver(config, comm, state=...)`` or ``solver.load_state(...)``
  hands one in, and :meth:`SolverState.to_arrays` / :meth:`SolverState.from_arrays` write it to
  and read it from a checkpoint like any other arrays (``solver.warm_arrays()`` and
  ``solver.load_warm_arrays(arrays)`` are the same two conversions, kept for older callers).
* Each solver class says what it needs of a cell beyond the step protocol's core
  (:attr:`Solver.requires`, capabilities of :mod:`mgritnn.cells.base`); :meth:`Solver.supports`
  lists what a cell lacks, and :meth:`Solver.check` (run by every solve the first time it meets a
  kind of cell, and by the models when they take a solver) refuses such a cell with a
  :class:`~mgritnn.errors.ConfigError` that names the missing capability and the way out.

Older spellings still work: ``make_solver(name, options, comm)`` and ``get_solver(spec, options,
comm)`` (the same function), and a config that carries the communicator,
``MGRITConfig(..., comm=comm).make_solver()`` (deprecated: a ``DeprecationWarning``).
"""
import contextlib
import dataclasses
import functools
import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from ..cells.base import missing
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
        ``2^exponent`` times the norm of what was returned. MGRIT reports it from its exact
        fallback for the GRU cells (the pipelined scaled sweep,
        :func:`~mgritnn.solvers.pipeline.pipelined_scaled_adjoint`), which it takes when its own
        adjoint gives inf, DEER and quasi-DEER from theirs (the same sweep) where their scan
        overflows or their iteration misses.
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


@dataclass
class SolverState:
    """What a solver remembers between solves, on this rank (a value the caller may hold).

    A solver updates its state in place as it solves (``solver.state``); a caller that keeps it
    (the model, the trainer, a checkpoint) hands it to the next solver it makes
    (``make_solver(config, comm, state=...)``) to continue bit for bit. The content is this
    rank's own (its time slice of every remembered sample), so each rank saves and restores its
    own state.

    Attributes
    ----------
    warm : dict of (int, int) -> ndarray
        Warm-start states: key (T, sample index) -> this rank's states of that sample (MGRIT: its
        level-0 C-points, (n_c, *S without the batch axis); DEER: its trajectory per layer,
        (L, T_loc, H)); each solver's own layout, of the solve's dtype.
    scalars : dict of str -> float
        Named numbers (MGRIT: ``tol_scale``); a number at its default is not stored.
    parts : dict of str -> SolverState
        The states of the solvers this one is made of (auto: one per route).
    """
    warm: dict = field(default_factory=dict)
    scalars: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)

    def __bool__(self):
        return bool(self.warm or self.scalars or any(self.parts.values()))

    def to_arrays(self):
        """The state as named arrays, for a checkpoint (the layout of ``warm_arrays``).

        Returns
        -------
        dict of str -> ndarray
            ``keys`` (K, 2) int64 and ``states`` (K, ...) the warm-start states in key order
            (absent without any); one float64 array (1,) per scalar, under its name; each part's
            arrays under ``"<part>/<name>"``. Empty for an empty state.
        """
        out = {}
        if self.warm:
            keys = sorted(self.warm)
            out["keys"] = np.array(keys, np.int64).reshape(len(keys), 2)
            out["states"] = np.stack([self.warm[k] for k in keys])
        for name, v in self.scalars.items():
            out[name] = np.array([v], np.float64)
        for name, part in self.parts.items():
            out.update({f"{name}/{k}": v for k, v in part.to_arrays().items()})
        return out

    @classmethod
    def from_arrays(cls, arrays, owner="solver"):
        """The state that :meth:`to_arrays` wrote (arrays copied, bit for bit).

        Parameters
        ----------
        arrays : mapping of str -> ndarray
        owner : str
            Who reads them, for messages.

        Raises
        ------
        ConfigError
            ``keys`` and ``states`` that do not fit each other, or only one of them.
        """
        arrays = dict(arrays or {})
        parts = {}
        for k in [k for k in arrays if "/" in k]:
            name, rest = k.split("/", 1)
            parts.setdefault(name, {})[rest] = arrays.pop(k)
        warm = {}
        if "keys" in arrays or "states" in arrays:
            keys, states = arrays.pop("keys", None), arrays.pop("states", None)
            if keys is None or states is None or keys.ndim != 2 or keys.shape[1] != 2 \
                    or len(keys) != len(states):
                raise ConfigError(f"warm-start arrays of {owner} do not fit: keys "
                                  f"{getattr(keys, 'shape', None)}, states "
                                  f"{getattr(states, 'shape', None)}")
            warm = {(int(T), int(k)): np.array(s) for (T, k), s in zip(keys, states)}
        scalars = {k: float(np.asarray(v).ravel()[0]) for k, v in arrays.items()}
        return cls(warm, scalars, {name: cls.from_arrays(a, f"{owner}/{name}")
                                   for name, a in parts.items()})


class Solver:
    """Interface of a time solver (see :class:`mgritnn.solvers.serial.SerialSolver`).

    A distributed solver splits the time axis over ranks: each rank is given the inputs of its own
    steps only (``local_steps``), the rank owning the last point evaluates the head (``is_last``),
    and ``reduce`` sums the gradient over the ranks and shares the loss and logits.

    Attributes
    ----------
    requires : tuple of capability
        What the solver needs of a cell beyond the step protocol's core (capabilities of
        :mod:`mgritnn.cells.base`); :meth:`supports` checks them.
    remembers : frozenset of str
        What its :class:`SolverState` may hold: ``"warm"`` (warm-start states) and the names of
        its scalars. Empty: a solver without memory, which refuses a non-empty state.
    state : SolverState
        What this solver remembers between solves, on this rank.
    """

    name = "base"
    is_last = True
    is_first = True
    requires = ()
    remembers = frozenset()
    #: The :class:`~mgritnn.distributed.TimeComm` of the ranks that share the time axis (None:
    #: one process).
    tc = None

    def __init__(self, state=None):
        self._supported = set()            # the kinds of cell checked already (see check)
        self.state = SolverState()
        if state is not None:
            self.load_state(state)

    def local_steps(self, T):
        """The fine steps [lo, hi) of a sequence of T steps whose inputs this rank needs."""
        return 0, T

    def reduce(self, grad, loss, logits, shape=None, shared=None):
        """Combine the per-rank results (``shape``: the logits' (B, C); ``shared``: the parts of
        the gradient to sum, see :meth:`TimeParallelSolver.reduce`); one process: nothing to do."""
        return grad, loss, logits

    # -- the state -----------------------------------------------------------------------------

    def load_state(self, state):
        """Take ``state`` (a :class:`SolverState`, used as it is, not copied) as what this solver
        remembers; the solver updates it in place from now on.

        Raises
        ------
        ConfigError
            ``state`` holds what this solver does not keep (warm starts or a scalar it does not
            know).
        """
        if not isinstance(state, SolverState):
            raise ConfigError(f"the state of solver {self.name!r} must be a SolverState, got "
                              f"{type(state).__name__}")
        extra = sorted(({"warm"} if state.warm else set()) | set(state.scalars)
                       | {f"{k}/" for k, v in state.parts.items() if v})
        extra = [k for k in extra if k not in self.remembers]
        if extra:
            raise ConfigError(f"solver {self.name!r} keeps no "
                              f"{'warm-start states' if extra == ['warm'] else ', '.join(extra)}"
                              f", got a state with {sorted(state.to_arrays())}")
        self.state = state

    def warm_arrays(self):
        """What this process remembers between calls, as arrays for a checkpoint
        (``self.state.to_arrays()``, :meth:`SolverState.to_arrays`).

        Returns
        -------
        dict of str -> ndarray
            Empty for a solver without memory. A resumed run passes it to :meth:`load_warm_arrays`
            (on the same rank) to continue bit for bit.
        """
        return self.state.to_arrays()

    def load_warm_arrays(self, arrays):
        """Restore what :meth:`warm_arrays` returned (replacing anything remembered; the same as
        ``load_state(SolverState.from_arrays(arrays))``)."""
        if arrays and not self.remembers:
            raise ConfigError(f"solver {self.name!r} keeps no warm-start states, got "
                              f"{sorted(arrays)}")
        self.load_state(SolverState.from_arrays(arrays, f"solver {self.name!r}"))

    # -- what it needs of a cell ---------------------------------------------------------------

    def supports(self, cell):
        """What ``cell`` lacks for this solver.

        Returns
        -------
        list of str
            One entry per missing required capability (``"LayerNewton (num_layers, ...)"``:
            the capability and its missing methods) or other reason; empty when the solver runs
            on ``cell``.
        """
        out = []
        for cap in self.requires:
            lacks = missing(cell, cap)
            if lacks:
                out.append(f"{cap.__name__} ({', '.join(lacks)})")
        return out

    def check(self, cell):
        """Refuse a cell this solver cannot run (see :meth:`supports`); a kind of cell (its class
        and name) is checked once.

        Raises
        ------
        ConfigError
            Naming what the cell lacks and the solvers to use instead.
        """
        kind = (type(cell), getattr(cell, "name", None))
        checked = self.__dict__.setdefault("_supported", set())
        if kind in checked:
            return
        lacks = self.supports(cell)
        if lacks:
            raise ConfigError(
                f"solver {self.name!r} cannot run the {getattr(cell, 'name', type(cell).__name__)!r}"
                f" cell: it lacks {'; '.join(lacks)}. Use a solver that needs only the step "
                f"protocol (--solver serial or mgrit), or a cell that has "
                f"{'it' if len(lacks) == 1 else 'them'}")
        checked.add(kind)

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
    the reduction of the per-rank gradients.

    Parameters
    ----------
    comm : mpi4py communicator, TimeComm or None
        The ranks that share the time axis (None: MPI's world under an MPI launcher, else one
        process).
    state : SolverState, optional
        What to remember from the start (:meth:`Solver.load_state`).
    """

    def __init__(self, comm=None, state=None):
        self.tc = TimeComm(comm)            # every message of the solver goes through it
        self.comm = self.tc.comm
        self.rank, self.size = self.tc.rank, self.tc.size
        super().__init__(state)

    @property
    def is_last(self):
        return self.rank == self.size - 1

    @property
    def is_first(self):
        """This rank owns point 0 (the initial state; the adjoint's ``lam_first`` lands here)."""
        return self.rank == 0

    @property
    def falls_back(self):
        """Whether a solve that misses its tolerance, diverges or gives NaN/inf is redone as the
        serial sweep on the same ranks: the config's ``fallback``, or always within
        :meth:`falling_back`."""
        return bool(getattr(self.config, "fallback", False)) or self._forced_fallback

    #: Set within :meth:`falling_back`.
    _forced_fallback = False

    @contextlib.contextmanager
    def falling_back(self):
        """Within this context every solve that does not converge is redone as the serial sweep
        on the same ranks (exact; ``SolveStats.fallback`` set), whatever the config's ``fallback``
        says: the trainer's rescue of a step whose solve failed. The routes of a solver made of
        others (``routes``: :class:`~mgritnn.solvers.auto.AutoSolver`) fall back too."""
        parts = [self, *getattr(self, "routes", {}).values()]
        before = [p._forced_fallback for p in parts]
        for p in parts:
            p._forced_fallback = True
        try:
            yield self
        finally:
            for p, b in zip(parts, before):
                p._forced_fallback = b

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
    config : type
        Its config class (a frozen dataclass with ``make_solver(comm=None, state=None)``; the
        serial sweep's has no fields).
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

    ``@register(config=MGRITConfig)``; ``fixed`` names fields of ``config`` that the name fixes
    (e.g. ``{"quasi": True}``).
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


def deprecated_comm(owner, comm):
    """Warn that a config was given the communicator ``comm`` (deprecated: the communicator is
    not part of a solver's config, it goes to :func:`make_solver`); nothing for ``comm=None``."""
    if comm is not None:
        warnings.warn(f"{owner}(comm=...) is deprecated: a solver's config holds no "
                      f"communicator; use make_solver(config, comm)", DeprecationWarning,
                      stacklevel=5)


def make_config(name, options=None, comm=None):
    """The config of the solver ``name`` from a mapping of its options (its config class's
    fields, old names included, and ``"preset"`` for a named option set where the class has
    them). ``comm`` (deprecated) puts a communicator into the config: give it to
    :func:`make_solver` instead.

    Raises
    ------
    ConfigError
        For an unknown name, an unknown or bad option, or options for a solver that takes none.
    """
    entry = registered(name)
    options = dict(options or {})
    if options and not any(f.metadata.get("option", True) for f in fields(entry.config)):
        raise ConfigError(f"solver {name!r} takes no options, got {sorted(options)}")
    make = entry.config
    if "preset" in options:                 # a named option set, the other options override it
        if not hasattr(make, "preset"):
            raise ConfigError(f"solver {name!r} has no presets")
        make = functools.partial(make.preset, options.pop("preset"))
    extra = {} if comm is None else dict(comm=comm)
    try:
        return make(**options, **entry.fixed, **extra)
    except TypeError as e:
        raise ConfigError(f"bad option for solver {name!r}: {e}") from None


def make_solver(config, comm=None, state=None, *, options=None):
    """The one way to a solver: from a config, a name, or a solver.

    Parameters
    ----------
    config : config, str or Solver
        A solver config (``MGRITConfig(...)``, ``SerialConfig()``, ...: a new solver of it), a
        registered name (``"serial"``, ``"mgrit"``, ``"deer"``, ``"quasi-deer"``, ``"auto"``: a new
        solver of its config made from ``options``, :func:`make_config`), or a solver instance
        (returned as it is).
    comm : mpi4py communicator, optional
        The ranks that share the time axis (None: MPI's world under an MPI launcher, else one
        process; a config that carries one, deprecated, gives its own).
    state : SolverState, optional
        What the solver remembers from the start (this rank's; see :class:`SolverState`).
    options : mapping, optional
        With a name: the options of its config class.

    The older spelling ``make_solver(name, options, comm)`` (and ``get_solver(spec, options,
    comm)``, the same function) is still taken: a mapping in the place of ``comm`` is the
    options, and then the next argument is the communicator.

    Raises
    ------
    ConfigError
        For an unknown name (the message lists the registered ones), bad options, options given
        with a config or solver, or a one-rank solver on several ranks.
    """
    if isinstance(comm, Mapping) or (state is not None and not isinstance(state, SolverState)):
        if options is not None and comm is not None:
            raise ConfigError("solver options given twice (as the second argument and as "
                              "options=)")
        options, comm, state = (comm if options is None else options), state, None
    if isinstance(config, str):
        config = make_config(config, options)
    elif options:
        raise ConfigError(f"options {sorted(options)} go with a solver's name, not with "
                          f"{config!r}: put them in its config")
    elif isinstance(config, Solver):
        if state is not None:
            config.load_state(state)
        return config
    elif not hasattr(config, "make_solver"):
        registered(config)                  # raises, naming the registered solvers
    if "comm" not in inspect.signature(config.make_solver).parameters:
        # a config of the older kind (make_solver() without arguments; auto, for now): the
        # communicator goes into the config, and its solver starts with nothing remembered
        if comm is not None:
            config = dataclasses.replace(config, comm=comm)
        solver = config.make_solver()
        if state is not None:
            solver.load_state(state)
        return solver
    return config.make_solver(comm, state)


#: The older name of :func:`make_solver` (``get_solver(spec, options=None, comm=None)``).
get_solver = make_solver


def one_rank(name, comm):
    """Refuse a communicator of several ranks for the one-rank solver ``name`` (ConfigError);
    returns ``comm``."""
    if comm is not None and comm.Get_size() > 1:
        raise ConfigError(f"solver {name!r} runs on one rank of time, but {comm.Get_size()} ranks "
                          "share the time axis: use --solver mgrit, deer or quasi-deer, or "
                          "--data-parallel equal to the number of ranks")
    return comm
