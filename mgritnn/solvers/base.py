"""What every solver shares: the forward/adjoint interface, the result's statistics, the registry.

A solver computes the trajectory of a cell's recurrence over a sequence (``forward``; the GRU
stack's hidden states) and the adjoint of that trajectory with the parameter gradients
(``adjoint``). Solvers differ in how they solve the time recurrence (serial sweep, MGRIT, DEER);
all of them use only the cells' step protocol (:mod:`mgritnn.cells.base`), input projection and its
gradient included, so the model, the head and the training loop never depend on which solver ran,
and any cell of the protocol runs on them.
"""
from dataclasses import dataclass, field

import numpy as np

from ..config import DIVERGED, NONFINITE, OK
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
        Step (or step-VJP) evaluations of this process, counted per time point and layer stack.
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

    @property
    def success(self):
        """The result is the solution: converged (or exact), or the serial sweep ran instead."""
        return self.status == OK or self.fallback

    @property
    def failed(self):
        """The result is unusable: diverged or NaN/inf, without the serial sweep's fallback
        (NOT_CONVERGED is not a failure: the paper's fixed cycle counts end there by design)."""
        return self.status in (DIVERGED, NONFINITE) and not self.fallback


class Solver:
    """Interface of a time solver (see :class:`mgritnn.solvers.serial.SerialSolver`).

    A distributed solver splits the time axis over ranks: each rank is given the inputs of its own
    steps only (``local_steps``), the rank owning the last point evaluates the head (``is_last``),
    and ``reduce`` sums the gradient over the ranks and shares the loss and logits.
    """

    name = "base"
    is_last = True

    def local_steps(self, T):
        """The fine steps [lo, hi) of a sequence of T steps whose inputs this rank needs."""
        return 0, T

    def reduce(self, grad, loss, logits, shape=None):
        """Combine the per-rank results (``shape``: the logits' (B, C)); one process: nothing to do."""
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

    def adjoint(self, cell, w, state, lam_last, grads):  # pragma: no cover - interface
        """Adjoint solve; adds this rank's parameter gradients, those of the input projection
        included (:meth:`Cell.project_inputs_vjp`), to ``grads`` (the cell's gradient NamedTuple,
        in place). Returns ``(dxp (n_local, *X), SolveStats)``, ``dxp`` the cotangent of the
        projected inputs (the GRU: layer 0's pre-activations, (n_local, B, 3H))."""
        raise NotImplementedError


class TimeParallelSolver(Solver):
    """A solver whose ranks share the time axis: the communicator, the head on the last rank, and
    the reduction of the per-rank gradients."""

    def __init__(self, comm=None):
        from ..distributed import TimeComm
        self.tc = TimeComm(comm)            # every message of the solver goes through it
        self.comm = self.tc.comm
        self.rank, self.size = self.tc.rank, self.tc.size

    @property
    def is_last(self):
        return self.rank == self.size - 1

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

    def reduce(self, grad, loss, logits, shape=None):
        """Sum the gradient over the time ranks; broadcast the loss and the logits (of ``shape``
        (B, C)) from the last rank, in one buffer."""
        if self.size == 1:
            return grad, loss, logits
        buf = np.empty(1 + int(np.prod(shape)), np.float64)
        if self.is_last:
            buf[0], buf[1:] = loss, logits.ravel()
        self.tc.bcast(buf, root=self.size - 1)
        dtype = grad.dtype if logits is None else logits.dtype
        return self.tc.allreduce(grad), float(buf[0]), buf[1:].reshape(shape).astype(dtype)


SOLVERS = {}


def register(cls):
    """Class decorator: make a solver available by its ``name``."""
    SOLVERS[cls.name] = cls
    return cls


def get_solver(spec):
    """A solver instance from a name (``"serial"``, ...), a solver instance, or a solver config object
    that has a ``make_solver()`` method."""
    if isinstance(spec, Solver):
        return spec
    if hasattr(spec, "make_solver"):
        return spec.make_solver()
    if isinstance(spec, str) and spec in SOLVERS:
        return SOLVERS[spec]()
    raise ConfigError(f"unknown solver {spec!r}; choose one of {sorted(SOLVERS)}")
