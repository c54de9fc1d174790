"""The narrow cell protocol (``mgritnn.cells.base``): the required core and the capabilities as
runtime-checkable protocols. Every registered cell has exactly the capabilities of the table below
(written by hand, the module docstring's table), by :func:`has`, :func:`missing` and
``isinstance`` alike; a cell without a capability has no stub of it (no method of the capability
anywhere in its class hierarchy, :class:`Cell` included); :func:`without` hides capabilities."""
import numpy as np
import pytest

from mgritnn.cells import (CAPABILITIES, CELLS, Cell, ConvODENetCell, Core, DahlquistCell,
                           DahlquistWeights, DiagonalNewton, FusedChains, FusedSequence,
                           LayerNewton, NewtonGRUCell, ODENetCell, OffDiagonalVJP, get_cell, has,
                           missing, without)
from mgritnn.errors import ConfigError

SEQ, CHAINS, LAYERS, DIAG, OFF = (FusedSequence, FusedChains, LayerNewton, DiagonalNewton,
                                  OffDiagonalVJP)

#: What each cell has, by hand (the core always).
EXPECTED = {
    "classic": {SEQ, CHAINS, LAYERS, DIAG, OFF},
    "implicit": {SEQ, CHAINS, LAYERS, DIAG, OFF},
    "matched-classic": {SEQ, CHAINS, LAYERS, DIAG, OFF},       # has_off_diagonal_vjp() False
    "matched-implicit": {SEQ, CHAINS, LAYERS, DIAG, OFF},
    "implicit-newton": {SEQ, LAYERS},
    "dahlquist": {LAYERS},
    "odenet": {CHAINS},
    "conv-odenet": set(),
}

#: The methods of each capability, by hand.
METHODS = {
    Core: ("project_inputs", "project_inputs_vjp", "zero_grads", "step", "step_vjp",
           "accumulate_grads", "coarse_cell"),
    FusedSequence: ("sequence_forward", "sequence_vjp"),
    FusedChains: ("chain_weights", "chain_cache", "chain_cotangents", "advance", "advance_vjp",
                  "chain_step_cache", "chain_step_cotangents"),
    LayerNewton: ("num_layers", "layer_states", "join_layers", "layer_inputs", "layer_step",
                  "layer_step_vjp", "layer_input_vjp", "layers_cache"),
    DiagonalNewton: ("layer_newton_diag",),
    OffDiagonalVJP: ("off_diagonal_vjp", "has_off_diagonal_vjp"),
}


def all_cells():
    """Every registered cell (``CELLS``) and the others: Dahlquist, the ODENet's, a Newton cell."""
    cells = {name: get_cell(name) for name in CELLS}
    cells.update(dahlquist=DahlquistCell(), odenet=ODENetCell(), newton=NewtonGRUCell(),
                 **{"conv-odenet": ConvODENetCell(4, 3, 3)})
    return cells


def expected(name):
    return EXPECTED["implicit-newton" if name == "newton" else name]


def test_every_cell_is_in_the_table():
    assert set(CELLS) | {"dahlquist", "odenet", "conv-odenet"} == set(EXPECTED)


def test_the_capabilities_and_their_methods():
    assert set(CAPABILITIES) == set(METHODS)
    for cap, names in METHODS.items():
        assert tuple(CAPABILITIES[cap]) == names, cap.__name__


@pytest.mark.parametrize("name", sorted(all_cells()))
def test_each_cell_has_exactly_its_capabilities(name):
    cell = all_cells()[name]
    assert has(cell, Core) and missing(cell, Core) == [] and isinstance(cell, Core)
    for cap in (SEQ, CHAINS, LAYERS, DIAG):
        want = cap in expected(name)
        assert has(cell, cap) is want, (name, cap.__name__)
        assert isinstance(cell, cap) is want, (name, cap.__name__)       # honest, not only has()
        assert issubclass(type(cell), cap) is want, (name, cap.__name__)
        assert missing(cell, cap) == ([] if want else list(METHODS[cap])), (name, cap.__name__)


@pytest.mark.parametrize("name", sorted(all_cells()))
def test_a_missing_capability_has_no_stub(name):
    """No method of a capability the cell lacks exists anywhere in its class hierarchy (no
    ``NotImplementedError`` stub on :class:`Cell` or a base)."""
    cell = all_cells()[name]
    for cap in (SEQ, CHAINS, LAYERS, DIAG):
        if cap in expected(name):
            continue
        for m in METHODS[cap]:
            assert not hasattr(cell, m), (name, m)
            assert all(m not in vars(k) for k in type(cell).__mro__), (name, m)


