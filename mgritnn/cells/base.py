"""The step protocol: what every time solver asks of a cell (a one-step propagator).

A cell advances K independent states by one step each, every state with its own input row and its
own step size, and gives the vector-Jacobian product (VJP) of that step. The serial sweep, MGRIT
(forward and adjoint), DEER and the auto solver need nothing else (the required core, :class:`Core`,
declared by :class:`Cell`), so any time-stepper that implements it runs on them: the GRU cells
(:mod:`mgritnn.cells.gru`), the fully implicit GRU (:mod:`mgritnn.cells.newton`), the scalar test
equation (:mod:`mgritnn.cells.dahlquist`) and the residual layer of an ODENet
(:mod:`mgritnn.cells.odenet`, whose step inputs are the layers' weights). What a solver may use
beyond the core is a **capability**: a runtime-checkable protocol of its own
(:class:`FusedSequence`, :class:`FusedChains`, :class:`LayerNewton`, :class:`DiagonalNewton`), which
a cell has when its class implements every method of it (:func:`has`, :func:`missing`).
:class:`Cell` declares no capability, so a cell never appears to have one it cannot honour; a
solver that requires one refuses a cell without it when the solver is made, naming the missing
methods.

Shapes: a state of one time point has any shape S (the GRU stack: (L, B, H)); K states are
(K, *S). A sequence's raw inputs are x (T, *X0); the cell's input projection
(:meth:`Cell.project_inputs`, one BLAS call over all steps before any recurrence) turns them into
the step inputs (T, *X) that :meth:`Cell.step` takes, one row per step. Step sizes dt are (K,),
one per state, or (K, B), one per state and batch row (the GRU cells; the older (K,) form and a
scalar are broadcast). A step of size 0 is exactly the identity, forward (h' = h bit for bit) and
backward (the adjoint passes unchanged, zero input and parameter cotangents), and its Jacobian is
the identity: the padded steps of a variable-length batch, so that every solver handles sequences
of different lengths without special cases.
Caches and cotangents are tuples or lists whose arrays all have K as their first axis, so that
solvers can gather, scatter and store them for many steps without knowing what they hold; each
cell has one cache type of its steps (the GRU cells: :class:`~mgritnn.cells.gru.GRUCache`, in two
layouts, the compiled chains' and the solvers'; the others a tuple). Two results carry
intermediates too and stay apart, as they hold more than a step cache: a fused sweep's
(:class:`~mgritnn.cells.gru.SequenceCache`: the trajectory of every layer, T + 1 points, which the
serial solver and DEER read as the forward result, and the step sizes) and a layer step's
(:class:`LayerStep`: the new states and the Jacobian DEER iterates with).
Parameter gradients are a NamedTuple shaped like the weights (:meth:`Cell.zero_grads`), its arrays
accumulated in place (a model passes views into its flat gradient buffer).

The operations, and who needs them:

======================================  ==================================================
required core (:class:`Core`), every    :meth:`~Cell.project_inputs`,
solver                                  :meth:`~Cell.project_inputs_vjp`,
                                        :meth:`~Cell.zero_grads`, :meth:`~Cell.step`,
                                        :meth:`~Cell.step_vjp`, :meth:`~Cell.accumulate_grads`,
                                        :meth:`~Cell.coarse_cell` (MGRIT)
:class:`FusedSequence` (serial and      ``sequence_forward``, ``sequence_vjp``
DEER's sweeps; optional)
:class:`FusedChains` (MGRIT;            ``chain_weights``, ``chain_cache``, ``chain_cotangents``,
optional)                               ``advance``, ``advance_vjp``, ``chain_step_cache``,
                                        ``chain_step_cotangents``
:class:`LayerNewton` (DEER;             ``num_layers``, ``layer_states``, ``join_layers``,
required)                               ``layer_inputs``, ``layer_step``, ``layer_step_vjp``,
                                        ``layer_input_vjp``, ``layers_cache``
:class:`DiagonalNewton` (quasi-DEER;    ``layer_newton_diag``
optional)
:class:`OffDiagonalVJP` (quasi-DEER's   ``off_diagonal_vjp``, ``has_off_diagonal_vjp``
adjoint in the cell's form; optional)
======================================  ==================================================

Which cell has which (``tests/test_capabilities.py`` checks this table):

=======================================  ====  ========  ======  ======  ========  ============
cell                                     core  sequence  chains  layers  diagonal  off-diagonal
=======================================  ====  ========  ======  ======  ========  ============
GRUCell (classic, implicit, matched-*)   yes   yes       yes     yes     yes       yes (*)
NewtonGRUCell (implicit-newton)          yes   yes       no      yes     no        no
DahlquistCell                            yes   no        no      yes     no        no
ODENetCell                               yes   no        yes     no      no        no
ConvODENetCell                           yes   no        no      no      no        no
=======================================  ====  ========  ======  ======  ========  ============

(*) ``has_off_diagonal_vjp()`` is false for the matched coarse cells (theta < 0).

Beyond the protocols, a cell whose :meth:`sequence_vjp` takes ``scaled=True`` (the adjoint's scale
kept in a power-of-two exponent, see :meth:`mgritnn.cells.gru.GRUCell.sequence_vjp`) says so with
the class attribute ``scaled_sequence = True`` (the GRU cells of the theta family).
"""
from abc import abstractmethod
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from ..tree import tree_map  # noqa: F401  (the one tree walker; cells and solvers import it from here)

