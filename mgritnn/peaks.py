"""The "Peaks" classification problem: level sets of MATLAB's ``peaks`` function on a grid.

Pure functions (no data set objects; :func:`mgritnn.datasets.peaks_dataset` builds the
:class:`~mgritnn.datasets.Dataset` from them):

* :func:`peaks`, the function;
* :func:`peaks_grid`, its values on the regular ``n x n`` grid over ``[-lim, lim]^2``;
* :func:`level_set_labels`, ``num_levels`` equal-width level-set bins between the minimum and the
  maximum of the values;
* :func:`matlab_draw`, the paper's choice of points: per class, uniform draws with replacement by
  MATLAB's default random generator.

With the defaults (256 x 256 grid over [-3, 3]^2, 5 levels) these reproduce the layer-parallel
paper's Peaks files (``shared/data/peaks.npz``, from GitHub ``steffi7574/LayerParallelLearning``,
``examples/peaks``) exactly: the same 5000 training and 200 validation points in the same order,
with the same labels (checked in ``tests/test_static_data.py``). How the files were made is not
documented; it was deduced from them: the rule of Meganet's ``setupPeaks(np, nc)`` (Haber &
Ruthotto; MATLAB) with the generator in its default state (``rng('default')`` or a fresh session)
for each split reproduces all 5200 points, and the text files hold them with 15 significant
digits.

References
----------
S. Günther, L. Ruthotto, J. B. Schroder, E. C. Cyr, N. R. Gauger, "Layer-parallel training of deep
residual neural networks", SIAM J. Math. Data Sci. 2(1), 2020. E. Haber, L. Ruthotto, "Stable
architectures for deep neural networks", Inverse Problems 34, 2018.
"""

import numpy as np

__all__ = ["MATLAB_DEFAULT_SEED", "PEAKS_GRID", "PEAKS_LIM", "PEAKS_LEVELS", "column_major",
           "level_set_labels", "matlab_draw", "peaks", "peaks_grid"]

#: Grid points per axis of the paper's Peaks problem (spacing ``2 * PEAKS_LIM / (PEAKS_GRID - 1)``).
PEAKS_GRID = 256
#: Half-width of the square domain ``[-PEAKS_LIM, PEAKS_LIM]^2``.
PEAKS_LIM = 3.0
#: Number of level sets (classes).
PEAKS_LEVELS = 5
#: MATLAB's ``rng('default')`` is the Mersenne Twister MT19937 seeded by ``init_genrand(5489)``,
#: which is ``np.random.RandomState(5489)``; its ``rand`` is ``random_sample`` (53-bit doubles).
MATLAB_DEFAULT_SEED = 5489


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
            - (1.0 / 3.0) * np.exp(-(x + 1.0) ** 2 - y ** 2))


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
        Row ``k = i * n + j`` is the point ``(x, y) = (g[j], g[i])`` (x varies fastest, as in
        ``np.meshgrid(g, g)``), with MATLAB's ``linspace``: ``g[i] = -lim + (i * 2 lim) / (n - 1)``
        (a few values differ from ``np.linspace``'s in the last bit).
    values : np.ndarray, shape (n * n,), float64
        ``peaks(x, y)`` at each row of ``coords``.
    """
    lim, n = float(lim), int(n)
    g = -lim + np.arange(n) * (2.0 * lim) / (n - 1)
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
        Bin ``k`` is ``e_k < v <= e_{k+1}`` with the edges ``e_k = vmin + k h``, ``h = (vmax -
        vmin) / num_levels`` (computed so, as Meganet's ``setupPeaks`` does); values at or below
        ``e_1`` (the minimum too) are in bin 0, values above ``e_{num_levels - 1}`` (the maximum
        too) in the top bin.
    """
    v = np.asarray(values, dtype=np.float64)
    vmin, vmax = (float(v.min()), float(v.max())) if bounds is None else map(float, bounds)
    h = (vmax - vmin) / num_levels
    edges = vmin + np.arange(1, int(num_levels)) * h
    return np.searchsorted(edges, v, side="left").astype(np.int64)


def column_major(n=PEAKS_GRID):
    """The rows of :func:`peaks_grid` in MATLAB's (column-major) order of its ``n x n`` matrices.

    Returns
    -------
    np.ndarray, shape (n * n,), int64
        Element ``l = i + j n`` (MATLAB's linear index ``l + 1`` of matrix element ``(i, j)``, x
        ``g[j]`` and y ``g[i]``) is the row ``i n + j``.
    """
    return np.arange(int(n) * int(n)).reshape(int(n), int(n)).T.ravel()


def matlab_draw(labels, per_class, num_levels=PEAKS_LEVELS, n=PEAKS_GRID,
                seed=MATLAB_DEFAULT_SEED):
    """Draw ``per_class`` points of each class as Meganet's ``setupPeaks`` does in MATLAB.

    For ``k = 0 .. num_levels - 1`` in turn: the grid points of class ``k`` in MATLAB's
    column-major order (:func:`column_major`), of which ``per_class`` are drawn uniformly *with
    replacement* by ``randi(count, per_class, 1)`` = ``ceil(count * rand)`` from one generator.

    Parameters
    ----------
    labels : np.ndarray, shape (n * n,), integer
        Class of each row of :func:`peaks_grid` (:func:`level_set_labels`).
    per_class : int
        Points per class, >= 1.
    num_levels : int
        Number of classes.
    n : int
        Grid points per axis.
    seed : int
        Seed of ``np.random.RandomState``; the default is MATLAB's ``rng('default')``.

    Returns
    -------
    np.ndarray, shape (num_levels * per_class,), int64
        Rows of :func:`peaks_grid`, class by class, in the order drawn (a row may repeat).
    """
    order = column_major(n)
    rng = np.random.RandomState(seed)
    rows = []
    for k in range(int(num_levels)):
        members = order[np.asarray(labels)[order] == k]
        u = rng.random_sample(int(per_class))
        rows.append(members[np.maximum(np.ceil(u * members.size).astype(np.int64), 1) - 1])
    return np.concatenate(rows)
