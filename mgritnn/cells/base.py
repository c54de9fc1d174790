"""The step protocol: what every time solver asks of a cell (a one-step propagator).

A cell advances K independent states by one step each, every state with its own input row and its
own step size, and gives the vector-Jacobian product (VJP) of that step. The serial sweep, MGRIT
(forward and adjoint), DEER and the auto solver use nothing else, so any time-stepper that
implements this class runs on them: the GRU cells (:mod:`mgritnn.cells.gru`), the fully implicit
GRU (:mod:`mgritnn.cells.newton`), the scalar test equation (:mod:`mgritnn.cells.dahlquist`) and
the residual layer of an ODENet (:mod:`mgritnn.cells.odenet`, whose step inputs are the layers'
weights).

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
solvers can gather, scatter and store them for many steps without knowing what they hold.
Parameter gradients are a NamedTuple shaped like the weights (:meth:`Cell.zero_grads`), its arrays
accumulated in place (a model passes views into its flat gradient buffer).

The operations, and who needs them:

=====================================  ===================================================
every solver                           :meth:`~Cell.project_inputs`, :meth:`~Cell.project_inputs_vjp`,
                                       :meth:`~Cell.zero_grads`
serial (stepwise), MGRIT               :meth:`~Cell.step`, :meth:`~Cell.step_vjp`,
                                       :meth:`~Cell.accumulate_grads`, :meth:`~Cell.coarse_cell`
serial, optional (``fused_sequence``)  :meth:`~Cell.sequence_forward`, :meth:`~Cell.sequence_vjp`
MGRIT, optional (``fused_stack``)      :meth:`~Cell.chain_weights`, :meth:`~Cell.chain_cache`,
                                       :meth:`~Cell.chain_cotangents`, :meth:`~Cell.advance`,
                                       :meth:`~Cell.advance_vjp`, :meth:`~Cell.chain_step_cache`,
                                       :meth:`~Cell.chain_step_cotangents`
DEER (layer by layer)                  :meth:`~Cell.num_layers`, :meth:`~Cell.layer_states`,
                                       :meth:`~Cell.join_layers`, :meth:`~Cell.layer_inputs`,
                                       :meth:`~Cell.layer_step`, :meth:`~Cell.layer_step_vjp`,
                                       :meth:`~Cell.layer_input_vjp`, :meth:`~Cell.layers_cache`;
                                       optional (``fused_stack``) :meth:`~Cell.layer_newton_diag`
=====================================  ===================================================
"""
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np