def test_the_base_class_declares_only_the_core():
    """:class:`Cell` has no method of any capability, and its core is abstract where it has no
    default (a subclass that leaves it out lacks the core)."""
    for cap in (SEQ, CHAINS, LAYERS, DIAG):
        assert not any(hasattr(Cell, m) for m in METHODS[cap]), cap.__name__
    assert missing(Cell(), Core) == ["zero_grads", "step", "step_vjp", "accumulate_grads"]
    for cap in (SEQ, CHAINS, LAYERS, DIAG):
        assert missing(Cell(), cap) == list(METHODS[cap])


def test_no_legacy_flags():
    """The capabilities are the methods: no ``fused_stack`` / ``fused_sequence`` flag remains."""
    for cell in all_cells().values():
        assert not hasattr(cell, "fused_stack") and not hasattr(cell, "fused_sequence")


def test_scaled_sequence_only_where_the_sweep_scales():
    for name, cell in all_cells().items():
        want = has(cell, DIAG)          # the theta family's kernels
        assert getattr(cell, "scaled_sequence", False) is want, name


def test_only_the_class_counts():
    """A wrapper that forwards attributes (``__getattr__``) has none of the wrapped cell's
    capabilities by :func:`has` (only its class counts)."""
    class Wrapper:
        def __init__(self, cell):
            self._cell = cell

        def __getattr__(self, name):
            return getattr(self._cell, name)

    w = Wrapper(get_cell("classic"))
    for cap in METHODS:
        assert not has(w, cap) and missing(w, cap) == list(METHODS[cap])


@pytest.mark.parametrize("caps", [(FusedChains,), (FusedSequence,), (FusedChains, DiagonalNewton),
                                  (FusedSequence, FusedChains, DiagonalNewton)])
def test_without_hides_capabilities(caps):
    cell = get_cell("classic")
    twin = without(cell, *caps)
    assert isinstance(twin, type(cell)) and twin.theta == cell.theta and twin.name == cell.name
    for cap in (SEQ, CHAINS, LAYERS, DIAG):
        assert has(twin, cap) is (cap not in caps) and isinstance(twin, cap) is (cap not in caps)
        assert has(cell, cap)                                   # the cell itself is untouched
    assert has(twin, Core)
    # the core still works, bit for bit the cell's
    rng = np.random.default_rng(0)
    L, B, H, I = 2, 3, 4, 2
    from mgritnn.cells import GRUWeights
    from mgritnn.model import param_shapes
    p = {n: rng.uniform(-1, 1, s) for n, s in param_shapes(I, H, 2, L)}
    w = GRUWeights.from_params(p, L)
    ax = cell.project_inputs(w, rng.normal(size=(3, B, I)))
    h = rng.uniform(-1, 1, (3, L, B, H))
    assert np.array_equal(twin.step(w, ax, h, 0.7), cell.step(w, ax, h, 0.7))


def test_without_keeps_the_newton_cells_state():
    cell = NewtonGRUCell()
    twin = without(cell, FusedSequence)
    assert twin.stats is cell.stats and twin.config is cell.config
    assert has(twin, LayerNewton) and not has(twin, FusedSequence)


def test_bad_capabilities_are_refused():
    with pytest.raises(ConfigError, match="not a cell capability"):
        missing(get_cell("classic"), "fused_stack")
    with pytest.raises(ConfigError, match="hides a capability"):
        without(get_cell("classic"), Core)
    with pytest.raises(ConfigError, match="hides a capability"):
        without(get_cell("classic"), "fused_stack")


def test_one_layer_cell_has_no_layer_above():
    """Dahlquist's :class:`LayerNewton` is one layer: layer 0's structure, and a ConfigError for a
    layer above (which no solver asks of a one-layer cell)."""
    c = DahlquistCell()
    w = DahlquistWeights(np.array(-1.0))
    u = np.arange(6.0).reshape(2, 3)
    assert c.num_layers(w) == 1
    (layer,) = c.layer_states(u)
    assert layer.shape == (2, 3, 1) and np.shares_memory(layer, u)
    assert np.array_equal(c.join_layers([layer[1]]), u[1])
    with pytest.raises(ConfigError, match="one layer"):
        c.layer_inputs(w, 1, u)
    with pytest.raises(ConfigError, match="one layer"):
        c.layer_input_vjp(w, 1, (u,))
