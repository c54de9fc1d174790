"""Gradient clipping by global L2 norm, in place on the flat gradient buffer."""

import math

import numpy as np

from mgritnn.errors import ConfigError


def clip_by_global_norm(grads, max_norm):
    """Scale ``grads`` in place so that their L2 norm is at most ``max_norm``.

    Parameters
    ----------
    grads : ndarray, float32 or float64
        The flat gradient buffer, shape ``(n,)``; modified in place.
    max_norm : float
        Largest allowed norm, ``> 0`` (``inf`` never clips).

    Returns
    -------
    float
        The L2 norm of ``grads`` before clipping (may be ``inf`` or ``nan``).

    Raises
    ------
    ConfigError
        If ``max_norm`` is not ``> 0``.
    TypeError
        If ``grads`` is not a float32/float64 array.

    Notes
    -----
    As ``torch.nn.utils.clip_grad_norm_``: with :math:`\\nu = \\lVert g \\rVert_2`, if
    :math:`\\nu > c` then :math:`g \\leftarrow g \\cdot c / (\\nu + 10^{-6})`. The norm is
    accumulated in float64 (no overflow for large float32 gradients); the scaling is done in the
    dtype of ``grads``. A non-finite norm leaves ``grads`` unchanged: the caller decides what to do
    (e.g. skip the step).
    """
    try:
        c = float(max_norm)
    except (TypeError, ValueError):
        raise ConfigError(f"max_norm must be a number > 0, got {max_norm!r}") from None
    if not c > 0:
        raise ConfigError(f"max_norm must be a number > 0, got {max_norm!r}")
    if not isinstance(grads, np.ndarray) or grads.dtype not in (np.float32, np.float64):
        raise TypeError(
            "grads must be a float32 or float64 numpy array, got "
            f"{type(grads).__name__} with dtype {getattr(grads, 'dtype', None)}"
        )
    norm = float(np.linalg.norm(grads.astype(np.float64, copy=False).ravel()))
    if math.isfinite(norm) and norm > c:
        grads *= c / (norm + 1e-6)
    return norm
