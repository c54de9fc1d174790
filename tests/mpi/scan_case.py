"""Solve random linear recurrences with the chunked scan on every rank; rank 0 saves the result.

Usage (under mpiexec; see ``tests/mpi_util.run_mpi``)::

    mpiexec -n P python -m mpi4py tests/mpi/scan_case.py OUT.npz CHUNKS [CHUNKS ...]

Every rank builds the same systems (:func:`mpi_util.scan_systems`: dense and diagonal, n = 41
steps, so blocks are uneven), solves its block [n r / P, n (r + 1) / P) forward and in reverse with
each CHUNKS number of chunks per rank, and checks that its boundary value is its neighbour's last (first) value.
The blocks are gathered on rank 0, which writes ``{kind}_{direction}_c{CHUNKS}`` (n, B, H) arrays
to OUT.
The ranks agree (``allreduce`` MIN) before anyone exits, so a failed check ends all of them with
status 1 together.
"""
import sys

import numpy as np
from mpi4py import MPI

from mgritnn.solvers.scan import linear_recurrence
from mpi_util import finish_ranks, scan_systems


def main(argv):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    out_path, chunk_counts = argv[0], [int(c) for c in argv[1:]]
    arrays, bad = {}, []
    for chunks, (kind, (A, b, h0)) in ((c, s) for c in chunk_counts for s in scan_systems().items()):
        n = b.shape[0]
        lo, hi = n * rank // size, n * (rank + 1) // size
        for reverse in (False, True):
            out, boundary = linear_recurrence(np.ascontiguousarray(A[lo:hi]),
                                              np.ascontiguousarray(b[lo:hi]), h0,
                                              reverse=reverse, chunks=chunks, comm=comm)
            # the boundary entering this block is the neighbour's value at the shared point
            first, last = np.ascontiguousarray(out[0]), np.ascontiguousarray(out[-1])
            right = comm.sendrecv(first, dest=(rank - 1) % size, source=(rank + 1) % size)
            left = comm.sendrecv(last, dest=(rank + 1) % size, source=(rank - 1) % size)
            want = (h0 if rank == size - 1 else right) if reverse else (h0 if rank == 0 else left)
            if not np.array_equal(boundary, want):
                bad.append(f"rank {rank}/{size} {kind} chunks={chunks} reverse={reverse}: boundary "
                           "value is not the neighbour's")
            blocks = comm.gather(out, root=0)
            if rank == 0:
                direction = "reverse" if reverse else "forward"
                arrays[f"{kind}_{direction}_c{chunks}"] = np.concatenate(blocks)
    return finish_ranks(comm, bad, out_path, arrays)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