from ..errors import ConfigError


class LayerStep(NamedTuple):
    """One step of one layer for K states (``layer_step`` of :class:`LayerNewton`): the new states
    and the step's linearization. Not a cache of its own: the result DEER iterates with, which
    ``layers_cache`` turns into the cell's cache type for :meth:`Cell.accumulate_grads`.

    Attributes
    ----------
    h_new : ndarray, shape (K, *S_l)
        The new states of the layer.
    h_gate : ndarray, shape (K, *S_l)
        The states the step was evaluated at (the old states; the new ones for a fully implicit
        step such as ``implicit-newton``).
    G, N : ndarray or None
        The cell's intermediates of the step (the GRU's gates: (K, B, 3H) and (K, B, H)).
    J : ndarray or None
        The Jacobian :math:`\\partial h' / \\partial h`, (K, B, H, H) per state and row, or its
        diagonal (K, B, H), if asked for.
    """
    h_new: np.ndarray
    h_gate: np.ndarray
    G: object
    N: object
    J: object


class Workspace:
    """Arrays kept between calls, by name: a solver that sweeps batches of one shape again and again
    reuses its trajectory, gate and cotangent arrays instead of allocating (and page-faulting)
    about 100 MB anew every training step (measured: 77 -> 70 ms per UCI-HAR-shape step).
    Whatever a call returns from a workspace is overwritten by the next call with the same names."""

    def __init__(self):
        self._arrays = {}

    def empty(self, name, shape, dtype):
        """The workspace's array called ``name`` (hashable), made anew when its shape or dtype
        differs: an uninitialized ndarray of ``shape`` and ``dtype``."""
        a = self._arrays.get(name)
        if a is None or a.shape != tuple(shape) or a.dtype != dtype:
            a = self._arrays[name] = np.empty(shape, dtype)
        return a


def work_array(ws, name, shape, dtype):
    """``np.empty(shape, dtype)``, or with a :class:`Workspace` ``ws`` its array ``name``."""
    return np.empty(shape, dtype) if ws is None else ws.empty(name, shape, dtype)


