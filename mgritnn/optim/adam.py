"""Adam as a gradient transformation: :func:`scale_by_adam` and the :func:`adam` optimizer."""

import math
from typing import Any, NamedTuple

import numpy as np

from mgritnn.errors import ConfigError
from mgritnn.optim.base import (GradientTransformation, _check_grads, _check_params,
                                add_decayed_weights, chain, tree_map)
from mgritnn.options import check_real


def check_learning_rate(lr, name="lr"):
    """``lr`` as a Python float: a learning rate, a finite number ``> 0``.

    The one check of a learning rate, for the optimizers and ``TrainConfig``
    (:func:`mgritnn.options.check_real`: a string such as ``"0.1"``, a bool, inf or NaN is a
    ConfigError naming ``name``).
    """
    return check_real(name, lr, low=0, low_open=True)


def check_weight_decay(weight_decay, name="weight_decay"):
    """``weight_decay`` as a Python float: an L2 penalty, a finite number ``>= 0`` (else a
    ConfigError naming ``name``)."""
    return check_real(name, weight_decay, low=0)


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`.

    Attributes
    ----------
    step : int
        Number of updates done.
    m : tree of ndarray
        First-moment estimate, the structure, shapes and dtype of the parameters.
    v : tree of ndarray
        Second-moment estimate, like ``m``.
    """

    step: int
    m: Any
    v: Any


def scale_by_adam(b1=0.9, b2=0.999, eps=1e-8, *, step_size=1.0):
    """Rescale the updates by Adam's moment estimates (Kingma & Ba 2015).

    Parameters
    ----------
    b1, b2 : float, default 0.9, 0.999
        Decay rates of the first and second moment, each in ``[0, 1)``.
    eps : float, default 1e-8
        Added to the denominator, ``> 0``.
    step_size : float, default 1.0
        A finite factor folded into the bias correction of the first moment (one rounding
        instead of two): :func:`adam` passes ``-lr``, which gives ``torch.optim.Adam``'s step bit
        for bit. With 1.0 this is optax's ``scale_by_adam`` (to be followed by a learning rate).

    Returns
    -------
    GradientTransformation
        State :class:`ScaleByAdamState`.

    Raises
    ------
    ConfigError
        For a hyper-parameter outside its range.

    Notes
    -----
    With incoming updates :math:`g` and step :math:`t = 1, 2, \\dots`:

    .. math::

        m &\\leftarrow \\beta_1 m + (1 - \\beta_1) g \\\\
        v &\\leftarrow \\beta_2 v + (1 - \\beta_2) g^2 \\\\
        u &= \\frac{s}{1 - \\beta_1^t} \\frac{m}{\\sqrt{v} / \\sqrt{1 - \\beta_2^t} + \\epsilon}

    evaluated in that order in the dtype of the leaves (the scalars are Python floats). Each
    update allocates the new ``m`` and ``v`` (the old state stays valid) and computes ``u`` in the
    buffer of :math:`\\sqrt{v}`; the update checks that ``g`` has the moments' dtype and shape.

    References
    ----------
    D. P. Kingma and J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """
    b1 = check_real("beta1", b1, low=0, high=1, high_open=True)
    b2 = check_real("beta2", b2, low=0, high=1, high_open=True)
    eps = check_real("eps", eps, low=0, low_open=True)
    step_size = check_real("step_size", step_size)

    def init(params):
        _check_params(params)
        zeros = tree_map(np.zeros_like, params)
        return ScaleByAdamState(0, zeros, tree_map(np.zeros_like, params))

    def update(updates, state, params=None):
        _check_grads(updates, state.m)
        step = state.step + 1
        c2 = math.sqrt(1.0 - b2 ** step)
        c1 = step_size / (1.0 - b1 ** step)
        m = tree_map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.m)
        v = tree_map(lambda g, v: b2 * v + (1.0 - b2) * (g * g), updates, state.v)

        def direction(m, v):
            denom = np.sqrt(v)
            denom /= c2
            denom += eps
            u = np.divide(m, denom, out=denom)
            u *= c1
            return u
        return tree_map(direction, m, v), ScaleByAdamState(step, m, v)

    return GradientTransformation(init, update)


def adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """Adam as ``torch.optim.Adam``, and mgritnn 0.1's ``Adam`` bit for bit.

    Parameters
    ----------
    lr : float, default 1e-3
        Learning rate, ``> 0``.
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment, each in ``[0, 1)``.
    eps : float, default 1e-8
        Added to the denominator, ``> 0``.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient (torch ``Adam``, not ``AdamW``), ``>= 0``.

    Returns
    -------
    GradientTransformation
        ``chain(add_decayed_weights(weight_decay), scale_by_adam(*betas, eps, step_size=-lr))``;
        its state is a :class:`ScaleByAdamState`.

    Raises
    ------
    ConfigError
        For a hyper-parameter outside its range.

    Notes
    -----
    With gradient :math:`g`, parameters :math:`p` and step :math:`t`: :math:`g \\leftarrow g +
    \\lambda p`, then :func:`scale_by_adam` with :math:`s = -\\eta`; :func:`apply_updates` adds
    the result to :math:`p`. For decoupled weight decay (AdamW) chain
    ``scale_by_adam()``, ``add_decayed_weights(wd)`` and ``scale_by_learning_rate(lr)``.
    """
    lr = check_learning_rate(lr)
    weight_decay = check_weight_decay(weight_decay)
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ConfigError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    return chain(add_decayed_weights(weight_decay), scale_by_adam(b1, b2, eps, step_size=-lr))
