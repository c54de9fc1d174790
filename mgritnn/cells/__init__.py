"""GRU cells: forward and VJP kernels side by side, and the registry of cells by name."""
from .gru import (CELLS, GRUCell, GRUWeights, LayerStep, StepCache, Workspace, accumulate_outer,
                  get_cell, project)

__all__ = ["CELLS", "GRUCell", "GRUWeights", "LayerStep", "StepCache", "Workspace", "accumulate_outer",
           "get_cell", "project"]
