"""The "Peaks" classification problem: level sets of MATLAB's ``peaks`` function on a grid.

Pure functions (no data set objects; :func:`mgritnn.datasets.peaks_dataset` builds the
:class:`~mgritnn.datasets.Dataset` from them):

* :func:`peaks`, the function;
* :func:`peaks_grid`, its values on the regular ``n x n`` grid over ``[-lim, lim]^2``;
* :func:`level_set_labels`, ``num_levels`` equal-width level-set bins between the minimum and the
  maximum of the values.

With the defaults (256 x 256 grid over [-3, 3]^2, 5 levels) the labels are exactly those of the
layer-parallel paper's Peaks files (``shared/data/peaks.npz``, from GitHub
``steffi7574/LayerParallelLearning``, ``examples/peaks``): every one of its 5000 training and 200
validation points is a grid point and has this label (checked in ``tests/test_static_data.py``).

References
----------
S. Günther, L. Ruthotto, J. B. Schroder, E. C. Cyr, N. R. Gauger, "Layer-parallel training of deep
residual neural networks", SIAM J. Math. Data Sci. 2(1), 2020. E. Haber, L. Ruthotto, "Stable
architectures for deep neural networks", Inverse Problems 34, 2018.
"""

import numpy as np

__all__ = ["PEAKS_GRID", "PEAKS_LIM", "PEAKS_LEVELS", "level_set_labels", "peaks", "peaks_grid"]

#: Grid points per axis of the paper's Peaks problem (spacing ``2 * PEAKS_LIM / (PEAKS_GRID - 1)``).
PEAKS_GRID = 256
#: Half-width of the square domain ``[-PEAKS_LIM, PEAKS_LIM]^2``.
PEAKS_LIM = 3.0
#: Number of level sets (classes).
PEAKS_LEVELS = 5


def peaks(x, y):
    """MATLAB's ``peaks`` function.

    Parameters
    ----------
    x, y : array_like, broadcastable, real
        Coordinates.

    Returns
    -------
    np.ndarray, broadcast shape of x and y, float64 (a 0-d array for scalars)
        ``peaks(x, y)``.

    Notes
    -----
    .. math::

        p(x, y) = 3 (1 - x)^2 e^{-x^2 - (y + 1)^2} - 10 (x/5 - x^3 - y^5) e^{-x^2 - y^2}
                  - \\tfrac{1}{3} e^{-(x + 1)^2 - y^2}

    Global maximum ~8.1062 near (-0.0093, 1.5814), global minimum ~-6.5511 near (0.2283, -1.6255).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return (3.0 * (1.0 - x) ** 2 * np.exp(-x ** 2 - (y + 1.0) ** 2)
            - 10.0 * (x / 5.0 - x ** 3 - y ** 5) * np.exp(-x ** 2 - y ** 2)
            - np.exp(-(x + 1.0) ** 2 - y ** 2) / 3.0)


def peaks_grid(n=PEAKS_GRID, lim=PEAKS_LIM):
    """:func:`peaks` on the regular ``n x n`` grid over ``[-lim, lim]^2``.

    Parameters
    ----------
    n : int
        Points per axis, >= 2.
    lim : float
        Half-width of the square, > 0.

    Returns
    -------
    coords : np.ndarray, shape (n * n, 2), float64
        Row ``k = i * n + j`` is the point ``(x, y) = (g[j], g[i])`` with
        ``g = np.linspace(-lim, lim, n)`` (x varies fastest, as in ``np.meshgrid(g, g)``).
    values : np.ndarray, shape (n * n,), float64
        ``peaks(x, y)`` at each row of ``coords``.
    """
    g = np.linspace(-float(lim), float(lim), int(n))
    xx, yy = np.meshgrid(g, g)
    coords = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return coords, peaks(coords[:, 0], coords[:, 1])


def level_set_labels(values, num_levels=PEAKS_LEVELS, bounds=None):
    """Label values by ``num_levels`` equal-width bins between their minimum and maximum.

    Parameters
    ----------
    values : array_like, real, finite
        Function values (e.g. :func:`peaks_grid`'s).
    num_levels : int
        Number of bins (classes), >= 1.
    bounds : (float, float) or None
        ``(vmin, vmax)`` of the bins; None: ``(values.min(), values.max())``. Pass the grid's
        bounds to label points off the grid consistently.

    Returns
    -------
    np.ndarray, shape of values, int64
        ``floor(num_levels * (v - vmin) / (vmax - vmin))`` clipped to ``0 .. num_levels - 1``:
        bin ``k`` is ``vmin + k w <= v < vmin + (k + 1) w`` with ``w = (vmax - vmin) /
        num_levels``, except that the maximum itself belongs to the top bin.
    """
    v = np.asarray(values, dtype=np.float64)
    vmin, vmax = (float(v.min()), float(v.max())) if bounds is None else map(float, bounds)
    k = np.floor(num_levels * (v - vmin) / (vmax - vmin))
    return np.clip(k, 0, num_levels - 1).astype(np.int64)
