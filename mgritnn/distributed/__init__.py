"""MPI layout of the time axis: communicators (mpi4py or a single-rank stand-in), the partition, and
the time-communication service every solver sends its messages through."""
from .comm import SelfComm, default_threads, get_comm, ranks_per_node, split_data_time
from .partition import (LevelCounts, LocalGrid, level_counts, level_points, level_strides,
                        local_grid, rank_bounds)
from .timecomm import TAGS, TimeComm

__all__ = ["TAGS", "TimeComm", "SelfComm", "default_threads", "get_comm", "ranks_per_node", "split_data_time", "LevelCounts", "LocalGrid", "level_counts", "level_points",
           "level_strides", "local_grid",
           "rank_bounds"]
