"""Cells (one-step propagators of the step protocol, :mod:`.base`): the GRU cells with their forward
and VJP kernels side by side, the registry of cells by name, the scalar test equation, and the
ODENet's residual layer (its weights the step inputs; not in the registry, the ODENet makes it)."""
from .base import (CAPABILITIES, Cell, DiagonalNewton, FusedChains, FusedSequence, LayerNewton,
                   LayerStep, Workspace, adjoint_shift, has, missing, scale_pow2, tree_map, work_array)
from .dahlquist import DahlquistCell, DahlquistWeights
from .gru import (CELLS, GRUCell, GRUGrads, GRUStack, GRUWeights, StackCache, StackedWeights,
                  StepCache, accumulate_outer, get_cell, project)
from .newton import NewtonConfig, NewtonGRUCell, NewtonStats    # registers "implicit-newton"
from .odenet import ODENetCell, ODENetGrads, ODENetWeights

__all__ = ["CAPABILITIES", "CELLS", "Cell", "DiagonalNewton", "FusedChains", "FusedSequence", "LayerNewton", "has", "missing", "DahlquistCell", "DahlquistWeights", "GRUCell", "GRUGrads", "GRUStack",
           "GRUWeights", "LayerStep", "NewtonConfig", "NewtonGRUCell", "NewtonStats", "ODENetCell",
           "ODENetGrads", "ODENetWeights", "StackCache", "StackedWeights", "StepCache", "Workspace",
           "accumulate_outer", "adjoint_shift", "get_cell", "project", "scale_pow2", "tree_map",
           "work_array"]
