"""DEER, quasi-DEER and their parallel scan under MPI: P = 2, 3, 4 ranks give the one-process
results, and the serial ones when converged.

One launch of ``tests/mpi/mgrit_case.py`` per P solves all :data:`CASES` (the script checks that
every rank holds bitwise the same loss, gradient, logits, histories, iteration counts and statuses);
one launch of ``tests/mpi/scan_case.py`` per (P, chunks) solves random dense and diagonal linear
recurrences forward and in reverse. Each launch has a timeout; a failed check on any rank ends
all ranks together (see the scripts).

What must hold: the scan equals the sequential recurrence to 1e-12 for every P and chunk count;
DEER converged to atol 1e-12 gives the serial loss and gradient to 1e-9 on any number of ranks;
iteration counts equal the one-process ones (the scan only rounds differently); a divergent
problem is reported and the pipelined serial fallback gives the serial loss bit for bit.
"""
import numpy as np
import pytest

import reference as ref
from mpi_util import (Case, find_mpiexec, launch_cases, load_mpi_script, run_mpi, scan_systems,
                       solve, warm_numba_cache)

MPIEXEC = find_mpiexec()
pytestmark = pytest.mark.skipif(
    MPIEXEC is None, reason="no mpiexec next to sys.executable nor on PATH: install the 'mpich' "
                            "wheel (a dependency of mgritnn) to run the MPI tests")

TIMEOUT = 240.0
NPROCS = (2, 3, 4)

CASES = [Case(solver=s, cell=cell, layers=layers, T=37, fwd=60, tol=1e-12)
         for s in ("deer", "quasi-deer") for cell in ("classic", "implicit") for layers in (1, 2)]
#: Variable-length batches (issue 14): padded steps are identity steps, their Jacobian I.
CASES += [Case(solver=s, cell="classic", layers=2, T=37, fwd=60, tol=1e-12, batch=4,
               lengths=pad) for s, pad in (("deer", "end"), ("quasi-deer", "front"))]
#: Weights 16x: Newton diverges (checked on one process too); reported, and the serial sweep runs
#: instead (pipelined over the ranks).
DIVERGENT = Case(solver="deer", cell="classic", layers=1, T=100, fwd=100, tol=1e-6, scale=16.0)
ALL = CASES + [DIVERGENT]
#: ``solver="auto"`` on several time ranks: the performance model picks DEER or quasi-DEER on
#: rank 0 and every rank follows (issue 13).
AUTO = [Case(solver="auto", cell=cell, layers=layers, T=37)
        for cell, layers in (("classic", 1), ("implicit", 2))]


@pytest.fixture(scope="module")
def numba_cache_warm():
    warm_numba_cache()


@pytest.fixture(scope="module")
def reference(numba_cache_warm):
    """One-process results: ``{name: (deer, serial)}``."""
    return {c.name: (solve(c), solve(c, "serial")) for c in ALL}


@pytest.fixture(scope="module", params=NPROCS, ids=[f"P{p}" for p in NPROCS])
def mpi_results(request, numba_cache_warm, tmp_path_factory):
    P = request.param
    out = tmp_path_factory.mktemp(f"deer{P}") / "results.npz"
    return P, launch_cases(P, ALL, out, timeout=TIMEOUT)


@pytest.mark.parametrize("P", NPROCS, ids=[f"P{p}" for p in NPROCS])
def test_scan_on_p_ranks_equals_sequential(numba_cache_warm, tmp_path, P):
    """Dense and diagonal, forward and reverse, 1 and 3 chunks per rank (one launch per P)."""
    out = tmp_path / "scan.npz"
    run_mpi(P, "scan_case.py", out, 1, 3, timeout=TIMEOUT, check=True)
    with np.load(out) as z:
        for chunks in (1, 3):
            for kind, (A, b, h0) in scan_systems().items():
                for direction in ("forward", "reverse"):
                    got = z[f"{kind}_{direction}_c{chunks}"]
                    want = ref.linear_recurrence(A, b, h0, reverse=direction == "reverse")
                    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max(),
                                               err_msg=f"{kind} {direction} chunks={chunks}")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_p_ranks_equal_serial_and_one_rank(mpi_results, reference, case):
    P, results = mpi_results
    got, (one, ser) = results[case.name], reference[case.name]
    assert got["step_evals"].shape == (P, 2) and np.all(got["step_evals"] > 0)
    assert got["fwd_status"] == 0 == one["fwd_status"] and not got["fwd_fallback"]
    assert got["fwd_iters"] == one["fwd_iters"]
    np.testing.assert_allclose(got["loss"], ser["loss"], rtol=1e-9)
    np.testing.assert_allclose(got["logits"], ser["logits"], rtol=0,
                               atol=1e-9 * np.abs(ser["logits"]).max())
    np.testing.assert_array_equal(got["logits_fwd"], got["logits"])
    np.testing.assert_allclose(got["grad"], ser["grad"], rtol=0, atol=1e-9 * np.abs(ser["grad"]).max())
    np.testing.assert_allclose(got["grad"], one["grad"], rtol=0, atol=1e-10 * np.abs(one["grad"]).max())


