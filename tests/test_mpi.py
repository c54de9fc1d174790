"""MGRIT under MPI: P ranks give the one-rank results, errors end every rank, nothing hangs.

Each launch runs ``mpiexec -n P python -m mpi4py <script>`` (``mpi_util.run_mpi``) with one numba
thread per rank and a timeout. To keep the number of launches small, one launch of
``tests/mpi/mgrit_case.py`` per P solves all :data:`CASES` and writes them into one .npz; the
references are computed in the pytest process itself, where ``comm=None`` means a single process.

What must hold for P = 2, 3, 4 (every rank owns at least one coarsest-level interval):

* the loss and the logits are bitwise the one-rank ones (the trajectory kernels are bitwise
  independent of the partition, and the head runs on one rank);
* the residual histories and the gradient equal the one-rank ones to round-off (rtol 1e-12): they
  are sums over ranks, so only the order of additions differs;
* with tight iterations (tol 1e-13, up to 50 cycles) the results equal the serial solver's
  (gradient rtol 1e-10);
* the script itself checks that every rank holds bitwise the same loss, gradient, logits and
  histories as rank 0, and that every rank did work.

The error paths: an exception on one rank in the middle of a solve ends all ranks promptly with
the exception in the output; a configuration with more ranks than coarsest intervals makes every
rank report the ConfigError and exit non-zero.
"""
import os
import re
import time

import numpy as np
import pytest

from mpi_util import Case, find_mpiexec, run_mpi, solve, tight, warm_numba_cache

MPIEXEC = find_mpiexec()

pytestmark = pytest.mark.skipif(
    MPIEXEC is None, reason="no mpiexec next to sys.executable nor on PATH: install the 'mpich' "
                            "wheel (a dependency of mgritnn) to run the MPI tests")

#: Seconds one launch may take before it is killed (the launches here take a few seconds).
TIMEOUT = 240.0

#: Time grids: uneven T, three levels; on 4 ranks T=50/cf 4 leaves exactly one coarsest interval
#: (16 fine steps, the last one 2) per rank, T=37/cf 2 gives 10 coarsest intervals.
_BASE = [Case(cell=cell, layers=layers, T=T, levels=3, cf=cf, fwd=2, bwd=1, tol=1e-9)
         for cell in ("classic", "implicit") for layers in (1, 2) for T, cf in ((37, 2), (50, 4))]
#: Other paths of the engine: two levels (the coarsest solve on level 1), F-cycles with
#: F-relaxation, coarse inputs averaged over each coarse step, and the fast preset's iterations
#: (F-relaxation, one cycle each way) on one batch row (the compiled small products).
_EXTRA = [Case(cell="classic", layers=1, T=37, levels=2, cf=3, fwd=3, bwd=2),
          Case(cell="implicit", layers=2, T=50, levels=3, cf=4, fwd=3, bwd=2, cycle="F", relax="F"),
          Case(cell="classic", layers=2, T=37, levels=3, cf=2, fwd=3, bwd=2, coarse_input="mean"),
          Case(cell="implicit", layers=2, T=50, levels=3, cf=4, fwd=1, bwd=1, relax="F", batch=1)]
#: Variable-length batches (issue 14): mixed true lengths, padded at the end or the front, so
#: that coarse steps cross the ends of sequences (their step sizes sum only the real fine steps);
#: the second with two rows, whose chains advance in lockstep (the compiled small products).
_LENGTHS = [Case(cell="classic", layers=2, T=37, levels=3, cf=2, fwd=2, bwd=1, batch=4,
                 lengths="end"),
            Case(cell="implicit", layers=1, T=50, levels=3, cf=4, fwd=3, bwd=2, batch=2,
                 lengths="front")]
#: Paper-like iterations (fwd 2 / bwd 1 and the like) and tight ones, for every case.
CASES = [c for base in _BASE + _EXTRA + _LENGTHS for c in (base, tight(base))]
CASE_IDS = [c.name for c in CASES]

BITWISE_CASES = [pytest.param(c, id=c.name) for c in CASES]
NPROCS = (2, 3, 4)


