"""The trainer's rescue under mpiexec (``tests/test_rescue.py``): MGRIT over the time ranks
diverges in every step of an epoch (recurrent weights of gain 3), the serial sweep over the same
ranks redoes each step, and the parameters equal a one-process serial run's on every rank; the
epoch's record counts the steps. Rank 0 writes ``ok <ranks>`` once every rank has passed; any
failure raises (``-m mpi4py`` ends all ranks)."""
import numpy as np
from mpi4py import MPI

from mgritnn.train import TrainConfig, Trainer

SETTINGS = dict(epochs=1, hidden=8, seq_len=512, batch_size=4, max_batches=2, seed=0,
                dtype="float64", gradient_check=0, solver="mgrit",
                solver_options=dict(max_iter=40, adjoint_max_iter=40, atol_l2=0.0))


def rotate(t, gain=3.0):
    H = t.model.params["weight_hh_l0"].shape[1]
    Q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(H, H)))
    t.model.params["weight_hh_l0"][2 * H:] = gain * Q


def trained(settings, comm):
    with Trainer(TrainConfig.from_settings(settings), out=lambda *a: None, progress=False,
                 comm=comm) as t:
        rotate(t)
        rec = t.train_epoch(0)
        return t.model.flat.copy(), rec


flat, rec = trained(SETTINGS, MPI.COMM_WORLD)
ref, _ = trained(dict(SETTINGS, solver="serial", solver_options={}), MPI.COMM_SELF)
assert rec["rescued"]["steps"] == 2, rec.get("rescued")
np.testing.assert_allclose(flat, ref, rtol=1e-11, atol=1e-13)
done = MPI.COMM_WORLD.gather(MPI.COMM_WORLD.Get_rank(), root=0)   # every rank got here
if MPI.COMM_WORLD.Get_rank() == 0:
    print(f"ok {len(done)}", flush=True)
