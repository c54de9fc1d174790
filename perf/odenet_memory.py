"""Peak memory per rank of layer-parallel ODENet training (issue 22, item 4).

Run under mpiexec on P = 1, 2, 4 ranks (oversubscribed is fine: this measures memory, not
time)::

    mpiexec -n P python perf/odenet_memory.py [--width 220] [--depth 256] [--steps 3]

Each rank builds the trainer of an ODENet whose layer weights dominate (width w, depth N, dense
opening, Adam, MGRIT over the layers, a small batch), takes ``--steps`` Adam steps and reports:

* ``arrays``: the bytes of its parameters, one gradient and the optimizer's state (the arrays
  laid out like the parameters: ``model.flat``, a gradient like it, Adam's ``m`` and ``v``);
* ``peak``: the peak resident memory of the process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``);
* ``built``: what the peak had grown to (over ``base``) once the trainer was built (the whole
  network is initialized, then cut to the rank's block);
* ``base``: the peak before the run's trainer was built (the interpreter, numba, mpi4py, and the
  kernels compiled on a small network), so ``peak - base`` is what the run's model, optimizer
  and batches added.

Rank 0 prints one JSON line with every rank's numbers (MiB) and their largest. The script uses
only the trainer's public parts, so the same file measures a tree before and after a change.
"""
import argparse
import json
import resource
import sys
import time

import numpy as np


def maxrss_mib():
    """The peak resident memory of this process so far, MiB (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def config(width, depth, batch, steps, levels=2):
    from mgritnn.train import TrainConfig
    return TrainConfig(model="odenet", data="peaks", width=width, depth=depth,
                       activation="tanh", dtype="float64", threads=1, batch_size=batch,
                       max_batches=steps, epochs=1, lr=1e-3, optimizer="adam", solver="mgrit",
                       solver_options=dict(levels=levels, cf=2, relax="F", max_iter=2,
                                           adjoint_max_iter=2))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=220)
    ap.add_argument("--depth", type=int, default=256)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    from mpi4py import MPI

    from mgritnn.optim import state_to_arrays
    from mgritnn.train import Trainer
    comm = MPI.COMM_WORLD
    rank, P = comm.Get_rank(), comm.Get_size()
    quiet = dict(out=lambda *a: None, progress=False, comm=comm)
    # the kernels, compiled (or loaded) on a small network first: not the run's memory
    small = Trainer(config(8, 8 * P, args.batch, 1), **quiet)
    for batch in small.batches(0):
        small.step(batch)
    del small
    comm.Barrier()
    base = maxrss_mib()
    t0 = time.perf_counter()
    t = Trainer(config(args.width, args.depth, args.batch, args.steps), **quiet)
    built = maxrss_mib()
    for batch in t.batches(0):
        t.step(batch)
    peak = maxrss_mib()
    flat = t.model.flat
    state = [a for a in state_to_arrays(t.opt_state).values() if np.shape(a) == flat.shape]
    arrays = (2 + len(state)) * flat.nbytes / 2 ** 20          # params + gradient + state
    lo, hi = t.solver.local_steps(args.depth)
    mine = dict(rank=rank, layers=[lo, hi], stored_layers=int(t.model.params["layers"].shape[0]),
                arrays=round(arrays, 2), params=round(flat.nbytes / 2 ** 20, 2),
                peak=round(peak, 1), base=round(base, 1), added=round(peak - base, 1),
                built=round(built - base, 1),
                seconds=round(time.perf_counter() - t0, 1))
    every = comm.gather(mine, root=0)
    if rank == 0:
        top = {k: max(r[k] for r in every) for k in ("arrays", "peak", "added", "params")}
        print(json.dumps(dict(P=P, width=args.width, depth=args.depth, batch=args.batch,
                              steps=args.steps, max=top, ranks=every)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