class LayerStep(NamedTuple):
    """One step of one layer for K states (see :meth:`Cell.layer_step`): the new states and the
    step's linearization.

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
    """Base class and documentation of the step protocol (see the module docstring).

    Attributes
    ----------
    name : str
        The cell's registered name.
    fused_sequence : bool
        The cell implements the whole-sequence sweeps :meth:`sequence_forward` and
        :meth:`sequence_vjp` (the serial solver then uses them instead of stepping through
        :meth:`step` one time point at a time).
    fused_stack : bool
        The cell implements the compiled in-place chains (:meth:`advance`, :meth:`advance_vjp` and
        their storage, :meth:`chain_weights` ...; MGRIT then uses them instead of :meth:`step` /
        :meth:`step_vjp`) and quasi-DEER's one-pass linearization :meth:`layer_newton_diag`.
    scaled_sequence : bool
        :meth:`sequence_vjp` takes ``scaled=True`` and then returns the adjoint at a power-of-two
        scale of its own, ``(lam0, dx, E)`` (the true results are 2^E times those returned; see
        :meth:`mgritnn.cells.gru.GRUCell.sequence_vjp`): exploding gradients keep their direction
        beyond the dtype's range.
    """

    name = "cell"
    fused_sequence = False
    fused_stack = False
    scaled_sequence = False

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

    def zero_grads(self, w):  # pragma: no cover - interface
        """Zero parameter gradients: a NamedTuple shaped like the weights ``w`` (fresh arrays)."""
        raise NotImplementedError

    # -- one step of K states (serial stepwise, MGRIT) -----------------------------------------

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
            Also return what :meth:`step_vjp` and :meth:`accumulate_grads` need (a tuple or list
            of arrays with leading axis K, or None entries).

        Returns
        -------
        u_new : ndarray, shape (K, *S)
        cache : only if ``cache`` is true
        """
        raise NotImplementedError

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

    # -- whole sequences (serial solver; optional, ``fused_sequence``) -------------------------

    def sequence_forward(self, w, x, u0, dt=1.0, keep=True, ws=None):  # pragma: no cover
        """Serial sweep over a whole sequence of T steps from the projected inputs ``x`` (T, *X)
        and the initial state ``u0`` (*S). Returns a cache whose ``hs`` lists the trajectory
        (per layer for a layered cell) and, with ``keep``, what :meth:`sequence_vjp` needs."""
        raise NotImplementedError

    def sequence_vjp(self, w, seq, lam_last, grads, ws=None):  # pragma: no cover - interface
        """Backpropagation through time after ``sequence_forward(keep=True)``: adds the parameter
        gradients to ``grads`` (those of :meth:`project_inputs` excepted) and returns
        ``(lam0 (*S), dx (T, *X))``, the adjoint at the initial state and the cotangent of the
        projected inputs. A cell with ``scaled_sequence`` also takes ``scaled=True`` and then
        returns ``(lam0, dx, E)``, those and the gradients in ``grads`` at scale 2^-E."""
        raise NotImplementedError

    # -- compiled chains (MGRIT; optional, ``fused_stack``) ------------------------------------

    def chain_weights(self, w):  # pragma: no cover - interface
        """The weights as :meth:`advance` and :meth:`advance_vjp` take them (made once per solve;
        every fused cell of an MGRIT hierarchy takes those of the fine cell)."""
        raise NotImplementedError

    def chain_cache(self, w, x, n):  # pragma: no cover - interface
        """Storage for the linearizations of n steps with input rows like ``x`` (n', *X): what
        :meth:`advance` fills with ``keep`` and :meth:`advance_vjp` reads as ``lin``."""
        raise NotImplementedError

    def chain_cotangents(self, w, x, n):  # pragma: no cover - interface
        """Zeroed storage for the cotangents of n steps with input rows like ``x``: what
        :meth:`advance_vjp` fills with ``keep``."""
        raise NotImplementedError

    def advance(self, cw, x, dt, X, rd, Y, wr, starts, lens, g=None, keep=None,
                res=None):  # pragma: no cover - interface
        """Chains of steps in place, one compiled call: ``Y[wr[c] + i] = Phi_s(X[rd[c] + i])
        (+ g[s + 1])`` for ``i < lens[c]``, step ``s = starts[c] + i`` with input row ``x[s]`` and
        step size ``dt[s]``; ``keep`` (:meth:`chain_cache`) receives the linearization of step s at
        index s; residual mode (``res`` (C, *S)): the last step of chain c is compared instead of
        stored, ``res[c] = Phi_s(..) (+ g[s + 1]) - Y[wr[c] + lens[c] - 1]``. Bitwise what
        :meth:`step` computes for each state."""
        raise NotImplementedError

    def advance_vjp(self, cw, dt, X, rd, Y, wr, starts, lens, ulin, lin, fidx, g=None, keep=None,
                    res=None):  # pragma: no cover - interface
        """Chains of step VJPs in place: ``Y[wr[c] + i] = (dPhi_s/du)^T X[rd[c] + i] (+ g[s + 1])``,
        step s linearized at the state ``ulin[fidx[s]]`` with the linearization ``lin`` (from
        :meth:`advance` with ``keep``) at index ``fidx[s]``; ``keep`` (:meth:`chain_cotangents`)
        receives the cotangents of step s at index ``fidx[s]``; ``res`` as in :meth:`advance`."""
        raise NotImplementedError

    def chain_step_cache(self, cache, u):  # pragma: no cover - interface
        """The cache of n steps (as ``step(cache=True)`` gives it, stacked over the steps) from
        the :meth:`chain_cache` that :meth:`advance` filled and the trajectory ``u`` (n + 1, *S)."""
        raise NotImplementedError

    def chain_step_cotangents(self, cot):  # pragma: no cover - interface
        """The cotangents of n steps (as :meth:`step_vjp` records them, stacked over the steps)
        from the :meth:`chain_cotangents` that :meth:`advance_vjp` filled."""
        raise NotImplementedError

    # -- layer by layer (DEER) -----------------------------------------------------------------
    #
    # A state is a stack of L layers; layer l > 0 takes the new state of layer l - 1 of the same
    # step as its input. DEER solves layer after layer, each with a Newton iteration over the whole
    # sequence, so it needs one layer's step with its Jacobian and the VJP of that step.

    def num_layers(self, w):
        """L, the number of layers of a state (default 1)."""
        return 1

    def layer_states(self, u):
        """The L layers of states ``u`` (K, *S) as views, each (K, B, H): a batch of B rows of H
        unknowns, whose Jacobian :meth:`layer_step` gives per row. Default (one layer): the state's
        elements as rows of one unknown, (K, prod(S), 1)."""
        return [u.reshape(u.shape[0], -1, 1)]

    def join_layers(self, layers):
        """The inverse of :meth:`layer_states` for one time point: states (*S) from the L layer
        states (B, H) (default: the one layer's B x 1 values as a state of shape (B,))."""
        return layers[0].reshape(-1)

    def layer_inputs(self, w, l, x_l, out=None):  # pragma: no cover - interface
        """Input rows of layer l > 0 from the new states ``x_l`` (T, B, H) of layer l - 1 (for
        the GRU: the affine map ``W_x x + b_x``, one BLAS call)."""
        raise NotImplementedError

    def layer_step(self, w, l, x, h, dt, jacobian=None, fused=False):  # pragma: no cover
        """One step of layer l for K states, and optionally its Jacobian (the linearization DEER
        iterates with).

        Parameters
        ----------
        w : the cell's weights
        l : int
        x : ndarray, shape (K, *X_l)
            The layer's input rows (layer 0: the projected inputs; above: :meth:`layer_inputs`).
        h : ndarray, shape (K, B, H), C-contiguous
            Old states of the layer.
        dt : ndarray, shape (K,) or (K, B)
        jacobian : {None, "dense", "diag"}
            Also give :math:`\\partial h' / \\partial h` per state and row: (K, B, H, H), or its
            diagonal (K, B, H).
        fused : bool
            Evaluate many states in one product (faster; rounding may depend on K).

        Returns
        -------
        LayerStep
        """
        raise NotImplementedError

    def layer_step_vjp(self, w, l, lam, lin, dt, need_lam=True):  # pragma: no cover
        """VJP of :meth:`layer_step` at its linearization ``lin`` (a :class:`LayerStep`) for the
        adjoint ``lam`` (K, B, H) of the new states. Returns ``(lam_old, cot)``: the adjoint of the
        old states (K, B, H) (None without ``need_lam``) and the layer's entry of
        :meth:`step_vjp`'s cotangents (``cot[0]`` the cotangent of the layer's input rows)."""
        raise NotImplementedError

    def layer_input_vjp(self, w, l, cot, out=None):  # pragma: no cover - interface
        """VJP of :meth:`layer_inputs`: the cotangent (T, B, H) of the new states of layer l - 1
        from the cotangents ``cot`` of layer l (from :meth:`layer_step_vjp`)."""
        raise NotImplementedError

    def layers_cache(self, xin, lins):  # pragma: no cover - interface
        """The cache of T steps (as ``step(cache=True)`` gives it, stacked) from their layers'
        inputs ``xin`` (list of L; None for layer 0) and linearizations ``lins`` (list of L
        :class:`LayerStep`), for :meth:`accumulate_grads`."""
        raise NotImplementedError

    def layer_newton_diag(self, w, l, x, h, dt, scale, J, b):  # pragma: no cover - interface
        """quasi-DEER's linearization in one pass (optional, ``fused_stack``): ``J = scale
        diag(dh'/dh)`` and ``b = step(h) - J h``, both (K, B, H), bitwise what :meth:`layer_step`
        with ``jacobian="diag", fused=True`` gives."""
        raise NotImplementedError


