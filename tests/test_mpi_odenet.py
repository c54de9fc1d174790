"""The ODENet trained layer-parallel by MGRIT under MPI: P = 2, 3, 4 ranks (each owning a block of
layers) give the one-process results, and the serial backpropagation's when converged.

One launch of ``tests/mpi/mgrit_case.py`` per P solves all :data:`CASES` (``odenet:`` cases of
``mpi_util.ODECase``), with one numba thread per rank and a timeout; the script checks that every
rank holds bitwise the same loss, gradient, logits, residual histories, iteration counts and
statuses as rank 0 (a failed check on any rank ends all ranks together), and that every rank did
work. The references are computed in the pytest process (``comm=None``: one process).

What must hold: the opening's gradient (from the adjoint at point 0, on rank 0), the layers'
(each rank its own rows) and the classifier's and regularization's (last rank) add up, after the
allreduce, to the one-process gradient (rtol 1e-12: only the order of additions differs) with the
same residual histories and iteration counts; the loss and logits are bitwise the one-process ones;
tight solves equal serial backpropagation (1e-9).
"""
import numpy as np
import pytest

from mpi_util import ODECase, find_mpiexec, launch_cases, solve, tight

pytestmark = pytest.mark.skipif(
    find_mpiexec() is None, reason="no mpiexec next to sys.executable nor on PATH: install the "
                                   "'mpich' wheel (a dependency of mgritnn) to run the MPI tests")

TIMEOUT = 180.0
NPROCS = (2, 3, 4)

#: Uneven depths; on 4 ranks N=50 / cf 4 leaves one coarsest interval per rank.
_BASE = [ODECase(act="tanh", opening="dense", N=37, levels=3, cf=2),
         ODECase(act="smoothrelu", opening="copy", N=50, levels=3, cf=4),
         ODECase(act="relu", opening="dense", N=40, levels=2, cf=4, relax="F", fwd=3, bwd=2)]
CASES = [c for base in _BASE for c in (base, tight(base))]


@pytest.fixture(scope="module")
def reference():
    """One-process results: ``{name: (mgrit, serial)}``."""
    return {c.name: (solve(c), solve(c, "serial")) for c in CASES}


@pytest.fixture(scope="module", params=NPROCS, ids=[f"P{p}" for p in NPROCS])
def mpi_results(request, tmp_path_factory):
    P = request.param
    out = tmp_path_factory.mktemp(f"odenet{P}") / "results.npz"
    return P, launch_cases(P, CASES, out, timeout=TIMEOUT)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_p_ranks_equal_one_rank(mpi_results, reference, case):
    P, results = mpi_results
    got, (one, _) = results[case.name], reference[case.name]
    assert got["step_evals"].shape == (P, 2) and np.all(got["step_evals"] > 0)
    for key in ("fwd_iters", "adj_iters", "fwd_status", "adj_status"):
        assert got[key] == one[key], key
    # the trajectory is bitwise independent of the split (each layer's step is the same
    # batched product on every rank) and the head runs on one rank
    assert got["loss"] == one["loss"]
    np.testing.assert_array_equal(got["logits"], one["logits"])
    np.testing.assert_array_equal(got["logits_fwd"], got["logits"])
    np.testing.assert_allclose(got["grad"], one["grad"], rtol=0,
                               atol=1e-12 * np.abs(one["grad"]).max())
    for key in ("fwd_hist", "adj_hist"):
        np.testing.assert_allclose(got[key], one[key], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("case", [c for c in CASES if c.tol < 1e-12],
                         ids=[c.name for c in CASES if c.tol < 1e-12])
def test_p_ranks_tight_equal_serial_backprop(mpi_results, reference, case):
    _, results = mpi_results
    got, (_, ser) = results[case.name], reference[case.name]
    assert got["fwd_status"] == 0 and got["adj_status"] == 0
    np.testing.assert_allclose(got["loss"], ser["loss"], rtol=1e-12)
    np.testing.assert_allclose(got["grad"], ser["grad"], rtol=0,
                               atol=1e-9 * np.abs(ser["grad"]).max())


def test_cases_are_inexact_at_paper_iterations(reference):
    """The paper-like cases do not converge (so that the rank comparison above covers a
    non-trivial iterate, not only the solution)."""
    for c in CASES:
        if c.tol >= 1e-12:
            one, ser = reference[c.name]
            assert one["fwd_status"] == 1 and abs(one["loss"] - ser["loss"]) > 1e-12, c.name
