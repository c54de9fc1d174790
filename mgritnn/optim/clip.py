"""Gradient clipping by global L2 norm, as a gradient transformation."""

import math

import numpy as np

from mgritnn.optim.base import _stateless, tree_leaves, tree_map
from mgritnn.options import check_real


def check_max_norm(max_norm, name="max_norm", none=False):
    """``max_norm`` as a Python float: a clipping norm, a finite number ``> 0`` (None allowed if
    ``none``); a string, a bool or inf is a ConfigError naming ``name`` (no clipping is
    spelled None, not inf)."""
    return check_real(name, max_norm, low=0, low_open=True, none=none)


def global_norm(tree):
    """The L2 norm of all leaves of ``tree`` together, accumulated in float64.

    Parameters
    ----------
    tree : tree of ndarray, float32 or float64

    Returns
    -------
    float
        :math:`\\sqrt{\\sum_\\text{leaves} x \\cdot x}` with each dot product of the float64
        leaf (no overflow for large float32 values); for one array, ``np.linalg.norm`` of it bit
        for bit. May be ``inf`` or ``nan``.

    Raises
    ------
    TypeError
        For a leaf that is not a float32/float64 array.
    """
    sq = 0.0
    for g in tree_leaves(tree):
        if g.dtype not in (np.float32, np.float64):
            raise TypeError(f"grads must be float32 or float64 numpy arrays, got dtype {g.dtype}")
        x = g.astype(np.float64, copy=False).ravel()
        sq += x.dot(x)
    return float(np.sqrt(sq))


def clip_by_global_norm(max_norm, norm=None):
    """Scale the updates so that their global L2 norm is at most ``max_norm`` (stateless).

    Parameters
    ----------
    max_norm : float
        Largest allowed norm, a finite number ``> 0`` (for no clipping leave the transformation
        out).
    norm : callable, optional
        ``norm(updates) -> float`` in place of :func:`global_norm` (the trainer's norm of a
        gradient whose parts lie on several ranks: :meth:`mgritnn.odenet.ODENet.grad_norm`).

    Returns
    -------
    GradientTransformation

    Raises
    ------
    ConfigError
        If ``max_norm`` is not a finite number ``> 0`` (:func:`check_max_norm`).

    Notes
    -----
    As ``torch.nn.utils.clip_grad_norm_``: with :math:`\\nu` = :func:`global_norm` of the
    updates :math:`g`, if :math:`\\nu > c` then :math:`g \\leftarrow g \\cdot c / (\\nu +
    10^{-6})`, the factor a Python float (the leaves keep their dtype; new arrays, the input is
    not modified). A non-finite norm passes the updates through unchanged: the caller decides
    what to do (the trainer stops on a non-finite gradient before it gets here).
    """
    c = check_max_norm(max_norm)

    def update(updates, state, params=None):
        nu = global_norm(updates) if norm is None else norm(updates)
        if math.isfinite(nu) and nu > c:
            f = c / (nu + 1e-6)
            updates = tree_map(lambda u: u * f, updates)
        return updates, state

    return _stateless(update)
