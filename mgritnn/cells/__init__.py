"""Cells (one-step propagators of the step protocol, :mod:`.base`): the GRU cells with their forward
and VJP kernels side by side, the registry of cells by name, the scalar test equation, and the
ODENet's residual layers, dense and convolutional (their weights the step inputs; not in the
registry, the ODENet makes them)."""
from .base import (CAPABILITIES, Cell, Core, DiagonalNewton, FusedChains, FusedSequence,
                   LayerNewton, LayerStep, OffDiagonalVJP, OneLayer, Workspace, adjoint_shift, has, missing,
                   scale_pow2, tree_map, without, work_array)
from .dahlquist import DahlquistCell, DahlquistWeights
from .gru import (CELLS, GRUCache, GRUCell, GRUGrads, GRUStack, GRUWeights, StackedWeights,
                  accumulate_outer, get_cell, project)
from .newton import NewtonConfig, NewtonGRUCell, NewtonStats    # registers "implicit-newton"
from .odenet import ODENetCell, ODENetGrads, ODENetWeights
from .conv_odenet import ConvODENetCell, ConvODENetGrads, ConvODENetWeights

__all__ = ["CAPABILITIES", "CELLS", "Cell", "ConvODENetCell", "ConvODENetGrads",
           "ConvODENetWeights", "Core", "DahlquistCell", "DahlquistWeights",
           "DiagonalNewton", "FusedChains", "FusedSequence", "GRUCache", "GRUCell", "GRUGrads",
           "GRUStack", "GRUWeights", "LayerNewton", "LayerStep", "NewtonConfig", "NewtonGRUCell",
           "NewtonStats", "ODENetCell", "ODENetGrads", "ODENetWeights", "OffDiagonalVJP", "OneLayer",
           "StackedWeights", "Workspace", "accumulate_outer", "adjoint_shift", "get_cell", "has",
           "missing", "project", "scale_pow2", "tree_map", "without", "work_array"]
