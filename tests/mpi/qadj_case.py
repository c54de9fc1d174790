"""quasi-DEER's iterative adjoint (``DEERConfig(adjoint="quasi")``) on every rank of MPI's world;
rank 0 saves the results.

Usage (under mpiexec; see ``tests/mpi_util.run_mpi`` and ``tests/test_mpi_quasi_adjoint.py``)::

    mpiexec -n P python -m mpi4py tests/mpi/qadj_case.py OUT.npz

Every rank builds the same deterministic problems (:data:`CASES`) and solves them with
``loss_and_grad_flat``: converged (atol 1e-13), capped without the fallback (status 1), and capped
with the fallback (the serial reverse sweep, pipelined over the ranks). Loss, gradient, adjoint
iterations, status and fallback must be bitwise the same on every rank (checked here); the ranks
agree (``allreduce`` MIN) before anyone exits, so a failed check ends all of them together.
"""
import sys

import numpy as np
from mpi4py import MPI

from mgritnn.solvers import DEERConfig
from mpi_util import Case, agree_with_rank_0, finish_ranks

TIGHT = dict(atol=1e-13, rtol=0.0)

#: (name, case, config options): float64, batch 3, hidden 5, T = 41 (uneven blocks on 2-4 ranks).
CASES = [(f"q-{cell}-L{L}", Case(cell=cell, layers=L, T=41), dict(quasi=True, **TIGHT))
         for cell in ("classic", "implicit") for L in (1, 2)]
CASES += [("deer-fwd-q-adj-L2", Case(cell="classic", layers=2, T=41),
           dict(adjoint="quasi", **TIGHT)),
          ("capped-fallback-L2", Case(cell="implicit", layers=2, T=41, scale=2.0),
           dict(quasi=True, adjoint_max_iter=3, max_iter=80, **TIGHT)),
          ("capped-nofallback-L1", Case(cell="classic", layers=1, T=41, scale=2.0),
           dict(quasi=True, adjoint_max_iter=3, max_iter=80, fallback=False, **TIGHT))]


def solve_case(case, options):
    model, X, y = case.problem()
    loss, grad, info = model.loss_and_grad_flat(X, y, DEERConfig(max_iter=80, **options)
                                                if "max_iter" not in options
                                                else DEERConfig(**options))
    a = info["adjoint"]
    return dict(loss=np.float64(loss), grad=grad, adj_iters=np.int64(a.iterations),
                adj_status=np.int64(a.status), adj_fallback=np.int64(a.fallback),
                fwd_status=np.int64(info["forward"].status))


def main(argv):
    comm = MPI.COMM_WORLD
    arrays, bad = {}, []
    for name, case, options in CASES:
        agree_with_rank_0(comm, name, solve_case(case, options), bad, arrays)
    return finish_ranks(comm, bad, argv[0], arrays)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
