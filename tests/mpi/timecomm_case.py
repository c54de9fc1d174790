"""Every operation of the time-communication service on P ranks, in both directions.

Usage (under mpiexec; see ``tests/mpi_util.run_mpi``)::

    mpiexec -n P python -m mpi4py tests/mpi/timecomm_case.py OUT.npz

Each rank checks what it received against what its neighbours must have sent (values made from
the sender's rank), and the ranks agree (``allreduce`` MIN) before exiting. Rank 0 writes the
total of the sums it saw to OUT.
"""
import sys

import numpy as np
from mpi4py import MPI

from mgritnn.distributed import TimeComm
from mpi_util import finish_ranks


def main(argv):
    tc = TimeComm(MPI.COMM_WORLD)
    r, P = tc.rank, tc.size
    bad = []

    def check(ok, what):
        if not ok:
            bad.append(f"rank {r}/{P}: {what}")

    for reverse in (False, True):
        prev = (r + 1 if r + 1 < P else None) if reverse else (r - 1 if r > 0 else None)
        recv = np.full(3, -1.0)
        tc.shift(np.full(3, float(r)), recv, "mgrit-forward", 2, reverse=reverse)
        check(np.all(recv == (-1.0 if prev is None else prev)), f"shift reverse={reverse}: {recv}")
        buf = np.full(2, -1.0)
        if prev is not None:
            tc.recv_prev(buf, "deer-sweep", reverse=reverse)
            check(np.all(buf == prev), f"recv_prev reverse={reverse}: {buf}")
        tc.send_next(np.full(2, float(r)), "deer-sweep", reverse=reverse)
    total = tc.allreduce(np.array([r, 1.0]))
    check(np.array_equal(total, [P * (P - 1) / 2, P]), f"allreduce sum {total}")
    check(tc.allreduce(np.array([r]), op="max")[0] == P - 1, "allreduce max")
    check(np.array_equal(tc.allgather(np.array([r, 2 * r]))[:, 1], 2 * np.arange(P)), "allgather")
    b = np.full(4, float(r))
    check(np.all(tc.bcast(b, root=P - 1) == P - 1), f"bcast {b}")
    check(tc.wait_time >= 0.0, "wait time")
    return finish_ranks(MPI.COMM_WORLD, bad, argv[0], dict(total=total))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
