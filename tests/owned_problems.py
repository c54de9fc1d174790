"""The layer-parallel ODENet training run shared by the owned-layer MPI scripts
(``tests/mpi/owned_case.py``, ``tests/mpi/block_case.py``)."""
from mgritnn.train import Trainer

#: A small ODENet run on Peaks: MGRIT over 8 layers, two levels, three batches of one epoch.
BASE = dict(model="odenet", data="peaks", width=4, depth=8, activation="smoothrelu",
            dtype="float64", threads=1, batch_size=500, max_batches=3, epochs=1, lr=0.02,
            tikhonov=1e-4, ddt_penalty=1e-3, layer_init="independent", solver="mgrit",
            solver_options=dict(levels=2, cf=2, relax="F", max_iter=2, adjoint_max_iter=2))


class FullTrainer(Trainer):
    """The trainer with every rank holding and updating every layer (the full allreduce): the
    reference of the owned-layer paths."""
    _own_layers = False