class Cell:
    """Base class of the cells: the required core of the step protocol (see the module docstring)
    and what every cell shares.

    A subclass implements :meth:`zero_grads`, :meth:`step`, :meth:`step_vjp` and
    :meth:`accumulate_grads` (declared here, abstract), overrides :meth:`project_inputs` /
    :meth:`project_inputs_vjp` when it projects its inputs, and implements exactly the capabilities
    it has (:class:`FusedSequence`, :class:`FusedChains`, :class:`LayerNewton`,
    :class:`DiagonalNewton`): this class declares none of them.

    Attributes
    ----------
    name : str
        The cell's registered name.
    """

    name = "cell"

    # -- inputs and parameter gradients (every solver) -----------------------------------------

    def project_inputs(self, w, x, ws=None):
        """The step inputs of a sequence's raw inputs, for all its steps at once (one BLAS call
        before the recurrence; the default: the identity, ``x`` itself).

        Parameters
        ----------
        w : the cell's weights
        x : ndarray, shape (T, *X0)
            Raw inputs of T steps.
        ws : Workspace, optional
            Take the result's array from it (overwritten by the next call).

        Returns
        -------
        ndarray, shape (T, *X)
            What :meth:`step` takes as the input rows of those steps.
        """
        return x

    def project_inputs_vjp(self, w, x, dxp, grads):
        """Add the parameter gradients of :meth:`project_inputs` (for the GRU: the layer-0 input
        weights, one GEMM over all steps) to ``grads`` (default: no parameters, nothing to do).

        Parameters
        ----------
        w : the cell's weights
        x : ndarray, shape (T, *X0)
            The raw inputs.
        dxp : ndarray, shape (T, *X)
            Cotangent of the projected inputs (what :meth:`step_vjp` returns as ``dx``).
        grads : the gradient NamedTuple (:meth:`zero_grads`), accumulated in place
        """

    @abstractmethod
    def zero_grads(self, w):  # pragma: no cover - interface
        """Zero parameter gradients: a NamedTuple shaped like the weights ``w`` (fresh arrays)."""
        raise NotImplementedError

    # -- one step of K states (serial stepwise, MGRIT) -----------------------------------------

    @abstractmethod
    def step(self, w, x, u, dt, out=None, cache=False):  # pragma: no cover - interface
        """Advance K states by one step: ``u_new[k] = Phi(u[k]; x[k], dt[k])``.

        Parameters
        ----------
        w : the cell's weights (a NamedTuple of arrays with a ``dtype`` property)
        x : ndarray, shape (K, *X)
            Each state's input row (projected, :meth:`project_inputs`).
        u : ndarray, shape (K, *S)
            Old states.
        dt : float or ndarray, shape (K,) or (K, B)
            Step sizes (0: the identity step).
        out : ndarray, shape (K, *S), optional
            Where to write the new states (may not alias ``u``).
        cache : bool
            Also return what :meth:`step_vjp` and :meth:`accumulate_grads` need: the cell's cache
            type (a tuple or NamedTuple of arrays, or lists of them, with leading axis K).

        Returns
        -------
        u_new : ndarray, shape (K, *S)
        cache : only if ``cache`` is true
        """
        raise NotImplementedError

    @abstractmethod
    def step_vjp(self, w, x, u, dt, lam_next, grads=None, cache=None,
                 cotangents=None):  # pragma: no cover - interface
        """VJP of :meth:`step` for K states.

        Parameters
        ----------
        w, x, u, dt : as in :meth:`step`
        lam_next : ndarray, shape (K, *S)
            Adjoint at the new states.
        grads : gradient NamedTuple (:meth:`zero_grads`), optional
            Parameter gradients to add the K steps' contributions to (those of
            :meth:`project_inputs` excepted: :meth:`project_inputs_vjp` adds them).
        cache : optional
            From ``step(..., cache=True)``; recomputed when not given.
        cotangents : list, optional
            Filled with the steps' cotangents (tuples of arrays with leading axis K) from which
            :meth:`accumulate_grads` makes the parameter gradients later. By convention
            ``cotangents[0][0]`` is the cotangent of the input x.

        Returns
        -------
        lam : ndarray, shape (K, *S)
            :math:`(\\partial \\Phi / \\partial u)^T \\lambda'`.
        dx : ndarray, shape (K, *X)
            Cotangent of x.
        """
        raise NotImplementedError

    @abstractmethod
    def accumulate_grads(self, grads, cache, cotangents):  # pragma: no cover - interface
        """Add the parameter gradients of many steps to ``grads`` (a gradient NamedTuple, in place)
        from their caches and the cotangents :meth:`step_vjp` recorded (both stacked over the
        steps, in time order)."""
        raise NotImplementedError

    def instance(self):
        """The cell a registry lookup hands out: this one (it is stateless), or a fresh copy
        for a cell that keeps state of its own."""
        return self

    def coarse_cell(self):
        """The cell MGRIT's coarse levels use with this one as the fine cell (default: itself,
        with the coarse step size)."""
        return self


