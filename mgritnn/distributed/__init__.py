"""MPI layout of the time axis: communicators (mpi4py or a single-rank stand-in), the partition, and
the time-communication service every solver sends its messages through."""
from .comm import SelfComm, default_threads, get_comm, ranks_per_node, split_data_time
from .partition import LocalGrid, level_points, local_grid, rank_bounds
from .timecomm import TAGS, TimeComm

__all__ = ["TAGS", "TimeComm", "SelfComm", "default_threads", "get_comm", "ranks_per_node", "split_data_time", "LocalGrid", "level_points", "local_grid",
           "rank_bounds"]