def test_divergence_on_p_ranks_falls_back_to_serial(mpi_results, reference):
    _, results = mpi_results
    got, (one, ser) = results[DIVERGENT.name], reference[DIVERGENT.name]
    assert got["fwd_status"] == 2 == one["fwd_status"] and got["fwd_fallback"] == 1
    assert got["loss"] == ser["loss"]
    np.testing.assert_array_equal(got["logits"], ser["logits"])
    np.testing.assert_allclose(got["grad"], ser["grad"], rtol=0, atol=1e-9 * np.abs(ser["grad"]).max())


@pytest.mark.parametrize("P", NPROCS, ids=[f"P{p}" for p in NPROCS])
def test_auto_on_p_ranks_follows_one_choice_and_gives_the_serial_result(numba_cache_warm, reference,
                                                                        tmp_path, P):
    """auto with the time axis split: rank 0's prediction decides for all ranks (the script checks
    that every rank has bitwise the same loss, gradient, iteration counts), and the result is the
    serial one to DEER's default float64 tolerance. The model calibrates (tiny) into a fresh cache."""
    out = tmp_path / "auto.npz"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MGRITNN_CACHE", str(tmp_path / "cache"))
        run_mpi(P, "mgrit_case.py", out, *[c.to_arg() for c in AUTO], timeout=TIMEOUT, check=True)
    assert (tmp_path / "cache").is_dir(), "the model's calibration was not cached"
    with np.load(out) as z:
        for i, case in enumerate(AUTO):
            got = {k[len(f"c{i}_"):]: z[k] for k in z.files if k.startswith(f"c{i}_")}
            ser = solve(case, "serial")
            assert got["step_evals"].shape == (P, 2) and np.all(got["step_evals"] > 0)
            assert got["fwd_status"] == 0 and not got["fwd_fallback"]
            np.testing.assert_allclose(got["loss"], ser["loss"], rtol=1e-7)
            np.testing.assert_allclose(got["grad"], ser["grad"], rtol=0,
                                       atol=1e-6 * np.abs(ser["grad"]).max())


# -- ELK and quasi-ELK (DEERConfig(trust_region=True)): tests/mpi/elk_case.py ----------------------

def _elk_case():
    """The module ``tests/mpi/elk_case.py`` (its cases and one-process solve)."""
    return load_mpi_script("elk_case")


@pytest.fixture(scope="module")
def elk_reference(numba_cache_warm):
    """One-process ELK results and the serial ones: ``{name: (elk, serial)}``."""
    CASES, solve_case = _elk_case().CASES, _elk_case().solve_case
    return {name: (solve_case(case, quasi), solve(case, "serial")) for name, case, quasi in CASES}


@pytest.mark.parametrize("P", NPROCS, ids=[f"P{p}" for p in NPROCS])
def test_elk_on_p_ranks_equals_one_rank_and_serial(elk_reference, tmp_path, P):
    """The Levenberg-Marquardt step on P ranks (1 and 2 partitions per rank) is the dense
    normal equations' solution to 1e-12; ELK and quasi-ELK converged on P ranks (the script checks
    that every rank holds bitwise the same results) give the one-process iteration counts and the
    serial loss and gradient to 1e-9."""
    from test_elk import naive_lm_step
    step_systems = _elk_case().step_systems
    out = tmp_path / "elk.npz"
    run_mpi(P, "elk_case.py", out, timeout=TIMEOUT, check=True)
    with np.load(out) as z:
        for chunks in (1, 2):
            for kind, (J, res) in step_systems().items():
                want = naive_lm_step(J, res, 0.3)
                np.testing.assert_allclose(z[f"step_{kind}_c{chunks}"], want, rtol=0,
                                           atol=1e-12 * np.abs(want).max(),
                                           err_msg=f"{kind} chunks={chunks}")
        for name, (one, ser) in elk_reference.items():
            assert z[f"{name}_status"] == 0 == one["status"], name
            assert z[f"{name}_iters"] == one["iters"], name
            np.testing.assert_allclose(z[f"{name}_loss"], ser["loss"], rtol=1e-9, err_msg=name)
            np.testing.assert_allclose(z[f"{name}_grad"], ser["grad"], rtol=0,
                                       atol=1e-9 * np.abs(ser["grad"]).max(), err_msg=name)
            np.testing.assert_allclose(z[f"{name}_logits"], one["logits"], rtol=0,
                                       atol=1e-10 * np.abs(one["logits"]).max(), err_msg=name)