#: The registry of cells by name: the modules that define cells register theirs (``gru.py``: the
#: GRU cells and MGRIT's matched coarse cells; ``newton.py``: ``"implicit-newton"``).
CELLS = {}


def get_cell(name):
    """The cell registered under ``name`` (:data:`CELLS`: 'classic', 'implicit', ...), or
    ``name`` itself if it is a :class:`Cell` (e.g. ``NewtonGRUCell(NewtonConfig(max_iter=30))``);
    otherwise a ConfigError. A cell with state of its own (the Newton cell's counters) is a new
    instance on every call, so that no two models share it (:meth:`Cell.instance`)."""
    if isinstance(name, Cell):
        return name
    try:
        return CELLS[name].instance()
    except (KeyError, TypeError):
        raise ConfigError(f"unknown cell {name!r}; choose one of {sorted(CELLS)}") from None


# -- capabilities --------------------------------------------------------------------------------
#
# What a solver may use beyond the core is a capability: a runtime-checkable protocol, tested with
# :func:`has` / :func:`missing` on the cell's class, so that a solver that needs one refuses a cell
# without it when the solver is made, naming what is missing. The methods' full documentation is
# that of the implementations (:class:`mgritnn.cells.gru.GRUCell`).


@runtime_checkable
class Core(Protocol):
    """The required core every solver uses (declared by :class:`Cell`; a subclass that leaves one
    of :class:`Cell`'s abstract methods unimplemented lacks it)."""
    def project_inputs(self, w, x, ws=None): ...
    def project_inputs_vjp(self, w, x, dxp, grads): ...
    def zero_grads(self, w): ...
    def step(self, w, x, u, dt, out=None, cache=False): ...
    def step_vjp(self, w, x, u, dt, lam_next, grads=None, cache=None, cotangents=None): ...
    def accumulate_grads(self, grads, cache, cotangents): ...
    def coarse_cell(self): ...


@runtime_checkable
class FusedSequence(Protocol):
    """Whole-sequence sweeps: the serial solver (and DEER's serial sweeps) use them instead of
    stepping through :meth:`Cell.step` one time point at a time.

    ``sequence_forward(w, x, u0, dt=1.0, keep=True, ws=None)``: the serial sweep over T steps from
    the projected inputs ``x`` (T, *X) and the initial state ``u0`` (*S); returns a cache whose
    ``hs`` lists the trajectory per layer ((T + 1, B, H) each; :meth:`LayerNewton.join_layers`
    makes a state of the layers' last points) and, with ``keep``, what ``sequence_vjp`` needs.
    ``sequence_vjp(w, seq, lam_last, grads, ws=None)``: backpropagation through time after
    ``sequence_forward(keep=True)``; adds the parameter gradients to ``grads`` (those of
    :meth:`Cell.project_inputs` excepted) and returns ``(lam0 (*S), dx (T, *X))``. A cell with
    ``scaled_sequence = True`` also takes ``scaled=True`` and then returns ``(lam0, dx, E)``, those
    and the gradients at scale 2^-E.
    """
    def sequence_forward(self, w, x, u0, dt=1.0, keep=True, ws=None): ...
    def sequence_vjp(self, w, seq, lam_last, grads, ws=None): ...


