"""Owned layers under mpiexec (``tests/test_mpi_odenet_owned.py``): the ODENet's ranks own their
layers' updates. On every rank, for Adam, SGD with momentum and Adam with --clip, a few MGRIT
steps train to the parameters of the full-allreduce path (``Trainer._own_layers = False``):
bitwise (clipping: to round-off, its norm's sums are split over the ranks); after the sync every
rank holds them. The gradient each rank holds (own layer rows = the full gradient's, the other
rows zero, shared parts equal), the regularization's value and gradient against the one-process
ones, and a checkpoint/resume that continues bit for bit. Writes ``ok`` lines; any failure
raises (``-m mpi4py`` ends all ranks). Argument: a scratch directory."""
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from mgritnn.odenet import ODENet
from mgritnn.solvers import MGRITConfig, make_solver
from mgritnn.train import TrainConfig, Trainer
from owned_problems import BASE, FullTrainer

comm = MPI.COMM_WORLD
rank, P = comm.Get_rank(), comm.Get_size()
tmp = Path(sys.argv[1])

# -- the gradient on each rank, and the regularization ----------------------------------------
m = ODENet(3, 5, 4, 13, activation="tanh", layer_init="independent", seed=1, tikhonov=1e-3,
           ddt_penalty=1e-2)
rng = np.random.default_rng(0)
X, y = rng.normal(size=(20, 3)), rng.integers(0, 4, 20)
solver = make_solver(MGRITConfig(levels=2, cf=2, max_iter=2, adjoint_max_iter=2), comm)
full_loss, full_grad, full_info = m.loss_and_grad_flat(X, y, solver)
lo, hi = solver.local_steps(m.depth)
layers, keep = m.params["layers"], m.params["layers"].copy()
others = np.ones(m.depth, bool)
others[lo:hi] = False
layers[others] = 123.0                       # stale rows that a rank does not own: never read
loss, grad, info = m.loss_and_grad_flat(X, y, solver, owned=True)
g, gf = m.unflatten(grad)["layers"], m.unflatten(full_grad)["layers"]
assert loss == full_loss and info["regularization"] == full_info["regularization"]
assert np.array_equal(g[lo:hi], gf[lo:hi]) and not g[others].any()
for s in m.shared_slices():
    assert np.array_equal(grad[s], full_grad[s])
m.sync_layers(solver)
assert np.array_equal(layers, keep)
one = np.zeros_like(m.flat)                  # one process: all layers here
reg = m.regularization(one)
assert reg == info["regularization"]
ref = np.zeros_like(m.flat)                  # the owned rows' share of it, added by their owner
mine = np.zeros_like(m.flat)
m._reg_terms(mine, lo, hi, layers[lo - 1] if lo else None, layers[hi] if hi < m.depth else None,
             shared=True)
assert np.array_equal(m.unflatten(mine)["layers"][lo:hi], m.unflatten(one)["layers"][lo:hi])
norm = m.grad_norm(grad, solver)
assert abs(norm - np.linalg.norm(full_grad)) <= 1e-13 * norm
print(f"rank {rank}: ok gradient", flush=True)


# -- training: owned against the full allreduce -------------------------------------------------


def run(cls, **kw):
    t = cls(TrainConfig(**dict(BASE, **kw)), out=lambda *a: None, progress=False, comm=comm)
    model, hist = t.fit()
    return t, model.flat.copy(), hist


def same_everywhere(a):
    return all(np.array_equal(a, b) for b in comm.allgather(a))


for name, kw, exact in [("adam", {}, True), ("sgd", dict(optimizer="sgd", momentum=0.9), True),
                        ("clip", dict(clip=0.05), False)]:
    t, owned, hist = run(Trainer, **kw)
    assert t.owned
    ft, full, fhist = run(FullTrainer, **kw)
    assert not ft.owned
    assert same_everywhere(owned)
    if exact:
        assert np.array_equal(owned, full), np.abs(owned - full).max()
        assert hist[-1]["loss"] == fhist[-1]["loss"]
    else:
        np.testing.assert_allclose(owned, full, rtol=1e-12, atol=1e-15)
    print(f"rank {rank}: ok {name}", flush=True)

# -- a rank stores only its own rows (Adam, SGD with momentum), the whole network after the sync --
for opt in ("adam", "sgd"):
    t = Trainer(TrainConfig(**dict(BASE, optimizer=opt)), out=lambda *a: None, progress=False,
                comm=comm)
    lo, hi = t.solver.local_steps(t.model.depth)
    layers = t.model.params["layers"]
    assert t.model.is_block and t.model.held_layers == (lo, hi) and layers.shape[0] == hi - lo
    before = layers.copy()
    for batch in t.batches(0):
        t.step(batch)
    assert not np.array_equal(layers, before)
    states = t.layers.state_arrays(t.model, t.opt_state)
    assert states and all(a.shape == t.model.flat.shape for a in states)
    t.model = t.layers.gathered(t.model)
    assert same_everywhere(t.model.flat) and t.model.params["layers"].shape[0] == t.model.depth
    assert np.array_equal(t.model.params["layers"][lo:hi], layers)
    print(f"rank {rank}: ok still {opt}", flush=True)

# -- weight decay keeps the full allreduce -------------------------------------------------------
t = Trainer(TrainConfig(**dict(BASE, weight_decay=1e-3)), out=lambda *a: None, progress=False,
            comm=comm)
assert not t.owned

# -- checkpoint / resume bit for bit (owned, Adam and SGD) ---------------------------------------
for opt in ("adam", "sgd"):
    ck1, ck2 = tmp / f"straight-{opt}.npz", tmp / f"resumed-{opt}.npz"
    _, straight, _ = run(Trainer, optimizer=opt, epochs=2, checkpoint=str(ck1))
    run(Trainer, optimizer=opt, epochs=1, checkpoint=str(ck2))
    t = Trainer(TrainConfig(**dict(BASE, optimizer=opt, epochs=2, checkpoint=str(ck2),
                                   resume=True)), out=lambda *a: None, progress=False, comm=comm)
    lo, hi = t.solver.local_steps(t.model.depth)
    start, stop = t.model._layer_span
    for a in t.layers.state_arrays(t.model, t.opt_state):      # the loaded state: this rank's rows only
        rows = a[start:stop].reshape(t.model.params["layers"].shape)
        assert rows.shape[0] == hi - lo and rows.any()
    resumed = t.fit()[0].flat
    assert np.array_equal(straight, resumed)
    print(f"rank {rank}: ok resume {opt}", flush=True)