# -- capabilities --------------------------------------------------------------------------------
#
# The core every solver needs is :class:`Cell`'s ``project_inputs``, ``project_inputs_vjp``,
# ``zero_grads``, ``step``, ``step_vjp`` and ``accumulate_grads``. What a solver may use beyond it
# is a capability: a runtime-checkable protocol, tested with :func:`has` / :func:`missing`, so that
# a solver that needs one refuses a cell without it when it is made, naming what is missing.


@runtime_checkable
class FusedSequence(Protocol):
    """Whole-sequence sweeps (the serial solver uses them instead of :meth:`Cell.step`)."""
    def sequence_forward(self, w, x, u0, dt=1.0, keep=True, ws=None): ...
    def sequence_vjp(self, w, seq, lam_last, grads, ws=None): ...


@runtime_checkable
class FusedChains(Protocol):
    """Compiled in-place chains of steps (MGRIT's relaxation and coarse solves)."""
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
    """Layer-by-layer steps with their Jacobians (DEER and quasi-DEER solve one layer at a time)."""
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
    """quasi-DEER's diagonal linearization of a layer's step in one pass."""
    def layer_newton_diag(self, w, l, x, h, dt, scale, J, b): ...


#: The capabilities and the legacy class flag that used to announce each (a cell that sets the
#: flag to False lacks the capability even if it inherits the methods).
CAPABILITIES = {FusedSequence: "fused_sequence", FusedChains: "fused_stack",
                LayerNewton: None, DiagonalNewton: "fused_stack"}


def _protocol_methods(capability):
    return [n for n, v in vars(capability).items() if callable(v) and not n.startswith("_")]


def missing(cell, capability):
    """The methods of ``capability`` (one of :data:`CAPABILITIES`) that ``cell`` does not
    implement: absent, or only declared by :class:`Cell` (a stub that raises).

    Returns
    -------
    list of str
        Empty when ``cell`` has the capability.
    """
    flag = CAPABILITIES[capability]
    names = _protocol_methods(capability)
    if flag is not None and getattr(cell, flag, True) is False:
        return names
    return [n for n in names
            if getattr(type(cell), n, None) is None or getattr(type(cell), n) is getattr(Cell, n, 0)]


def has(cell, capability):
    """True when ``cell`` implements every method of ``capability`` (see :func:`missing`)."""
    return not missing(cell, capability)


def tree_map(fn, tree, *others):
    """``fn`` applied leaf by leaf to the arrays of a nest of tuples, NamedTuples and lists (None
    entries kept), with the same leaves of ``others``; the result has the nest's structure.

    Solvers use it to gather, scatter and stack caches and cotangents of any cell.
    """
    if tree is None:
        return None
    if isinstance(tree, (tuple, list)):
        parts = [tree_map(fn, t, *(o[i] for o in others)) for i, t in enumerate(tree)]
        return type(tree)(*parts) if hasattr(tree, "_fields") else type(tree)(parts)
    return fn(tree, *others)


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