@runtime_checkable
class FusedChains(Protocol):
    """Compiled in-place chains of steps: MGRIT's relaxations, residuals and coarse solves, one
    call each, instead of :meth:`Cell.step` / :meth:`Cell.step_vjp` per position.

    ``chain_weights(w)``: the weights as ``advance`` takes them (once per solve; every cell of an
    MGRIT hierarchy takes those of the fine cell). ``chain_cache(w, x, n)``: storage for the
    linearizations of n steps, which ``advance`` fills with ``keep`` and ``advance_vjp`` reads as
    ``lin``. ``chain_cotangents(w, x, n)``: zeroed storage for the cotangents of n steps, which
    ``advance_vjp`` fills with ``keep``. ``advance(cw, x, dt, X, rd, Y, wr, starts, lens, g=None,
    keep=None, res=None)``: ``Y[wr[c] + i] = Phi_s(X[rd[c] + i]) (+ g[s + 1])`` for ``i < lens[c]``,
    ``s = starts[c] + i``, bitwise what :meth:`Cell.step` computes; residual mode with ``res``.
    ``advance_vjp(cw, dt, X, rd, Y, wr, starts, lens, ulin, lin, fidx, g=None, keep=None,
    res=None)``: the chains of step VJPs, step s linearized at ``ulin[fidx[s]]``.
    ``chain_step_cache(cache, u)`` and ``chain_step_cotangents(cot)``: the cache and the cotangents
    of n steps as :meth:`Cell.step` and :meth:`Cell.step_vjp` give them (stacked over the steps),
    for :meth:`Cell.accumulate_grads`, from the storage the chains filled (and the trajectory
    ``u`` (n + 1, *S), which the solver keeps).
    """
    def chain_weights(self, w): ...
    def chain_cache(self, w, x, n): ...
    def chain_cotangents(self, w, x, n): ...
    def advance(self, cw, x, dt, X, rd, Y, wr, starts, lens, g=None, keep=None, res=None): ...
    def advance_vjp(self, cw, dt, X, rd, Y, wr, starts, lens, ulin, lin, fidx, g=None, keep=None,
                    res=None): ...
    def chain_step_cache(self, cache, u): ...
    def chain_step_cotangents(self, cot): ...


@runtime_checkable
class LayerNewton(Protocol):
    """Layer-by-layer steps with their Jacobians: DEER and quasi-DEER solve one layer at a time,
    each with a Newton iteration over the whole sequence.

    A state is a stack of L layers; layer l > 0 takes the new state of layer l - 1 of the same step
    as its input. ``num_layers(w)``: L. ``layer_states(u)``: the L layers of states u (K, *S) as
    views (K, B, H), B rows of H unknowns each. ``join_layers(layers)``: the inverse for one time
    point, a state (*S) from the L layers (B, H). ``layer_inputs(w, l, x_l, out=None)``: the input
    rows of layer l > 0 from the new states ``x_l`` (T, B, H) of layer l - 1.
    ``layer_step(w, l, x, h, dt, jacobian=None, fused=False)``: one step of layer l for K states,
    a :class:`LayerStep` (with :math:`\\partial h'/\\partial h` per state and row if asked for,
    ``"dense"`` (K, B, H, H) or ``"diag"`` (K, B, H)). ``layer_step_vjp(w, l, lam, lin, dt,
    need_lam=True)``: its VJP at the :class:`LayerStep` ``lin``, ``(lam_old, cot)`` with ``cot`` the
    layer's entry of :meth:`Cell.step_vjp`'s cotangents. ``layer_input_vjp(w, l, cot, out=None)``:
    the VJP of ``layer_inputs``. ``layers_cache(xin, lins)``: the cache of T steps (the type
    :meth:`Cell.step` gives, stacked) from the layers' inputs (list of L, None for layer 0) and
    :class:`LayerStep` s, for :meth:`Cell.accumulate_grads`.
    """
    def num_layers(self, w): ...
    def layer_states(self, u): ...
    def join_layers(self, layers): ...
    def layer_inputs(self, w, l, x_l, out=None): ...
    def layer_step(self, w, l, x, h, dt, jacobian=None, fused=False): ...
    def layer_step_vjp(self, w, l, lam, lin, dt, need_lam=True): ...
    def layer_input_vjp(self, w, l, cot, out=None): ...
    def layers_cache(self, xin, lins): ...