def _is_tight(case):
    return case.tol < 1e-12


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def numba_cache_warm():
    """Compile (or load) the float64 kernels once in this process, so that the ranks of every
    launch load them from numba's on-disk cache instead of all compiling them at once."""
    warm_numba_cache()


@pytest.fixture(scope="module")
def reference(numba_cache_warm):
    """One-process results of every case: ``{name: (mgrit, serial or None)}``; serial for the
    tight cases only."""
    return {c.name: (solve(c), solve(c, "serial") if _is_tight(c) else None) for c in CASES}


@pytest.fixture(scope="module", params=NPROCS, ids=[f"P{p}" for p in NPROCS])
def mpi_results(request, numba_cache_warm, tmp_path_factory):
    """Results of all cases on P ranks, from one launch: ``(P, {name: dict of arrays})``."""
    P = request.param
    out = tmp_path_factory.mktemp(f"mpi{P}") / "results.npz"
    res = run_mpi(P, "mgrit_case.py", out, *[c.to_arg() for c in CASES], timeout=TIMEOUT,
                  check=True)
    assert out.is_file(), "mgrit_case.py exited 0 but wrote no results\n" + res.describe()
    with np.load(out) as z:
        data = {k: z[k] for k in z.files}
    results = {}
    for i, c in enumerate(CASES):
        prefix = f"c{i}_"
        results[c.name] = {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}
    return P, results


# ------------------------------------------------------------------------------------------------
# The launcher itself
# ------------------------------------------------------------------------------------------------

def test_mpiexec_runs_more_ranks_than_cores(tmp_path):
    """mpiexec starts 4 ranks (more than this machine's cores, no extra flags) with one numba
    thread each and the test helpers importable."""
    script = tmp_path / "hello.py"
    script.write_text(
        "import os\nfrom mpi4py import MPI\nimport mpi_util\nc = MPI.COMM_WORLD\n"
        "print(f'hello {c.Get_rank()} {c.Get_size()} {os.environ[\"NUMBA_NUM_THREADS\"]}', flush=True)\n")
    res = run_mpi(4, script, timeout=60, check=True)
    found = sorted(re.findall(r"hello (\d+) (\d+) (\d+)", res.stdout))
    assert found == [(str(r), "4", "1") for r in range(4)], res.describe()


def test_run_mpi_kills_a_hanging_launch(tmp_path):
    """A launch that deadlocks is killed at its timeout, with every rank gone, and the test that
    launched it fails with the output so far."""
    script = tmp_path / "hang.py"
    script.write_text(
        "import os, sys, time\nfrom mpi4py import MPI\nc = MPI.COMM_WORLD\n"
        f"open(os.path.join({str(tmp_path)!r}, f'pid{{c.Get_rank()}}'), 'w').write(str(os.getpid()))\n"
        "print(f'rank {c.Get_rank()} waiting', flush=True)\n"
        "if c.Get_rank() == 0:\n    c.recv(source=1)\nelse:\n    time.sleep(1000)\n")
    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not finish within") as err:
        run_mpi(2, script, timeout=4)
    assert time.monotonic() - t0 < 30
    assert "rank 0 waiting" in str(err.value)
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in range(2)]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), f"ranks {pids} survived the timeout"


