"""GRU cells: forward and VJP kernels side by side, and the registry of cells by name."""
from .gru import (CELLS, GRUCell, GRUWeights, LayerStep, StackCache, StackedWeights, StepCache,
                  Workspace, accumulate_outer, get_cell, project)
from .newton import NewtonConfig, NewtonGRUCell, NewtonStats    # registers "implicit-newton"

__all__ = ["CELLS", "GRUCell", "GRUWeights", "LayerStep", "NewtonConfig", "NewtonGRUCell",
           "NewtonStats", "StackCache", "StackedWeights", "StepCache", "Workspace", "accumulate_outer",
           "get_cell", "project"]