@runtime_checkable
class DiagonalNewton(Protocol):
    """quasi-DEER's diagonal linearization of a layer's step in one pass:
    ``layer_newton_diag(w, l, x, h, dt, scale, J, b)`` writes ``J = scale diag(dh'/dh)`` and
    ``b = step(h) - J h``, both (K, B, H), bitwise what :meth:`LayerNewton.layer_step` with
    ``jacobian="diag", fused=True`` gives."""
    def layer_newton_diag(self, w, l, x, h, dt, scale, J, b): ...


@runtime_checkable
class OffDiagonalVJP(Protocol):
    """quasi-DEER's adjoint without dense Jacobians in the cell's own form: for layer l at the
    converged steps ``lin`` (a :class:`LayerStep` of n steps), ``off_diagonal_vjp(w, l, lin, dt,
    ws=None)`` gives an operator with ``D`` (n, B, H), the diagonal of every step's Jacobian;
    ``apply(nu, d, b)``, writing b = d + (J_t^T - D_t) nu_t for all steps at once; and
    ``cotangents(nu)``, the step cotangents ``layer_step_vjp(..., need_lam=False)`` gives.
    ``has_off_diagonal_vjp()``: whether this instance's form applies (the solver then uses the
    generic batched-VJP form otherwise; where it applies the forward need not form the
    diagonal)."""
    def off_diagonal_vjp(self, w, l, lin, dt, ws=None): ...
    def has_off_diagonal_vjp(self): ...


def _protocol_methods(capability):
    return [n for n, v in vars(capability).items() if callable(v) and not n.startswith("_")]


#: The capabilities (and the core) and the methods each consists of.
CAPABILITIES = {c: tuple(_protocol_methods(c))
                for c in (Core, FusedSequence, FusedChains, LayerNewton, DiagonalNewton,
                          OffDiagonalVJP)}


def _implemented(cls, name):
    """Whether class ``cls`` implements method ``name``: defined on it or a base, not None (a
    hidden method, :func:`without`) and not an abstract declaration (:class:`Cell`'s core)."""
    m = getattr(cls, name, None)
    return m is not None and not getattr(m, "__isabstractmethod__", False)


def missing(cell, capability):
    """The methods of ``capability`` (a key of :data:`CAPABILITIES`) that ``cell``'s class does
    not implement: absent, None, or only :class:`Cell`'s abstract declaration.

    Only the class counts (as for :func:`issubclass` with a protocol): a wrapper that forwards
    attributes through ``__getattr__`` has none of the wrapped cell's methods.

    Parameters
    ----------
    cell : Cell (or any object)
    capability : Core, FusedSequence, FusedChains, LayerNewton, DiagonalNewton or OffDiagonalVJP

    Returns
    -------
    list of str
        The names in the protocol's order; empty when ``cell`` has the capability.

    Raises
    ------
    ConfigError
        ``capability`` is not one of :data:`CAPABILITIES`.
    """
    try:
        names = CAPABILITIES[capability]
    except (KeyError, TypeError):
        raise ConfigError(f"{capability!r} is not a cell capability; choose one of "
                          f"{', '.join(c.__name__ for c in CAPABILITIES)}") from None
    cls = type(cell)
    return [n for n in names if not _implemented(cls, n)]


def has(cell, capability):
    """True when ``cell``'s class implements every method of ``capability`` (see
    :func:`missing`)."""
    return not missing(cell, capability)


