"""Does MGRIT still give serial's gradient once the model has trained?

MGRIT's convergence depends on the recurrence it solves, and training changes that recurrence. This
script trains with the serial sweep for ``--epochs`` epochs, then, batch by batch through the next
epoch (the serial trainer keeps training), computes each batch's gradient both with the serial
sweep and with MGRIT at the same parameters, and prints per batch: the true lengths, the two losses,
the relative gradient error ``|g_mgrit - g_serial| / |g_serial|``, ``SolveStats.grew`` and the
forward residual after each cycle. With ``--also-without-lengths`` it repeats the comparison
with the padding solved as data (uniform step size), at the same parameters.

Commands (from the repository root)::

    PYTHONPATH=. python perf/mgrit_gradient_drift.py --data ../shared/data/watch_exercise.npz \\
        --hidden 32 --batch-size 8 --epochs 3 --max-iter 20 --also-without-lengths
    PYTHONPATH=. python perf/mgrit_gradient_drift.py --data ../shared/data/watch_exercise.npz \\
        --hidden 32 --batch-size 8 --epochs 3 --max-iter 20 --cell implicit

Found on WatchExercise (2026-12-03, float32, 20 cycles, epoch 4's 13 batches; the table is in
docs/results.md, "Variable-length data"): with the paper's 3 levels and cf 4, classic cell,
relative gradient errors up to 3.7 and the residual rising (``grew``) on 6 batches (without the lengths: up to 29, on 11); implicit cell
up to 1.3, on 4. With ``--cf 2`` or ``--levels 2`` the implicit cell converges on every batch
(errors below 1e-4): the coarsest level's long steps do not follow the trained recurrence.
"""
import argparse

import numpy as np

from mgritnn.solvers import get_solver
from mgritnn.train import TrainConfig, Trainer


def _relative(g, ref):
    return float(np.linalg.norm(g - ref) / np.linalg.norm(ref))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="serial epochs before the comparison")
    p.add_argument("--cell", default="classic")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-iter", type=int, default=20, help="MGRIT cycles, forward and adjoint")
    p.add_argument("--atol", type=float, default=0.0)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--cf", type=int, default=4)
    p.add_argument("--relax", default="FCF")
    p.add_argument("--also-without-lengths", action="store_true")
    a = p.parse_args(argv)
    cfg = TrainConfig(data=a.data, hidden=a.hidden, batch_size=a.batch_size, seed=a.seed,
                      epochs=a.epochs + 1, cell=a.cell, dtype=a.dtype)
    mgrit = get_solver("mgrit", dict(max_iter=a.max_iter, adjoint_max_iter=a.max_iter,
                                     atol_l2=a.atol, levels=a.levels, cf=a.cf, relax=a.relax))
    with Trainer(cfg, progress=False) as tr:
        for epoch in range(a.epochs):
            tr.train_epoch(epoch)
        for b in tr.batches(a.epochs):
            m, pad = tr.model, tr.ds.pad
            runs = [("lengths", b.lengths)]
            if a.also_without_lengths and b.lengths is not None:
                runs.append(("no lengths", None))
            for name, lengths in runs:
                l0, g0, _ = m.loss_and_grad_flat(b.X, b.y, "serial", lengths=lengths, pad=pad)
                l1, g1, info = m.loss_and_grad_flat(b.X, b.y, mgrit, lengths=lengths, pad=pad,
                                                    strict=False)
                f = info["forward"]
                L = "" if lengths is None else f" L {sorted(lengths.tolist())}"
                print(f"batch {b.index + 1:3d} {name:10s}{L} loss {l0:.5f} / {l1:.5f} "
                      f"grad err {_relative(g1, g0):.2e} grew {f.grew!s:5s} residuals "
                      + " ".join(f"{r:.1e}" for r in f.history), flush=True)
            tr.step(b)


if __name__ == "__main__":
    main()
