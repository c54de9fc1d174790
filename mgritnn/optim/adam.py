"""Adam optimizer on one flat parameter buffer, plus helpers shared by all optimizers.

The shared helpers (hyper-parameter validation, gradient checks, checkpoint conversion of the
optimizer state) live here because :mod:`mgritnn.optim.sgd` builds on this module.
"""

import math
from typing import NamedTuple

import numpy as np

from mgritnn.errors import CheckpointError, ConfigError


# ----------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------
def _hyper(name, value, lo, hi, lo_open, hi_open=True):
    """Return ``value`` as a float if it lies in the interval, else raise ConfigError."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    allowed = f"{left}{lo}, {hi}{right}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in {allowed}, got {value!r}") from None
    ok = (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)
    if isinstance(value, bool) or not ok or math.isnan(x):
        raise ConfigError(f"{name} must be a number in {allowed}, got {value!r}")
    return x


def _check_params(params):
    """Raise TypeError unless ``params`` is a float32/float64 ndarray."""
    if not isinstance(params, np.ndarray) or params.dtype not in (np.float32, np.float64):
        raise TypeError(
            "params must be a float32 or float64 numpy array, got "
            f"{type(params).__name__} with dtype {getattr(params, 'dtype', None)}"
        )


def _check_grads(grads, params):
    """Raise TypeError/ValueError unless ``grads`` matches ``params`` in dtype and shape."""
    _check_params(params)
    if not isinstance(grads, np.ndarray):
        raise TypeError(f"grads must be a numpy array, got {type(grads).__name__}")
    if grads.dtype != params.dtype:
        raise TypeError(f"grads have dtype {grads.dtype} but params have dtype {params.dtype}")
    if grads.shape != params.shape:
        raise ValueError(f"grads have shape {grads.shape} but params have shape {params.shape}")


def state_to_arrays(state):
    """Convert an optimizer state to plain arrays for a checkpoint.

    Parameters
    ----------
    state : AdamState or SGDState
        The state returned by ``init`` or ``update``.

    Returns
    -------
    dict of str to ndarray
        One entry per state field (e.g. ``"step"``, ``"m"``, ``"v"``): ``"step"`` is a 0-d int64
        array, the buffers are copies with the dtype and shape of the parameters.
    """
    return {
        name: np.array(value, dtype=np.int64) if name == "step" else np.array(value, copy=True)
        for name, value in zip(state._fields, state)
    }


def state_from_arrays(opt, arrays, params=None):
    """Rebuild the state of optimizer ``opt`` from :func:`state_to_arrays` output (bitwise).

    Parameters
    ----------
    opt : Adam or SGD
        The optimizer the state belongs to; selects the state type.
    arrays : mapping of str to ndarray
        Exactly the keys written by :func:`state_to_arrays` for this optimizer.
    params : ndarray, optional
        The parameters the state will be used with; if given, the buffers must match their shape
        and dtype.

    Returns
    -------
    AdamState or SGDState

    Raises
    ------
    CheckpointError
        (a ``ValueError``) for missing or extra keys, a bad step, or buffers with a wrong shape or
        dtype.
    """
    cls = type(opt).State
    keys, expected = set(arrays), set(cls._fields)
    if keys != expected:
        raise CheckpointError(
            f"{type(opt).__name__} state needs the keys {sorted(expected)}, got {sorted(keys)}"
        )
    step = np.asarray(arrays["step"])
    if step.shape != () or step.dtype.kind not in "iu" or step < 0:
        raise CheckpointError(f"state 'step' must be a 0-d non-negative integer, got {step!r}")
    ref = params if params is not None else np.asarray(arrays[cls._fields[1]])
    fields = {"step": int(step)}
    for name in cls._fields[1:]:
        a = np.asarray(arrays[name])
        if a.shape != ref.shape or a.dtype != ref.dtype or a.dtype not in (np.float32, np.float64):
            raise CheckpointError(
                f"state buffer {name!r} has shape {a.shape} and dtype {a.dtype}; expected "
                f"shape {ref.shape} and dtype {ref.dtype} (float32 or float64)"
            )
        fields[name] = np.array(a, copy=True)
    return cls(**fields)


# ----------------------------------------------------------------------------------------------
# Adam
# ----------------------------------------------------------------------------------------------
class AdamState(NamedTuple):
    """State of :class:`Adam`.

    Attributes
    ----------
    step : int
        Number of updates done.
    m : ndarray
        First-moment estimate, shape and dtype of the parameters.
    v : ndarray
        Second-moment estimate, shape and dtype of the parameters.
    """

    step: int
    m: np.ndarray
    v: np.ndarray


class Adam:
    """Adam optimizer (Kingma & Ba 2015) with the exact semantics of ``torch.optim.Adam``.

    Parameters
    ----------
    lr : float, default 1e-3
        Learning rate, ``lr > 0``.
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment, each in ``[0, 1)``.
    eps : float, default 1e-8
        Added to the denominator, ``eps > 0``.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient (as torch ``Adam``, not ``AdamW``), ``>= 0``.

    Raises
    ------
    ConfigError
        For a hyper-parameter outside its range.

    Notes
    -----
    With gradient :math:`g`, parameters :math:`p` and step :math:`t = 1, 2, \\dots`:

    .. math::

        g &\\leftarrow g + \\lambda p \\\\
        m &\\leftarrow \\beta_1 m + (1 - \\beta_1) g \\\\
        v &\\leftarrow \\beta_2 v + (1 - \\beta_2) g^2 \\\\
        p &\\leftarrow p - \\frac{\\eta}{1 - \\beta_1^t}
              \\frac{m}{\\sqrt{v} / \\sqrt{1 - \\beta_2^t} + \\epsilon}

    All arithmetic is done in the dtype of the parameters.

    References
    ----------
    D. P. Kingma and J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """

    State = AdamState

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr = _hyper("lr", lr, 0.0, math.inf, lo_open=True)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ConfigError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (_hyper("beta1", b1, 0.0, 1.0, False), _hyper("beta2", b2, 0.0, 1.0, False))
        self.eps = _hyper("eps", eps, 0.0, math.inf, lo_open=True)
        self.weight_decay = _hyper("weight_decay", weight_decay, 0.0, math.inf, lo_open=False)

    def __repr__(self):
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")

    def init(self, params):
        """Return the initial state (step 0, zero moments) for ``params``.

        Parameters
        ----------
        params : ndarray, float32 or float64
            The flat parameter buffer, shape ``(n,)``.

        Returns
        -------
        AdamState
        """
        _check_params(params)
        return AdamState(0, np.zeros_like(params), np.zeros_like(params))

    def update(self, grads, state, params):
        """Do one Adam step: update ``params`` in place and return the new state.

        Parameters
        ----------
        grads : ndarray
            Gradient, same shape ``(n,)`` and dtype as ``params``; not modified.
        state : AdamState
            The current state; not modified (the new state has new buffers).
        params : ndarray, float32 or float64
            The flat parameter buffer, shape ``(n,)``; updated in place.

        Returns
        -------
        AdamState
            The state after this step.

        Raises
        ------
        TypeError, ValueError
            If ``grads`` has another dtype or shape than ``params``.
        """
        _check_grads(grads, params)
        b1, b2 = self.betas
        step = state.step + 1
        g = grads + self.weight_decay * params if self.weight_decay else grads
        m = b1 * state.m + (1.0 - b1) * g
        v = b2 * state.v + (1.0 - b2) * (g * g)
        denom = np.sqrt(v)
        denom /= math.sqrt(1.0 - b2 ** step)
        denom += self.eps
        upd = np.divide(m, denom, out=denom)
        upd *= self.lr / (1.0 - b1 ** step)
        params -= upd
        return AdamState(step, m, v)
