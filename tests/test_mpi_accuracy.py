"""MGRIT's accuracy control under MPI (P = 2, 3, 4 ranks): the adaptive cycle counts, stalls and
fallbacks are decided from allreduced residuals, so every rank decides the same (the script checks
iterations, statuses and fallbacks bitwise across ranks) and as one process does; a solve that
falls back is the serial sweep pipelined over the ranks, the serial gradient to round-off.

One launch of ``tests/mpi/mgrit_case.py`` per P, with a timeout; a failed check on any rank ends
all ranks together.
"""
import numpy as np
import pytest

from mpi_util import Case, find_mpiexec, launch_cases, solve, warm_numba_cache

MPIEXEC = find_mpiexec()
pytestmark = pytest.mark.skipif(
    MPIEXEC is None, reason="no mpiexec next to sys.executable nor on PATH: install the 'mpich' "
                            "wheel (a dependency of mgritnn) to run the MPI tests")

TIMEOUT = 240.0
NPROCS = (2, 3, 4)

#: Converging on the train preset's tolerance (adaptive cycle counts), and a tolerance out of
#: reach in one cycle (both solves fall back to the pipelined serial sweep).
CONVERGING = [Case(preset="train", cell=cell, layers=layers, T=41, fwd=30, bwd=30, tol=1e-7)
              for cell, layers in (("classic", 1), ("implicit", 2))]
CONVERGING += [Case(preset="train", cell="classic", layers=1, T=41, fwd=30, bwd=30, tol=1e-7,
                    batch=4, lengths="end")]
FALLBACK = [Case(preset="train", cell=cell, layers=2, T=41, fwd=1, bwd=1, tol=1e-15)
            for cell in ("classic", "implicit")]
ALL = CONVERGING + FALLBACK


@pytest.fixture(scope="module")
def reference():
    """One-process results: ``{name: (train preset, serial)}``."""
    warm_numba_cache()
    return {c.name: (solve(c), solve(c, "serial")) for c in ALL}


@pytest.fixture(scope="module", params=NPROCS, ids=[f"P{p}" for p in NPROCS])
def mpi_results(request, reference, tmp_path_factory):
    P = request.param
    out = tmp_path_factory.mktemp(f"accuracy{P}") / "results.npz"
    return P, launch_cases(P, ALL, out, timeout=TIMEOUT)


@pytest.mark.parametrize("case", CONVERGING, ids=lambda c: c.name)
def test_adaptive_cycles_decide_as_one_process(mpi_results, reference, case):
    """The cycle counts that met the tolerance are the one-process ones; the result is the
    one-process result to round-off and the serial one to the tolerance."""
    P, results = mpi_results
    got = results[case.name]
    one, ser = reference[case.name]
    for key in ("fwd_iters", "adj_iters", "fwd_status", "adj_status", "fwd_fallback",
                "adj_fallback"):
        assert got[key] == one[key], f"P={P}: {key} {got[key]} vs one process {one[key]}"
    assert got["fwd_status"] == 0 and got["adj_status"] == 0 and not got["fwd_fallback"]
    np.testing.assert_allclose(got["grad"], one["grad"], rtol=0,
                               atol=1e-10 * np.abs(one["grad"]).max())
    np.testing.assert_allclose(got["grad"], ser["grad"], rtol=0,
                               atol=1e-4 * np.abs(ser["grad"]).max())


@pytest.mark.parametrize("case", FALLBACK, ids=lambda c: c.name)
def test_fallback_on_p_ranks_is_the_serial_gradient(mpi_results, reference, case):
    P, results = mpi_results
    got = results[case.name]
    _, ser = reference[case.name]
    assert got["fwd_fallback"] == 1 and got["adj_fallback"] == 1
    assert got["loss"] == ser["loss"]               # the pipelined sweep: the same steps
    np.testing.assert_array_equal(got["logits"], ser["logits"])
    np.testing.assert_allclose(got["grad"], ser["grad"], rtol=1e-12,
                               atol=1e-13 * np.abs(ser["grad"]).max())
