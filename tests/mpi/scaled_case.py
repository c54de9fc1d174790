"""MGRIT's exact adjoint fallback with exploding gradients on every rank of MPI's world; rank 0
saves the results.

Usage (under mpiexec; see ``tests/mpi_util.run_mpi``)::

    mpiexec -n P python -m mpi4py tests/mpi/scaled_case.py OUT.npz

For each problem of :data:`CASES` (``tests/scaled_problems.exploding_model``: float32, the true
gradient far beyond float32's range) MGRIT's train preset with one cycle and an unreachable
tolerance, DEER and quasi-DEER fall back in the forward (the pipelined sweep) and in the adjoint
(the pipelined scaled BPTT, ``mgritnn.solvers.pipeline``: MGRIT's adjoint gives inf, DEER's dense
scan overflows, quasi-DEER's iteration misses). Every rank must return the same loss, gradient and exponent
(checked here); rank 0 saves ``{name}_loss``, ``{name}_grad``, ``{name}_exponent``,
``{name}_fallback`` (forward and adjoint). The ranks agree (``allreduce`` MIN) before anyone exits,
so a failed check ends all of them with status 1 together.
"""
import sys

import numpy as np
from mpi4py import MPI

from mgritnn.solvers import make_solver
from mpi_util import agree_with_rank_0, finish_ranks
from scaled_problems import exploding_model

#: (name, solver, cell, layers, T): MGRIT for both cells at 1 and 2 layers; DEER and quasi-DEER
#: (their forward falls back too: Newton does not converge on the chaotic recurrence) on two.
CASES = ([(f"mgrit-{cell}-L{L}", "mgrit", cell, L, 1000) for cell in ("classic", "implicit")
          for L in (1, 2)]
         + [(f"{s}-{cell}-L{L}", s, cell, L, 1000) for s in ("deer", "quasi-deer")
            for cell, L in (("classic", 1), ("implicit", 2))])

#: The options that force both fallbacks (MGRIT: one cycle, an unreachable tolerance).
OPTIONS = {"mgrit": dict(preset="train", max_iter=1, adjoint_max_iter=1, rms_tol=1e-12),
           "deer": {}, "quasi-deer": {}}


def solve_case(solver, cell, layers, T, comm=None):
    """The forced fallbacks' results: dict of loss, grad, exponent, fallback (2,)."""
    model, X, y = exploding_model(cell, layers, T=T)
    solver = make_solver(solver, comm, options=OPTIONS[solver])
    loss, grad, info = model.loss_and_grad_flat(X, y, solver, scaled=True)
    return dict(loss=np.float64(loss), grad=grad, exponent=np.int64(info["exponent"]),
                fallback=np.array([info["forward"].fallback, info["adjoint"].fallback]))


def main(argv):
    comm = MPI.COMM_WORLD
    arrays, bad = {}, []
    for name, *case in CASES:
        agree_with_rank_0(comm, name, solve_case(*case, comm), bad, arrays)
    return finish_ranks(comm, bad, argv[0], arrays)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
