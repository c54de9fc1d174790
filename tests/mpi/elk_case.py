"""ELK and quasi-ELK on every rank of MPI's world; rank 0 saves the results.

Usage (under mpiexec; see ``tests/mpi_util.run_mpi``)::

    mpiexec -n P python -m mpi4py tests/mpi/elk_case.py OUT.npz

Two parts, every rank building the same deterministic inputs:

* the Levenberg-Marquardt step (:func:`mgritnn.solvers.elk.lm_step`) of random dense and diagonal
  systems (n = 23 steps, uneven blocks) with 1 and 2 partitions per rank: each rank solves its
  block, rank 0 gathers the blocks (``step_{kind}_c{chunks}``);
* ELK and quasi-ELK solves (:data:`CASES`: both cells, 1 and 2 layers, converged to atol 1e-12) of
  ``loss_and_grad_flat``: loss, gradient, logits, iterations and status (``{name}_{key}``), which
  must be bitwise the same on every rank (checked here).

The ranks agree (``allreduce`` MIN) before anyone exits, so a failed check ends all of them with
status 1 together.
"""
import sys

import numpy as np
from mpi4py import MPI

from mgritnn.solvers import DEERConfig
from mgritnn.solvers.elk import lm_step
from mpi_util import Case, agree_with_rank_0, finish_ranks

#: (name, case, quasi): the problems of ``mpi_util.Case`` (float64, batch 3, hidden 5).
CASES = [(f"{'quasi-' if q else ''}elk-{cell}-L{L}", Case(cell=cell, layers=L, T=37), q)
         for q in (False, True) for cell in ("classic", "implicit") for L in (1, 2)]


def step_systems(n=23, B=2, H=3, seed=11):
    """Random dense and diagonal systems ``{kind: (J, res)}`` (the same on every rank)."""
    rng = np.random.default_rng(seed)
    return {"dense": (0.5 * rng.standard_normal((n, B, H, H)), rng.standard_normal((n, B, H))),
            "diag": (0.8 * rng.standard_normal((n, B, H)), rng.standard_normal((n, B, H)))}


def solve_case(case, quasi):
    model, X, y = case.problem()
    cfg = DEERConfig(quasi=quasi, trust_region=True, atol=1e-12, rtol=0.0, max_iter=150,
                     fallback=False)
    loss, grad, info = model.loss_and_grad_flat(X, y, cfg)
    f = info["forward"]
    return dict(loss=np.float64(loss), grad=grad, logits=info["logits"],
                iters=np.int64(f.iterations), status=np.int64(f.status),
                hist=np.array(f.history, np.float64))


def main(argv):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    arrays, bad = {}, []
    for chunks in (1, 2):
        for kind, (J, res) in step_systems().items():
            n = res.shape[0]
            lo, hi = n * rank // size, n * (rank + 1) // size
            d = lm_step(np.ascontiguousarray(J[lo:hi]), np.ascontiguousarray(res[lo:hi]), 0.3,
                        chunks=chunks, comm=comm, T=n)
            blocks = comm.gather(d, root=0)
            if rank == 0:
                arrays[f"step_{kind}_c{chunks}"] = np.concatenate(blocks)
    for name, case, quasi in CASES:
        agree_with_rank_0(comm, name, solve_case(case, quasi), bad, arrays)
    return finish_ranks(comm, bad, argv[0], arrays)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
