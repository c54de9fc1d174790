"""Block models (layer-parallel memory) on one process: what needs no MPI. The block models
themselves are tested under mpiexec (``tests/test_mpi_odenet_block.py``)."""
import numpy as np

from mgritnn.memory import odenet_memory_estimate
from mgritnn.odenet import ODENet
from mgritnn.solvers import make_solver
from mgritnn.train.owned import OwnedLayers


def test_one_process_keeps_the_whole_network():
    m = ODENet(3, 5, 4, 7, seed=1)
    serial = make_solver("serial")
    assert m.block(serial) is m and m.gathered() is m and not m.is_block
    assert m.held_layers == (0, 7) and m.full_size == m.flat.size
    assert m.local_flat(m.flat) is m.flat and m.gather_flat(m.flat) is m.flat
    owned = OwnedLayers(serial, True)
    assert owned.localize(m) is m and owned.gathered(m) is m
    model, arrays = OwnedLayers(serial, False).checkpoint_arrays(m, ())
    assert model is m and arrays == {}


def test_memory_estimate_counts_the_stored_parameters():
    whole = odenet_memory_estimate(10 ** 6, 100, "float64", batch=4, depth=8, optimizer="adam")
    block = odenet_memory_estimate(10 ** 6, 100, "float64", batch=4, depth=8, optimizer="adam",
                                   stored=250_000)
    assert whole["model"] == 4 * block["model"] == 4 * 8 * 10 ** 6
    assert whole["initialization"] == block["initialization"]      # the whole network is built
