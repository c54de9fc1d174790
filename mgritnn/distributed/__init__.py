"""MPI layout of the time axis: communicators (mpi4py or a single-rank stand-in) and the partition."""
from .comm import SelfComm, default_threads, get_comm, ranks_per_node, split_data_time
from .partition import LocalGrid, level_points, local_grid, rank_bounds

__all__ = ["SelfComm", "default_threads", "get_comm", "ranks_per_node", "split_data_time", "LocalGrid", "level_points", "local_grid",
           "rank_bounds"]
