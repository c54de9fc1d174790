"""The time-communication service: every message a time solver sends goes through :class:`TimeComm`.

The solvers (MGRIT, DEER, the scan) never import mpi4py and never name an MPI tag: they ask this
service for the few operations they need (the ghost exchange with the neighbours, the pipelined
sends and receives of a sequential sweep, sum and max allreduce, allgather, broadcast from
buffers), and it accounts for the time spent waiting. On one process every operation is a local
copy or nothing, so the solvers have no ``if size == 1`` branches of their own.

Tags: each kind of message has its own block of tags (``TAGS``), and the level (or layer) of a
message is added to its block's base, so that messages of different kinds or levels that are in
flight at the same time can never be confused.
"""
import time

import numpy as np

from .comm import SelfComm, get_comm

#: Base tag of each kind of message (a level or layer index is added; blocks are 100 apart).
TAGS = {
    "mgrit-forward": 100,       # MGRIT forward solve: ghost exchange and coarsest pipeline, + level
    "mgrit-adjoint": 200,       # MGRIT adjoint solve, + level
    "deer-start": 300,          # DEER: the initial guess's left boundary, + layer
    "deer-sweep": 400,          # DEER's fallback serial sweep, pipelined
    "scan-boundary": 500,       # the scan's shared block boundary
    "deer-cotangent": 600,      # DEER adjoint: the layer input's cotangent at the block boundary, + layer
    "odenet-layers": 700,       # the ODENet's neighbouring layer weights (its smoothness penalty)
    "adjoint-sweep": 800,       # the pipelined scaled BPTT (an adjoint's exact fallback): 0 the
                                # adjoint, 1 its exponent
}
_BLOCK = 100


def tag(kind, index=0):
    """The MPI tag of a message of ``kind`` (a key of ``TAGS``) for level or layer ``index``."""
    if not 0 <= index < _BLOCK:
        raise ValueError(f"tag index {index} out of range 0..{_BLOCK - 1}")
    return TAGS[kind] + index


class TimeComm:
    """The ranks that share the time axis, in time order, and the messages between them.

    Parameters
    ----------
    comm : mpi4py intracommunicator, :class:`SelfComm`, TimeComm or None
        None: MPI's world under an MPI launcher, else one process (see :func:`get_comm`).

    Attributes
    ----------
    rank, size : int
    left, right : int or None
        The neighbours in time (None at the ends).
    wait_time : float
        Seconds spent waiting in this service's blocking operations (cumulative; solvers read
        the difference over a solve).
    """

    def __init__(self, comm=None):
        if isinstance(comm, TimeComm):
            comm = comm.comm
        self.comm = get_comm(comm)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.left = self.rank - 1 if self.rank > 0 else None
        self.right = self.rank + 1 if self.rank + 1 < self.size else None
        self.wait_time = 0.0
        self._mpi = None if self.size == 1 or isinstance(self.comm, SelfComm) else _mpi()

    def _waited(self, t0):
        dt = time.perf_counter() - t0
        self.wait_time += dt
        return dt

    # -- neighbours (in the direction of the solve: ``reverse`` runs from the last rank) ----------

    def _ends(self, reverse):
        """(previous, next) rank in the direction of the solve, None at the ends."""
        return (self.right, self.left) if reverse else (self.left, self.right)

    def shift(self, send, recv, kind, index=0, reverse=False):
        """Send ``send`` to the next rank and receive ``recv`` from the previous one, at once (the
        ghost exchange); the ranks at the ends send or receive nothing. Returns the seconds waited."""
        t0 = time.perf_counter()
        if self._mpi is not None:
            prev, nxt = self._ends(reverse)
            null = self._mpi.PROC_NULL
            t = tag(kind, index)
            self.comm.Sendrecv(np.ascontiguousarray(send), dest=null if nxt is None else nxt,
                               sendtag=t, recvbuf=recv, source=null if prev is None else prev,
                               recvtag=t)
        return self._waited(t0)

    def recv_prev(self, buf, kind, index=0, reverse=False):
        """Receive ``buf`` from the previous rank (nothing on the first): the wait of a pipelined
        sequential sweep. Returns the seconds waited."""
        t0 = time.perf_counter()
        prev = self._ends(reverse)[0]
        if self._mpi is not None and prev is not None:
            self.comm.Recv(buf, source=prev, tag=tag(kind, index))
        return self._waited(t0)

    def send_next(self, buf, kind, index=0, reverse=False):
        """Send ``buf`` to the next rank (nothing on the last one)."""
        nxt = self._ends(reverse)[1]
        if self._mpi is not None and nxt is not None:
            self.comm.Send(np.ascontiguousarray(buf), dest=nxt, tag=tag(kind, index))

    # -- collectives -----------------------------------------------------------------------------

    def allreduce(self, values, op="sum"):
        """Sum (``op="sum"``) or maximum (``"max"``) of an array over the ranks: a new array."""
        values = np.ascontiguousarray(values)
        if self._mpi is None:
            return values.copy()
        out = np.empty_like(values)
        t0 = time.perf_counter()
        self.comm.Allreduce(values, out, op={"sum": self._mpi.SUM, "max": self._mpi.MAX}[op])
        self._waited(t0)
        return out

    def allgather(self, send):
        """Every rank's ``send`` (same shape and dtype everywhere), stacked in rank order."""
        send = np.ascontiguousarray(send)
        out = np.empty((self.size,) + send.shape, send.dtype)
        if self._mpi is None:
            out[0] = send
            return out
        t0 = time.perf_counter()
        self.comm.Allgather(send, out)
        self._waited(t0)
        return out

    def allgather_rows(self, buf, lo, hi):
        """Make all rows of ``buf`` (T, ...) current on every rank, in place, when each rank has
        the current rows [lo, hi) of its own (contiguous blocks in rank order that cover 0..T;
        one ``Allgatherv``). ``buf`` must be C-contiguous."""
        if self._mpi is None:
            return buf
        if not buf.flags.c_contiguous:
            raise ValueError("allgather_rows needs a C-contiguous buffer")
        row = int(np.prod(buf.shape[1:], dtype=np.int64))
        bounds = self.allgather(np.array([lo, hi], np.int64))
        counts = (bounds[:, 1] - bounds[:, 0]) * row
        displs = bounds[:, 0] * row
        t0 = time.perf_counter()
        self.comm.Allgatherv(self._mpi.IN_PLACE, [buf.reshape(-1), (counts, displs)])
        self._waited(t0)
        return buf

    def bcast(self, buf, root):
        """Broadcast the array ``buf`` in place from rank ``root`` (same shape everywhere)."""
        if self._mpi is not None:
            t0 = time.perf_counter()
            self.comm.Bcast(buf, root=root)
            self._waited(t0)
        return buf


def _mpi():
    from mpi4py import MPI
    return MPI
