"""SGD with (Nesterov) momentum on one flat parameter buffer, and the optimizer registry."""

import inspect
import math
from typing import NamedTuple

import numpy as np

from mgritnn.errors import ConfigError
from mgritnn.optim.adam import Adam, _check_grads, _check_params, _hyper


class SGDState(NamedTuple):
    """State of :class:`SGD`.

    Attributes
    ----------
    step : int
        Number of updates done.
    momentum_buffer : ndarray
        Momentum buffer, shape and dtype of the parameters (zeros before the first step).
    """

    step: int
    momentum_buffer: np.ndarray


class SGD:
    """Stochastic gradient descent with the exact semantics of ``torch.optim.SGD`` (dampening 0).

    Parameters
    ----------
    lr : float, default 1e-2
        Learning rate, ``lr > 0``.
    momentum : float, default 0.9
        Momentum factor in ``[0, 1)``; 0 disables momentum.
    nesterov : bool, default False
        Use Nesterov momentum (needs ``momentum > 0``).
    weight_decay : float, default 0.0
        L2 penalty added to the gradient, ``>= 0``.

    Raises
    ------
    ConfigError
        For a hyper-parameter outside its range.

    Notes
    -----
    With gradient :math:`g`, parameters :math:`p` and momentum buffer :math:`b`:

    .. math::

        g &\\leftarrow g + \\lambda p \\\\
        b &\\leftarrow g \\ \\text{(first step)}, \\quad b \\leftarrow \\mu b + g
              \\ \\text{(later steps)} \\\\
        d &= g + \\mu b \\ \\text{(Nesterov)}, \\quad d = b \\ \\text{(otherwise)} \\\\
        p &\\leftarrow p - \\eta d

    With ``momentum == 0`` the step is :math:`p \\leftarrow p - \\eta g`. All arithmetic is done
    in the dtype of the parameters.
    """

    State = SGDState

    def __init__(self, lr=1e-2, momentum=0.9, nesterov=False, weight_decay=0.0):
        self.lr = _hyper("lr", lr, 0.0, math.inf, lo_open=True)
        self.momentum = _hyper("momentum", momentum, 0.0, 1.0, lo_open=False)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ConfigError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ConfigError("nesterov=True needs momentum in (0, 1), got momentum=0")
        self.nesterov = bool(nesterov)
        self.weight_decay = _hyper("weight_decay", weight_decay, 0.0, math.inf, lo_open=False)

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay})")

    def init(self, params):
        """Return the initial state (step 0, zero momentum buffer) for ``params``.

        Parameters
        ----------
        params : ndarray, float32 or float64
            The flat parameter buffer, shape ``(n,)``.

        Returns
        -------
        SGDState
        """
        _check_params(params)
        return SGDState(0, np.zeros_like(params))

    def update(self, grads, state, params):
        """Do one SGD step: update ``params`` in place and return the new state.

        Parameters
        ----------
        grads : ndarray
            Gradient, same shape ``(n,)`` and dtype as ``params``; not modified.
        state : SGDState
            The current state; not modified (the new state has a new buffer).
        params : ndarray, float32 or float64
            The flat parameter buffer, shape ``(n,)``; updated in place.

        Returns
        -------
        SGDState
            The state after this step.

        Raises
        ------
        TypeError, ValueError
            If ``grads`` has another dtype or shape than ``params``.
        """
        _check_grads(grads, params)
        g = grads + self.weight_decay * params if self.weight_decay else grads
        buf = state.momentum_buffer
        if self.momentum:
            buf = g.copy() if state.step == 0 else self.momentum * buf + g
            d = g + self.momentum * buf if self.nesterov else buf
        else:
            d = g
        params -= self.lr * d
        return SGDState(state.step + 1, buf)


OPTIMIZERS = {"adam": Adam, "sgd": SGD}


def make_optimizer(name, **kwargs):
    """Build an optimizer by name.

    Parameters
    ----------
    name : str
        A key of :data:`OPTIMIZERS` (``"adam"`` or ``"sgd"``).
    **kwargs
        Hyper-parameters passed to the optimizer's constructor.

    Returns
    -------
    Adam or SGD

    Raises
    ------
    ConfigError
        For an unknown name, an unknown keyword, or a bad hyper-parameter value.
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    allowed = list(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for optimizer {name!r}; allowed: {allowed}")
    return cls(**kwargs)
