"""Time grids of the MGRIT hierarchy and their split over ranks (pure functions, no MPI).

Level 0 holds the points 0..N. Level l holds the multiples of m_l = cf_1 ... cf_l and the last point
N, so its steps span m_l fine steps, except a last, shorter one when m_l does not divide N. Keeping
N on every level makes the grid of the adjoint (reversed time) the mirror image of the forward grid.

Rank blocks are unions of whole coarsest-level intervals, so every interval of every level lies on
one rank: a rank owns the fine points (lo, hi] and needs only the value at lo (a C-point on every
level) from its left neighbour. This needs at least as many coarsest intervals as ranks.
"""
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError


def level_points(N, cfs):
    """Points of every level, as fine indices.

    Parameters
    ----------
    N : int
        Number of fine steps (points 0..N).
    cfs : sequence of int
        Coarsening factor between level l and l+1, for every level but the coarsest.

    Returns
    -------
    list of ndarray of int64, one per level, increasing, each starting with 0 and ending with N
    """
    pts = [np.arange(N + 1, dtype=np.int64)]
    m = 1
    for l, cf in enumerate(cfs):
        m *= int(cf)
        p = np.arange(0, N + 1, m, dtype=np.int64)
        if p[-1] != N:
            p = np.append(p, N)
        if len(p) >= len(pts[-1]):
            raise ConfigError(f"level {l + 1} would not be coarser than level {l} (N={N}, cf={list(cfs)}):"
                              " use fewer levels or a smaller cf")
        pts.append(p)
    return pts


def rank_bounds(N, cfs, size):
    """Fine-point blocks of the ranks: rank r owns (bounds[r], bounds[r+1]].

    Returns
    -------
    ndarray of int64, shape (size + 1,)
    """
    coarsest = level_points(N, cfs)[-1]
    n = len(coarsest) - 1
    if size > n:
        what = "time steps" if not len(cfs) else f"coarsest-level intervals ({len(cfs) + 1} levels)"
        raise ConfigError(f"{size} ranks but only {n} {what}: every rank needs at least one; "
                          "use fewer ranks or fewer levels, or longer sequences")
    return coarsest[(np.arange(size + 1) * n) // size]


class LocalGrid(NamedTuple):
    """One rank's part of the hierarchy, in the solve's time orientation.

    Attributes
    ----------
    points : list of ndarray of int64
        Per level, the fine indices (solve orientation) of the local points, local index 0 being the
        point ``lo`` owned by the left neighbour (or the initial point on the first rank).
    is_c : list of ndarray of bool
        Per level but the coarsest, which local points are C-points (on the next level).
    c_index : list of ndarray of int64
        Per level but the coarsest, local indices of the C-points (local point k of level l+1 is
        local point c_index[l][k] of level l).
    left, right : int or None
        Neighbour ranks in the solve's orientation.
    lo, hi : int
        The rank owns fine points (lo, hi] in the solve's orientation.
    N : int
    """
    points: list
    is_c: list
    c_index: list
    left: object
    right: object
    lo: int
    hi: int
    N: int


def local_grid(N, cfs, size, rank, reverse=False):
    """The :class:`LocalGrid` of ``rank`` (forward time, or reversed time for the adjoint).

    In reversed time the fine index n' stands for the forward point N - n', and the ranks' order is
    reversed: the rank owning forward points (lo, hi] owns reversed points (N - hi, N - lo] ... but
    computes the adjoint at forward points [lo, hi), which are exactly its reversed points.
    """
    b = rank_bounds(N, cfs, size)
    pts = level_points(N, cfs)
    if reverse:
        pts = [N - p[::-1] for p in pts]
        lo, hi = N - b[rank + 1], N - b[rank]
        left = rank + 1 if rank + 1 < size else None
        right = rank - 1 if rank > 0 else None
    else:
        lo, hi = b[rank], b[rank + 1]
        left = rank - 1 if rank > 0 else None
        right = rank + 1 if rank + 1 < size else None
    local = [p[(p >= lo) & (p <= hi)] for p in pts]
    is_c, c_index = [], []
    for l in range(len(pts) - 1):
        c = np.isin(local[l], local[l + 1])
        is_c.append(c)
        c_index.append(np.flatnonzero(c))
    return LocalGrid(local, is_c, c_index, left, right, int(lo), int(hi), int(N))
