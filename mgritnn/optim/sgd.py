"""SGD with (Nesterov) momentum as a gradient transformation, and the optimizer registry."""

import inspect
from typing import Any, NamedTuple

import numpy as np

from mgritnn.errors import ConfigError
from mgritnn.optim.adam import adam, check_learning_rate, check_weight_decay
from mgritnn.optim.base import (GradientTransformation, _check_grads, _check_params,
                                add_decayed_weights, chain, scale_by_learning_rate, tree_map)
from mgritnn.options import check_bool, check_real


def check_momentum(momentum, name="momentum"):
    """``momentum`` as a Python float: a momentum factor, a finite number in ``[0, 1)`` (else a
    ConfigError naming ``name``)."""
    return check_real(name, momentum, low=0, high=1, high_open=True)


class TraceState(NamedTuple):
    """State of :func:`trace`.

    Attributes
    ----------
    step : int
        Number of updates done.
    momentum_buffer : tree of ndarray
        Momentum buffer, the structure, shapes and dtype of the parameters (zeros before the
        first step).
    """

    step: int
    momentum_buffer: Any


def trace(decay=0.9, nesterov=False):
    """Heavy-ball (or Nesterov) momentum, as ``torch.optim.SGD`` with dampening 0.

    Parameters
    ----------
    decay : float, default 0.9
        Momentum factor in ``[0, 1)``; 0 passes the updates through (the state still counts).
    nesterov : bool, default False
        Nesterov momentum (needs ``decay > 0``).

    Returns
    -------
    GradientTransformation
        State :class:`TraceState`.

    Raises
    ------
    ConfigError
        For a bad ``decay`` or ``nesterov``.

    Notes
    -----
    With incoming updates :math:`g` and buffer :math:`b`:

    .. math::

        b &\\leftarrow g \\ \\text{(first step)}, \\quad b \\leftarrow \\mu b + g
              \\ \\text{(later steps)} \\\\
        u &= g + \\mu b \\ \\text{(Nesterov)}, \\quad u = b \\ \\text{(otherwise)}

    in the dtype of the leaves. Each update allocates the new buffer (the old state stays
    valid); without Nesterov the updates *are* that buffer, so they must not be modified in place.
    """
    mu = check_momentum(decay)
    nesterov = check_bool("nesterov", nesterov)
    if nesterov and mu == 0.0:
        raise ConfigError("nesterov=True needs momentum in (0, 1), got momentum=0")

    def init(params):
        _check_params(params)
        return TraceState(0, tree_map(np.zeros_like, params))

    def update(updates, state, params=None):
        _check_grads(updates, state.momentum_buffer)
        buf = state.momentum_buffer
        if not mu:
            return updates, TraceState(state.step + 1, buf)
        if state.step == 0:
            buf = tree_map(np.copy, updates)
        else:
            buf = tree_map(lambda b, g: mu * b + g, buf, updates)
        if nesterov:
            updates = tree_map(lambda g, b: g + mu * b, updates, buf)
        else:
            updates = buf
        return updates, TraceState(state.step + 1, buf)

    return GradientTransformation(init, update)


def sgd(lr=1e-2, momentum=0.9, nesterov=False, weight_decay=0.0):
    """SGD as ``torch.optim.SGD`` (dampening 0), and mgritnn 0.1's ``SGD`` bit for bit.

    Parameters
    ----------
    lr : float, default 1e-2
        Learning rate, ``> 0``.
    momentum : float, default 0.9
        Momentum factor in ``[0, 1)``; 0 disables momentum.
    nesterov : bool, default False
        Use Nesterov momentum (needs ``momentum > 0``).
    weight_decay : float, default 0.0
        L2 penalty added to the gradient, ``>= 0``.

    Returns
    -------
    GradientTransformation
        ``chain(add_decayed_weights(weight_decay), trace(momentum, nesterov),
        scale_by_learning_rate(lr))``; its state is a :class:`TraceState`.

    Raises
    ------
    ConfigError
        For a hyper-parameter outside its range.

    Notes
    -----
    :math:`g \\leftarrow g + \\lambda p`, then :func:`trace` gives the direction :math:`d`, and
    :func:`apply_updates` adds :math:`-\\eta d` to :math:`p`.
    """
    lr, weight_decay = check_learning_rate(lr), check_weight_decay(weight_decay)
    return chain(add_decayed_weights(weight_decay), trace(momentum, nesterov),
                 scale_by_learning_rate(lr))


#: The optimizers by name (``TrainConfig.optimizer``, ``--optimizer``).
OPTIMIZERS = {"adam": adam, "sgd": sgd}


def make_optimizer(name, **kwargs):
    """Build an optimizer by name.

    Parameters
    ----------
    name : str
        A key of :data:`OPTIMIZERS` (``"adam"`` or ``"sgd"``).
    **kwargs
        Hyper-parameters of the constructor (:func:`adam`, :func:`sgd`).

    Returns
    -------
    GradientTransformation
        A chain (see the constructor).

    Raises
    ------
    ConfigError
        For an unknown name, an unknown keyword, or a bad hyper-parameter value.
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    make = OPTIMIZERS[name]
    allowed = list(inspect.signature(make).parameters)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for optimizer {name!r}; allowed: {allowed}")
    return make(**kwargs)
