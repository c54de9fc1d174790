"""Layer-parallel memory under mpiexec (``tests/test_mpi_odenet_block.py``): a rank's block model
(:meth:`ODENet.block`) stores only its layers, and computes the bits of the whole network.

On every rank: the sizes of the block's parameters (and of its gradient and the trainer's Adam
and SGD state); its gradient and loss equal to the whole network's with ``owned=True``
(bitwise); its pipelined serial forward equal to the whole network's serial forward (bitwise);
``gathered``/``gather_flat``/``local_flat`` round trips; a training run's history (loss, test loss
and accuracy) and checkpoint file equal to the full-allreduce path's (bitwise); a checkpoint
written on P ranks resumed on fewer (P - 1, or one process) with the same parameters and
optimizer state. Writes ``ok`` lines; any failure raises (``-m mpi4py`` ends all ranks).
Argument: a scratch directory."""
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from mgritnn.io import read_npz
from mgritnn.odenet import ODENet
from mgritnn.solvers import MGRITConfig, make_solver
from mgritnn.train import TrainConfig, Trainer
from owned_problems import BASE, FullTrainer
from mgritnn.train.checkpoint import block_cut

comm = MPI.COMM_WORLD
rank, P = comm.Get_rank(), comm.Get_size()
tmp = Path(sys.argv[1])


def same_everywhere(a):
    return all(np.array_equal(a, b) for b in comm.allgather(a))


# -- the block model: sizes, gradient, forward, gathers -------------------------------------------
N, w = 13, 5
m = ODENet(3, w, 4, N, activation="tanh", layer_init="independent", seed=1, tikhonov=1e-3,
           ddt_penalty=1e-2)
rng = np.random.default_rng(0)
X, y = rng.normal(size=(20, 3)), rng.integers(0, 4, 20)
solver = make_solver(MGRITConfig(levels=2, cf=2, max_iter=2, adjoint_max_iter=2), comm)
lo, hi = solver.local_steps(N)
b = m.block(solver)
row = w * (w + 1)
assert b.is_block and b.held_layers == (lo, hi) and b.params["layers"].shape == (hi - lo, w, w + 1)
assert b.flat.size == m.flat.size - (N - (hi - lo)) * row and b.full_size == m.flat.size
assert sum(comm.allgather(hi - lo)) == N
assert np.array_equal(b.params["layers"], m.params["layers"][lo:hi])
full_loss, full_grad, full_info = m.loss_and_grad_flat(X, y, solver, owned=True)
loss, grad, info = b.loss_and_grad_flat(X, y, solver, owned=True)
assert grad.shape == b.flat.shape
assert loss == full_loss and info["regularization"] == full_info["regularization"]
assert np.array_equal(grad, b.local_flat(full_grad))
assert np.array_equal(info["logits"], full_info["logits"])
assert b.grad_norm(grad, solver) == m.grad_norm(full_grad, solver)
assert np.array_equal(b.forward(X), m.forward(X, "serial"))        # pipelined, exact
g = b.gathered()
assert not g.is_block and np.array_equal(g.flat, m.flat)
g0 = b.gathered(root=0)
assert (g0 is None) == (rank != 0) and (g0 is None or np.array_equal(g0.flat, m.flat))
v = np.arange(m.flat.size, dtype=np.float64)
f0 = b.gather_flat(b.local_flat(v), root=0)
assert (f0 is None) == (rank != 0) and (f0 is None or np.array_equal(f0, v))
assert np.array_equal(b.gather_flat(b.local_flat(v)), v)
c = ODENet(3, w, 4, N, activation="tanh", seed=9).block(solver)
c.set_params(m.params)                          # the whole network's arrays: its rows
assert np.array_equal(c.flat, b.flat)
for width, depth in ((20, 13), (31, 50)):     # --clip's norm: the bits of the whole span's
    big = ODENet(3, width, 4, depth, seed=2)
    bb = big.block(solver)
    full = np.random.default_rng(rank).normal(size=big.flat.size)
    blo, bhi = bb.held_layers
    rows = big.layer_rows(full)
    rows[:blo] = 0
    rows[bhi:] = 0
    for s in big.shared_slices():
        full[s] = np.random.default_rng(7).normal(size=full[s].size)
    assert bb.grad_norm(bb.local_flat(full), solver) == big.grad_norm(full, solver)
conv = ODENet(16, None, 3, 11, activation="tanh", layer="conv", channels=2, image_shape=(1, 4, 4),
              layer_init="independent", seed=3, tikhonov=1e-3, ddt_penalty=1e-2)
