"""Rank 1 raises in the middle of an MGRIT solve; under ``python -m mpi4py`` all ranks must end.

Usage (under mpiexec; see ``tests/mpi_util.run_mpi``)::

    mpiexec -n P python -m mpi4py tests/mpi/raise_on_one_rank.py {forward|adjoint} [CALL]

Every rank runs ``loss_and_grad_flat`` of the same problem with MGRIT. On rank 1 only, the FAS
engine's neighbour exchange (``_FAS.exchange``) is wrapped so that its CALL-th call (default 3)
in the chosen solve raises ``RuntimeError("injected failure on rank 1 ...")``: by then the other
ranks have exchanged with rank 1 and are blocked in communication (waiting for rank 1's next
message or in the residual allreduce), so without ``-m mpi4py``'s ``MPI_Abort`` they would hang.
The script prints ``rank r: solving`` and passes a barrier before the solve, so every rank is in
the solve when rank 1 raises, and prints ``rank r: finished`` after it (which rank 1 never reaches).
"""
import sys

from mpi4py import MPI

import mgritnn.solvers.mgrit as mgrit
from mpi_util import Case

MESSAGE = "injected failure on rank 1"


def main(argv):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    phase = argv[0] if argv else "forward"
    when = int(argv[1]) if len(argv) > 1 else 3
    kind = {"forward": "mgrit-forward", "adjoint": "mgrit-adjoint"}[phase]   # the _FAS messages
    case = Case(cell="classic", layers=2, T=50, levels=3, cf=2, fwd=4, bwd=4, tol=0.0)
    if rank == 1:
        original = mgrit._FAS.exchange
        calls = [0]

        def exchange(self, l):
            if self.kind == kind:
                calls[0] += 1
                if calls[0] == when:
                    raise RuntimeError(f"{MESSAGE} of {size} in the {phase} solve "
                                       f"(exchange call {when}, level {l})")
            return original(self, l)

        mgrit._FAS.exchange = exchange
    model, X, y = case.problem()
    print(f"rank {rank}: solving", flush=True)
    comm.Barrier()            # every rank has started (and printed) before rank 1 can raise
    model.loss_and_grad_flat(X, y, case.config())
    print(f"rank {rank}: finished", flush=True)
    comm.Barrier()            # never completes: rank 1 has raised
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
