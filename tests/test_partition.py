"""The time grids in arithmetic (:func:`level_strides`, :func:`rank_bounds`, :func:`level_counts`)
against slow, obviously right twins that list every point: the planner can then count the grids
of any number of steps (10^12) in O(levels)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgritnn.distributed import level_counts, level_points, local_grid, rank_bounds
from mgritnn.errors import ConfigError


def twin_points(N, cfs):
    """Every level's points, listed: level l holds the multiples of cf_1...cf_l and N."""
    pts, m = [list(range(N + 1))], 1
    for l, cf in enumerate(cfs):
        m *= cf
        p = sorted(set(range(0, N + 1, m)) | {N})
        if len(p) >= len(pts[-1]):
            raise ConfigError("not coarser")
        pts.append(p)
    return pts


def twin_bounds(N, cfs, size):
    coarsest = twin_points(N, cfs)[-1]
    n = len(coarsest) - 1
    if size > n:
        raise ConfigError("too many ranks")
    return [coarsest[(r * n) // size] for r in range(size + 1)]


grids = st.tuples(st.integers(1, 3000), st.lists(st.integers(2, 9), max_size=3),
                  st.integers(1, 6), st.booleans())


@settings(max_examples=300, deadline=None)
@given(grids)
def test_the_arithmetic_grids_equal_the_listed_ones(case):
    N, cfs, size, reverse = case
    try:
        pts, bounds = twin_points(N, cfs), twin_bounds(N, cfs, size)
    except ConfigError:
        with pytest.raises(ConfigError):
            rank_bounds(N, cfs, size)
        return
    assert [list(p) for p in level_points(N, cfs)] == pts
    assert list(rank_bounds(N, cfs, size)) == bounds
    for rank in range(size):
        grid = local_grid(N, cfs, size, rank, reverse=reverse)
        counts = level_counts(N, cfs, size, rank)
        assert counts.points == [len(p) for p in grid.points]
        for l, c in enumerate(grid.c_index):        # the F-relaxation's chains, as MGRIT has them
            lens = np.diff(c) - 1
            assert counts.f_chains[l] == (int(np.sum(lens > 0)), int(lens.sum()))
        assert (counts.lo, counts.hi) == (bounds[rank], bounds[rank + 1])


def test_a_trillion_steps_are_counted_without_listing_them():
    N, cfs = 10 ** 12, [4, 4]
    b = rank_bounds(N, cfs, 1024)
    assert b[0] == 0 and b[-1] == N and np.all(b[1:-1] % 16 == 0)
    c = level_counts(N, cfs, 1024, 1023)
    assert c.points[0] == N - b[-2] + 1 and c.f_chains[0][1] == c.points[0] - c.points[1]
