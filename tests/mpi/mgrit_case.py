"""Run time-parallel cases (MGRIT, DEER) on every rank of MPI's world and save rank 0's results to an .npz file.

Usage (under mpiexec; see ``tests/mpi_util.run_mpi``)::

    mpiexec -n P python -m mpi4py tests/mpi/mgrit_case.py OUT.npz CASE [CASE ...]

Every CASE is a :class:`mpi_util.Case` in its command-line form (``cell=classic,layers=2,T=37,...``),
or an ODENet's :class:`mpi_util.ODECase` (``odenet:act=tanh,N=37,...``).
For each case every rank builds the same deterministic problem, runs ``loss_and_grad_flat`` and
``forward`` with the case's solver config (``comm=None``: the world), and checks its own
invariants against rank 0's results (bitwise: loss, gradient, logits, residual histories,
iteration counts and statuses must be the same on every rank, and finite). The ranks then agree
(``allreduce`` MIN) before anyone exits, so a failed check makes all ranks exit with status 1
together and no rank is left waiting. On success rank 0 writes ``c{i}_{key}`` arrays (the keys of
:func:`mpi_util.solve`; ``step_evals`` becomes (P, 2): forward and adjoint counts of every rank)
to OUT, atomically.

A :class:`mgritnn.MgritnnError` (e.g. a configuration that does not fit the number of ranks) is
printed by every rank that raises it as ``rank r/P: ConfigError: ...``; the ranks wait (at most
``AGREE_SECONDS``) for all to report, then exit with status 2. Any other exception is left to
``python -m mpi4py``, which aborts all ranks.
"""
import sys
import time

import numpy as np
from mpi4py import MPI

import mgritnn
from mpi_util import finish_ranks, parse_case, solve

AGREE_SECONDS = 20.0

#: Results that must be bitwise the same on every rank.
SAME_ON_ALL = ("loss", "grad", "logits", "logits_fwd", "fwd_hist", "adj_hist", "fwd_iters",
               "adj_iters", "fwd_status", "adj_status", "fwd_fallback", "adj_fallback")


def say(msg):
    """One line to stderr in a single write, so that the lines of different ranks do not mix."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def wait_for_all(comm, seconds):
    """Non-blocking barrier with a deadline: True if every rank arrived within ``seconds``.

    Used after an error, when some ranks might still be inside the solve's point-to-point
    communication; then the deadline passes and the caller exits (which aborts the others)."""
    req = comm.Ibarrier()
    deadline = time.monotonic() + seconds
    while not req.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def check_rank(comm, case, res):
    """This rank's invariants of one case's results; returns a list of failure messages."""
    rank = comm.Get_rank()
    bad = []
    for key in ("loss", "grad", "logits", "logits_fwd", "fwd_hist", "adj_hist"):
        if res[key] is None:
            bad.append(f"{key} is None")
        elif not np.all(np.isfinite(res[key])):
            bad.append(f"{key} is not finite")
    if case.fwd >= 2 and not len(res["fwd_hist"]):
        bad.append("empty forward residual history")
    if np.any(res["step_evals"] <= 0):
        bad.append(f"this rank did no steps: step_evals {res['step_evals'].tolist()}")
    ref = comm.bcast({k: res[k] for k in SAME_ON_ALL} if rank == 0 else None, root=0)
    for key in SAME_ON_ALL:
        a, b = res[key], ref[key]
        if a is None or b is None or np.shape(a) != np.shape(b) or not np.array_equal(a, b):
            bad.append(f"{key} differs from rank 0's: {a!r} vs {b!r}"[:400])
    return [f"rank {rank}/{comm.Get_size()} case {case.name}: {m}" for m in bad]


def main(argv):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if len(argv) < 2:
        if rank == 0:
            print(__doc__, file=sys.stderr)
        return 2
    out, cases = argv[0], [parse_case(a) for a in argv[1:]]
    arrays, failures = {}, []
    for i, case in enumerate(cases):
        try:
            res = solve(case)
        except mgritnn.MgritnnError as e:
            say(f"rank {rank}/{size}: {type(e).__name__}: {e}")
            wait_for_all(comm, AGREE_SECONDS)
            return 2
        failures += check_rank(comm, case, res)
        evals = comm.gather(res["step_evals"], root=0)
        for k, v in res.items():
            arrays[f"c{i}_{k}"] = np.asarray(v)
        if rank == 0:
            arrays[f"c{i}_step_evals"] = np.array(evals)
    return finish_ranks(comm, failures, out, arrays)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