def _alive(pid):
    """True if ``pid`` runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


# ------------------------------------------------------------------------------------------------
# P ranks == one rank
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", BITWISE_CASES)
def test_p_ranks_equal_one_rank(mpi_results, reference, case):
    """Loss and logits bitwise, residual histories and gradient to rtol 1e-12, same iteration
    counts and statuses as the one-process MGRIT solve."""
    P, results = mpi_results
    got, (ref, _) = results[case.name], reference[case.name]
    assert got["step_evals"].shape == (P, 2)
    assert got["loss"] == ref["loss"], f"loss {got['loss']!r} != one rank's {ref['loss']!r}"
    for key in ("logits", "logits_fwd"):
        assert np.array_equal(got[key], ref[key]), \
            f"{key} not bitwise equal, max diff {np.max(np.abs(got[key] - ref[key]))}"
    assert np.array_equal(got["logits_fwd"], got["logits"])
    for key in ("fwd_iters", "adj_iters", "fwd_status", "adj_status"):
        assert got[key] == ref[key], key
    for key in ("fwd_hist", "adj_hist"):
        assert got[key].shape == ref[key].shape, key
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-12, atol=0, err_msg=key)
    g, gr = got["grad"], ref["grad"]
    np.testing.assert_allclose(g, gr, rtol=1e-12, atol=1e-12 * np.max(np.abs(gr)))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_p_ranks_close_to_one_rank(mpi_results, reference, case):
    """Weaker than :func:`test_p_ranks_equal_one_rank`: P ranks agree with one rank to round-off
    (the first residual norms, the loss, the logits and the gradient), so that a bitwise failure can
    be told from a wrong result."""
    _, results = mpi_results
    got, (ref, _) = results[case.name], reference[case.name]
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-13)
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=0,
                               atol=1e-13 * np.max(np.abs(ref["logits"])))
    np.testing.assert_allclose(got["grad"], ref["grad"], rtol=0,
                               atol=1e-12 * np.max(np.abs(ref["grad"])))
    for key in ("fwd_hist", "adj_hist"):
        n = min(len(got[key]), len(ref[key]), 2)       # later norms may be round-off themselves
        np.testing.assert_allclose(got[key][:n], ref[key][:n], rtol=1e-10, err_msg=key)


@pytest.mark.parametrize("case", [c for c in CASES if _is_tight(c)],
                         ids=[c.name for c in CASES if _is_tight(c)])
def test_tight_p_ranks_equal_serial(mpi_results, reference, case):
    """Solved to round-off on P ranks, MGRIT gives the serial solver's loss, logits and gradient."""
    _, results = mpi_results
    got, (_, ser) = results[case.name], reference[case.name]
    assert got["fwd_status"] == 0 and got["adj_status"] == 0, "tight solve did not converge"
    np.testing.assert_allclose(got["loss"], ser["loss"], rtol=1e-12)
    np.testing.assert_allclose(got["logits"], ser["logits"], rtol=1e-10,
                               atol=1e-12 * np.max(np.abs(ser["logits"])))
    np.testing.assert_allclose(got["grad"], ser["grad"], rtol=1e-10,
                               atol=1e-10 * np.max(np.abs(ser["grad"])))


# ------------------------------------------------------------------------------------------------
# Errors end every rank
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("phase", ["forward", "adjoint"])
@pytest.mark.parametrize("P", [2, 3], ids=["P2", "P3"])
def test_exception_on_one_rank_ends_all(numba_cache_warm, P, phase):
    """Rank 1 raises inside the forward or adjoint MGRIT solve while its neighbours wait for it:
    mpiexec returns non-zero within seconds (not at the timeout), with the exception in the output,
    and rank 1 never finishes."""
    res = run_mpi(P, "raise_on_one_rank.py", phase, timeout=TIMEOUT)
    assert res.returncode != 0, res.describe()
    assert res.seconds < 60, "the ranks were not ended promptly\n" + res.describe()
    assert f"RuntimeError: injected failure on rank 1 of {P} in the {phase} solve" in res.output, \
        res.describe()
    for r in range(P):
        assert f"rank {r}: solving" in res.stdout, res.describe()
    assert "rank 1: finished" not in res.stdout, res.describe()


def test_more_ranks_than_coarsest_intervals_fails_on_every_rank(numba_cache_warm, tmp_path):
    """T=6 with 2 levels and cf 4 has 2 coarsest intervals: on 4 ranks every rank reports the
    ConfigError (naming the ranks) and the launch exits non-zero without writing results."""
    out = tmp_path / "bad.npz"
    case = Case(cell="classic", layers=1, T=6, levels=2, cf=4)
    res = run_mpi(4, "mgrit_case.py", out, case.to_arg(), timeout=TIMEOUT)
    assert res.returncode != 0, res.describe()
    assert res.seconds < 60, res.describe()
    assert not out.exists()
    for r in range(4):
        mine = re.search(rf"rank {r}/4: ConfigError: ([^\n]*)", res.stderr)
        assert mine, f"rank {r} did not report the ConfigError\n" + res.describe()
        assert "4 ranks" in mine[1] and "coarsest" in mine[1], mine[1]