def without(cell, *capabilities):
    """A copy of ``cell`` that lacks ``capabilities``: an instance of a subclass of its class on
    which their methods are None (hidden), sharing the cell's attributes. The solvers then take
    the paths of a cell without them (e.g. MGRIT through :meth:`Cell.step` instead of the compiled
    chains): for comparisons, bit for bit, of a capability against the core.

    The cell's own methods must not call the hidden ones (true of :class:`FusedSequence`,
    :class:`FusedChains` and :class:`DiagonalNewton` for every cell here; the GRU stack's
    :meth:`Cell.step` is made of its :class:`LayerNewton` steps, which cannot be hidden from it).

    Parameters
    ----------
    cell : Cell
    *capabilities : keys of :data:`CAPABILITIES` other than :class:`Core`

    Returns
    -------
    Cell
    """
    for c in capabilities:
        if c is Core or c not in CAPABILITIES:
            raise ConfigError(f"without() hides a capability (FusedSequence, FusedChains, "
                              f"LayerNewton or DiagonalNewton), not {c!r}")
    cls = type(cell)
    sub = type(f"{cls.__name__}Without{''.join(c.__name__ for c in capabilities)}", (cls,),
               {n: None for c in capabilities for n in CAPABILITIES[c]})
    twin = object.__new__(sub)
    twin.__dict__.update(vars(cell))
    return twin


class OneLayer:
    """:class:`LayerNewton`'s layer structure for a cell whose state is one layer (a mixin before
    :class:`Cell`): the state's elements are B rows of one unknown each, so that the layer's
    Jacobian per row is 1 x 1. The cell adds ``layer_step``, ``layer_step_vjp`` and
    ``layers_cache``."""

    def num_layers(self, w):
        """L = 1."""
        return 1

    def layer_states(self, u):
        """The one layer of states ``u`` (K, *S): a view (K, prod(S), 1)."""
        return [u.reshape(u.shape[0], -1, 1)]

    def join_layers(self, layers):
        """A state from its one layer (B, 1): the values as shape (B,)."""
        return layers[0].reshape(-1)

    def layer_inputs(self, w, l, x_l, out=None):
        """The input rows of a layer l > 0: there is none (a ConfigError)."""
        raise ConfigError(f"{type(self).__name__} has one layer: no layer {l} takes inputs "
                          "from a layer below")

    def layer_input_vjp(self, w, l, cot, out=None):
        """The VJP of :meth:`layer_inputs`: there is no layer l > 0 (a ConfigError)."""
        raise ConfigError(f"{type(self).__name__} has one layer: no layer {l} takes inputs "
                          "from a layer below")


def adjoint_shift(dtype):
    """The exponent s of the adjoint's scaling in backpropagation through time
    (:meth:`mgritnn.cells.gru.GRUCell.sequence_vjp` per batch row, the serial solver's stepwise
    adjoint on the whole state): an adjoint whose largest entry exceeds 2^s in magnitude is
    multiplied by 2^-s (exactly) and s is added to its exponent.

    s is half the dtype's exponent range, ``finfo.maxexp // 2``: 64 for float32 (threshold
    2^64 ~ 1.8e19), 512 for float64 (2^512 ~ 1.3e154). Above the threshold this leaves a factor
    2^s of headroom for what happens before the next check: one step's growth of the adjoint
    (the norm of a step's Jacobian, at most a few hundred for any weights a model trains with),
    the products that form the cotangents, and the parameter gradients' sums over up to T B rows.
    Below it, a rescaled adjoint keeps its largest entry above 1, 2^(2s - 2) above the smallest
    normal number (2^126 for float32), so every entry that matters (within 2^-24, float32, or
    2^-53, float64, of the largest) stays exact. One shift always brings a finite adjoint under
    the threshold (2^(2s) is the dtype's range).

    Parameters
    ----------
    dtype : numpy floating dtype

    Returns
    -------
    int
    """
    return int(np.finfo(dtype).maxexp) // 2


def scale_pow2(tree, k):
    """Multiply every array of a nest of tuples, NamedTuples and lists (None entries skipped) by
    2^k, in place (a cell's gradient NamedTuple: :func:`np.ldexp`, exact unless a result leaves
    the dtype's normal range: subnormal or zero for k < 0, inf for k > 0).

    Parameters
    ----------
    tree : nest of writable floating-point ndarrays
    k : int
        0 leaves every array untouched.
    """
    if not k or tree is None:
        return
    if isinstance(tree, (tuple, list)):
        for t in tree:
            scale_pow2(t, k)
    else:
        np.ldexp(tree, k, out=tree)