cb = conv.block(solver)
clo, chi = solver.local_steps(11)
assert cb.params["layers"].shape == (chi - clo, 2, 19)
Xc, yc = rng.normal(size=(6, 16)), rng.integers(0, 3, 6)
ref = conv.loss_and_grad_flat(Xc, yc, solver, owned=True)
got = cb.loss_and_grad_flat(Xc, yc, solver, owned=True)
assert got[0] == ref[0] and np.array_equal(got[1], cb.local_flat(ref[1]))
assert np.array_equal(cb.forward(Xc), conv.forward(Xc, "serial"))
assert np.array_equal(cb.gathered().flat, conv.flat)
print(f"rank {rank}: ok block", flush=True)


# -- training stores the block only, and gives the full-allreduce path's bits ---------------------


def trainer(cls, c=comm, **kw):
    return cls(TrainConfig(**dict(BASE, **kw)), out=lambda *a: None, progress=False, comm=c)


for opt, n_state in (("adam", 2), ("sgd", 1)):
    ck, fck = tmp / f"block-{opt}.npz", tmp / f"full-{opt}.npz"
    kw = dict(optimizer=opt, momentum=0.9) if opt == "sgd" else dict(optimizer=opt)
    t = trainer(Trainer, checkpoint=str(ck), **kw)
    lo, hi = t.solver.local_steps(8)
    full_size = t.model.full_size
    assert t.owned and t.model.held_layers == (lo, hi)
    assert t.model.flat.size == full_size - (8 - (hi - lo)) * 4 * 5
    states = t.layers.state_arrays(t.model, t.opt_state)
    assert len(states) == n_state and all(a.shape == t.model.flat.shape for a in states)
    model, hist = t.fit()
    assert model.flat.size == full_size and same_everywhere(model.flat)
    fmodel, fhist = trainer(FullTrainer, checkpoint=str(fck), **kw).fit()
    assert np.array_equal(model.flat, fmodel.flat)
    for k in ("loss", "test_loss", "test_acc", "train_acc"):
        assert hist[-1][k] == fhist[-1][k], (k, hist[-1][k], fhist[-1][k])
    if rank == 0:                               # the same file as the full path's
        a, meta = read_npz(ck)
        fa, fmeta = read_npz(fck)
        assert sorted(a) == sorted(fa) and all(np.array_equal(a[k], fa[k]) for k in a)
        assert meta["model"] == fmeta["model"]
    print(f"rank {rank}: ok train {opt}", flush=True)

if P == 4:                  # 2 data groups x 2 time ranks: the groups' blocks are alike
    t = trainer(Trainer, data_parallel=2)
    assert t.owned and t.model.is_block and t.model.held_layers == t.solver.local_steps(8)
    model, hist = t.fit()
    fmodel, fhist = trainer(FullTrainer, data_parallel=2).fit()
    assert np.array_equal(model.flat, fmodel.flat) and same_everywhere(model.flat)
    assert hist[-1]["test_loss"] == fhist[-1]["test_loss"]
print(f"rank {rank}: ok data groups", flush=True)

# -- a checkpoint of P ranks resumes on P - 1 (one process for P = 2) ------------------------------
ck = tmp / "block-adam.npz"
arrays, _ = read_npz(ck)
sub = comm.Split(0 if rank < P - 1 else MPI.UNDEFINED, rank)
if sub != MPI.COMM_NULL:
    t = trainer(Trainer, c=sub, checkpoint=str(ck), epochs=2, resume=True)
    assert t.start_epoch == 1
    assert t.owned == (P - 1 > 1) and t.model.is_block == (P - 1 > 1)
    assert np.array_equal(t.model.flat, t.model.local_flat(np.concatenate(
        [np.ravel(arrays[n]) for n in t.model.params])))
    for key in ("m", "v"):
        got = getattr(t.opt_state, key)
        assert got.shape == t.model.flat.shape
        assert np.array_equal(got, t.model.local_flat(arrays[f"optim/{key}"]))
    if t.owned:                 # the checkpoint read row by row: this rank's rows only
        part, _ = t.checkpointer.read(lambda meta: block_cut(meta, t.solver.local_steps))
        blo, bhi = t.model.held_layers
        assert np.array_equal(part["layers"], arrays["layers"][blo:bhi])
        assert np.array_equal(part["optim/m"], t.model.local_flat(arrays["optim/m"]))
    model, hist = t.fit()
    assert len(hist) == 2 and model.flat.size == model.full_size
    print(f"rank {rank}: ok resume on {P - 1}", flush=True)
else:
    print(f"rank {rank}: ok resume on {P - 1}", flush=True)
