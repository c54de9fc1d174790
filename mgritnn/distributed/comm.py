"""Communicators: mpi4py's, or a single-rank stand-in so that serial runs never import MPI.

Every parallel entry point of mgritnn takes an optional communicator and then uses only that one,
so the engine can run on a sub-communicator of a larger MPI application. mgritnn never initializes
or finalizes MPI itself beyond what ``import mpi4py.MPI`` does.
"""
import os
import sys

import numpy as np

from ..errors import ConfigError

# Environment variables that MPI launchers (MPICH/hydra, Open MPI, Slurm/PMI) set in every rank.
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")


class SelfComm:
    """The subset of an mpi4py intracommunicator that mgritnn uses, for one process without MPI."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def Allreduce(self, sendbuf, recvbuf, op=None):
        if sendbuf is not recvbuf and not isinstance(sendbuf, type(None)):
            np.copyto(recvbuf, sendbuf)

    def allreduce(self, obj, op=None):
        return obj

    def bcast(self, obj, root=0):
        return obj

    def allgather(self, obj):
        return [obj]

    def gather(self, obj, root=0):
        return [obj]

    def Barrier(self):
        pass

    def Split(self, color=0, key=0):
        return self

    def Abort(self, errorcode=1):
        os._exit(errorcode)


def under_mpi_launcher():
    """True when this process was started by an MPI launcher (mpiexec, srun, ...)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def get_comm(comm=None):
    """The communicator to use: ``comm`` if given; else MPI's world if mpi4py is already in use or
    this process was started by an MPI launcher; else a :class:`SelfComm`."""
    if comm is not None:
        return comm
    if "mpi4py.MPI" in sys.modules or under_mpi_launcher():
        from mpi4py import MPI
        return MPI.COMM_WORLD
    return SelfComm()


def split_data_time(comm, data_parallel):
    """Split ``comm`` into a 2-D grid of ``data_parallel`` data groups x (size / data_parallel) time ranks.

    Returns
    -------
    time_comm : communicator of the ranks that share a data group (the time axis is split over it)
    data_comm : communicator of the ranks with the same time block (gradients are averaged over it)
    group : int, this rank's data group
    """
    size, rank = comm.Get_size(), comm.Get_rank()
    D = int(data_parallel)
    if D < 1 or size % D:
        raise ConfigError(f"--data-parallel {D} must divide the number of ranks {size}")
    per = size // D
    group, trank = divmod(rank, per)
    return comm.Split(group, trank), comm.Split(trank, group), group


def ranks_per_node(comm):
    """Number of ranks of ``comm`` on this node (1 without MPI)."""
    if isinstance(comm, SelfComm):
        return 1
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    n = local.Get_size()
    local.Free()
    return n


def default_threads(comm):
    """numba threads per rank by default: cores per node // ranks per node (at least 1)."""
    return max(1, (os.cpu_count() or 1) // ranks_per_node(comm))
