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
    strides = level_strides(N, cfs)
    pts = []
    for m in strides:
        p = np.arange(0, N + 1, m, dtype=np.int64)
        pts.append(p if p[-1] == N else np.append(p, N))
    return pts


def level_strides(N, cfs):
    """The stride m_l = cf_1 ... cf_l of every level (m_0 = 1), checked: each level coarser than
    the one below it (a ConfigError otherwise). Arithmetic only (no array of N points)."""
    strides, m = [1], 1
    for l, cf in enumerate(cfs):
        m *= int(cf)
        if _count(0, N, N, m) >= _count(0, N, N, strides[-1]):
            raise ConfigError(f"level {l + 1} would not be coarser than level {l} (N={N}, cf={list(cfs)}):"
                              " use fewer levels or a smaller cf")
        strides.append(m)
    return strides


def _count(lo, hi, N, m):
    """Points of the level of stride ``m`` (the multiples of m, and N) in [lo, hi]."""
    n = hi // m - (lo + m - 1) // m + 1
    return n + (1 if lo <= N <= hi and N % m else 0)


def rank_bounds(N, cfs, size):
    """Fine-point blocks of the ranks: rank r owns (bounds[r], bounds[r+1]].

    Returns
    -------
    ndarray of int64, shape (size + 1,)
    """
    m = level_strides(N, cfs)[-1]
    n = -(-N // m)                  # coarsest intervals: points 0, m, 2m, ..., N
    if size > n:
        what = "time steps" if not len(cfs) else f"coarsest-level intervals ({len(cfs) + 1} levels)"
        raise ConfigError(f"{size} ranks but only {n} {what}: every rank needs at least one; "
                          "use fewer ranks or fewer levels, or longer sequences")
    return np.minimum((np.arange(size + 1, dtype=np.int64) * n) // size * m, N)


class LevelCounts(NamedTuple):
    """One rank's part of the hierarchy in counts (what the performance model needs of a
    :class:`LocalGrid`, in O(levels) arithmetic for any N; the same in both time orientations).

    Attributes
    ----------
    points : list of int
        Per level, the local points (``len(LocalGrid.points[l])``).
    f_chains : list of (int, int)
        Per level but the coarsest, the F-relaxation's chains between consecutive C-points: how
        many hold at least one F-point, and the F-points in all.
    lo, hi, N : int
        The rank's fine points (lo, hi] in forward time, and N.
    """
    points: list
    f_chains: list
    lo: int
    hi: int
    N: int


def level_counts(N, cfs, size, rank):
    """The :class:`LevelCounts` of ``rank``: local points per level, and the F-relaxation's
    chains (an interval of level l + 1 holds cf_l - 1 F-points, except the last, shorter one
    ending at N, which may hold none)."""
    strides = level_strides(N, cfs)
    b = rank_bounds(N, cfs, size)
    lo, hi = int(b[rank]), int(b[rank + 1])
    points = [_count(lo, hi, N, m) for m in strides]
    f_chains = []
    for l in range(len(strides) - 1):
        K = points[l + 1] - 1                           # C-intervals of level l here
        f = points[l] - points[l + 1]                   # F-points of level l here
        m_next = strides[l + 1]
        last = N - (N - 1) // m_next * m_next if N % m_next else 0   # the short interval's span
        empty = 1 if last and hi == N and _count(N - last + 1, N - 1, -1, strides[l]) == 0 \
            else 0
        f_chains.append((K - empty, f))
    return LevelCounts(points, f_chains, lo, hi, int(N))


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
