"""How good is an approximate gradient? Measured against the exact one of the same batch.

MGRIT with a cycle cap, DEER with an iteration cap, or any solve stopped on a tolerance gives an
approximate trajectory and adjoint, so an approximate gradient g~ of the loss. Training needs a
descent direction whose error is small against the minibatch noise: the inexact-gradient test
|g~ - g| <= theta |g| (theta < 1 keeps g~ a descent direction; its cosine with g is then at least
sqrt(1 - theta^2); ``docs/gradient-quality.md``). This module measures it: the exact gradient of
the same batch at the same parameters comes from the serial sweep (on several time ranks: the
serial sweep pipelined over them, MGRIT with one level, which is exact), and the comparison gives
the cosine, the relative error and the loss error.

:func:`compare` compares two gradients; :func:`check_gradient` computes both for a batch;
:func:`exact_solver` is the reference solver for a given solver's ranks. The trainer calls them
(``TrainConfig.gradient_check``).
"""
from typing import NamedTuple

import numpy as np

from .errors import DataError
from .solvers import MGRITConfig, make_solver


class GradientError(NamedTuple):
    """An approximate gradient against the exact one.

    Attributes
    ----------
    cosine : float
        cos(g~, g) in [-1, 1] (1: the same direction; NaN if either is zero or not finite).
    rel_error : float
        |g~ - g| / |g| (2-norms; inf if g = 0 and g~ != 0).
    loss_error : float
        |loss~ - loss| / max(|loss|, tiny): the relative error of the loss the approximate
        forward solve gave (NaN when the losses were not given).
    """
    cosine: float
    rel_error: float
    loss_error: float

    def ok(self, target):
        """The cosine reaches ``target`` (a NaN cosine never does)."""
        return bool(self.cosine >= target)


def compare(grad, exact, loss=None, exact_loss=None):
    """The :class:`GradientError` of ``grad`` against ``exact``, in float64.

    Parameters
    ----------
    grad, exact : array_like, the same shape
        The approximate and the exact gradient (flat or any shape).
    loss, exact_loss : float, optional
        Their losses.

    Returns
    -------
    GradientError

    Raises
    ------
    DataError
        If the shapes differ.
    """
    g = np.asarray(grad, np.float64).ravel()
    e = np.asarray(exact, np.float64).ravel()
    if g.shape != e.shape:
        raise DataError(f"gradients of different sizes ({g.size} and {e.size}) cannot be compared")
    ng, ne = np.linalg.norm(g), np.linalg.norm(e)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cosine = float(np.dot(g, e) / (ng * ne)) if ng > 0 and ne > 0 else float("nan")
        diff = np.linalg.norm(g - e)
        rel = float(diff / ne) if ne > 0 else (0.0 if diff == 0 else float("inf"))
    if loss is None or exact_loss is None:
        lerr = float("nan")
    else:
        lerr = abs(float(loss) - float(exact_loss)) / max(abs(float(exact_loss)), 1e-300)
    return GradientError(float(np.clip(cosine, -1.0, 1.0)) if np.isfinite(cosine) else cosine,
                         rel, lerr)


def exact_solver(solver):
    """The solver that gives the exact gradient on ``solver``'s time ranks: the serial sweep on
    one rank, the serial sweep pipelined over the ranks (MGRIT with one level) on several.

    Parameters
    ----------
    solver : Solver

    Returns
    -------
    Solver
    """
    comm = getattr(solver, "comm", None)
    if comm is None or comm.Get_size() == 1:
        return make_solver("serial")
    return make_solver(MGRITConfig(levels=1), comm)


def check_gradient(model, X, y, solver, exact=None, keys=None, lengths=None, pad="end"):
    """The gradient of a batch by ``solver`` and by the exact sweep, compared.

    Parameters
    ----------
    model : GRUClassifier or ODENet
    X, y : the batch (as :meth:`GRUClassifier.loss_and_grad_flat` takes them)
    solver : str, solver config or Solver
        The approximate route (a solver instance keeps its warm starts).
    exact : Solver, optional
        The reference (default: :func:`exact_solver` of ``solver``).
    keys, lengths, pad
        As :meth:`GRUClassifier.loss_and_grad_flat` takes them.

    Returns
    -------
    error : GradientError
    approx : tuple (loss, grad, info)
        What ``solver`` gave (``strict=False``: a failed solve is measured, not raised).
    reference : tuple (loss, grad, info)
        What the exact sweep gave.
    """
    solver = make_solver(solver)
    exact = exact_solver(solver) if exact is None else exact
    kw = {} if lengths is None else dict(lengths=lengths, pad=pad)
    approx = model.loss_and_grad_flat(X, y, solver, keys=keys, strict=False, **kw)
    reference = model.loss_and_grad_flat(X, y, exact, **kw)
    return compare(approx[1], reference[1], approx[0], reference[0]), approx, reference
