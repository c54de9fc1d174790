"""The step protocol: what every time solver asks of a cell (a one-step propagator).

A cell advances K independent states by one step each, every state with its own input row and its
own step size, and gives the vector-Jacobian product (VJP) of that step. The serial sweep, MGRIT
(forward and adjoint) and DEER need nothing else, so any time-stepper that implements this class
runs on every solver: the GRU cells (:mod:`mgritnn.cells.gru`), the fully implicit GRU
(:mod:`mgritnn.cells.newton`) and the scalar test equation (:mod:`mgritnn.cells.dahlquist`).

Shapes: a state of one time point has any shape S (the GRU stack: (L, B, H)); K states are
(K, *S). A step's input rows x are (K, *X); its step sizes dt (K,). Caches and cotangents are
tuples or lists whose arrays all have K as their first axis, so that solvers can gather, scatter
and store them for many steps without knowing what they hold.
"""


class Cell:
    """Base class and documentation of the step protocol (see the module docstring).

    Attributes
    ----------
    name : str
        The cell's registered name.
    fused_stack : bool
        The cell also implements the compiled in-place chains ``advance`` / ``advance_vjp`` of the
        GRU stack kernels (MGRIT then uses them instead of :meth:`step` / :meth:`step_vjp`).
    """

    name = "cell"
    fused_stack = False

    def step(self, w, x, u, dt, out=None, cache=False):  # pragma: no cover - interface
        """Advance K states by one step: ``u_new[k] = Phi(u[k]; x[k], dt[k])``.

        Parameters
        ----------
        w : the cell's weights (a NamedTuple of arrays with a ``dtype`` property)
        x : ndarray, shape (K, *X)
            Each state's input row.
        u : ndarray, shape (K, *S)
            Old states.
        dt : float or ndarray, shape (K,)
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
        grads : dict, optional
            Parameter gradients to add the K steps' contributions to.
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
        """Add the parameter gradients of many steps to ``grads`` from their caches and the
        cotangents :meth:`step_vjp` recorded (both stacked over the steps, in time order)."""
        raise NotImplementedError

    def instance(self):
        """The cell a registry lookup hands out: this one (it is stateless), or a fresh copy
        for a cell that keeps state of its own."""
        return self

    def coarse_cell(self):
        """The cell MGRIT's coarse levels use with this one as the fine cell (default: itself,
        with the coarse step size)."""
        return self


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
