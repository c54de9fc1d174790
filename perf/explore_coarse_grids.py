"""Which coarse grid still converges on trained weights? Gradient cosine per MGRIT setting.

Trains the embedded task serially for EPOCHS epochs (seq-len T, batch 4, hidden 32, lr 1e-3,
clip 1), then computes the gradient of 8 training sequences with the serial sweep and with MGRIT
in several settings at k = 1, 2, 4, 8 forward and adjoint cycles (zero initial guess, no early
stop), printing the cosine, the relative error, the step evaluations (one process) and the
residual histories of k = 8. Results: ``perf/results/parity-2026-12-07/explore.txt``.

Command::

    python perf/explore_coarse_grids.py implicit 4096 3     # CELL T EPOCHS [COARSE_CELL ...]

With COARSE_CELL names (e.g. ``implicit matched-implicit``) each setting runs with each coarse
cell (default: the fine cell's own, the implicit GRU).
"""
import sys, time, numpy as np
from mgritnn.train import TrainConfig, Trainer
from mgritnn.solvers.mgrit import MGRITConfig
cell = sys.argv[1]; T = int(sys.argv[2]); ep = int(sys.argv[3])
coarse_cells = sys.argv[4:] or [None]
cfg = TrainConfig(seq_len=T, batch_size=4, cell=cell, hidden=32, epochs=ep+1, lr=1e-3, clip=1.0, seed=0)
with Trainer(cfg, progress=False) as tr:
    for e in range(ep):
        tr.train_epoch(e)
    m = tr.model
    bs = list(tr.batches(ep))[:3]
    Xb = np.concatenate([b.X for b in bs[:2]]); yb = np.concatenate([b.y for b in bs[:2]])
    l0, g0, _ = m.loss_and_grad_flat(Xb, yb, "serial")
    print("serial loss", l0, "|g|", np.linalg.norm(g0))
    settings = {
      "L2cf4F": dict(levels=2, cf=4, relax="F"),
      "L2cf4FCF": dict(levels=2, cf=4, relax="FCF"),
      "L2cf2FCF": dict(levels=2, cf=2, relax="FCF"),
      "L2cf2F": dict(levels=2, cf=2, relax="F"),
      "L3cf4FCF": dict(levels=3, cf=4, relax="FCF"),
      "L2cf4FCFmean": dict(levels=2, cf=4, relax="FCF", coarse_input="mean"),
      "L2cf8FCF": dict(levels=2, cf=8, relax="FCF"),
      "L3cf2F": dict(levels=3, cf=2, relax="F"),
    }
    if coarse_cells != [None]:       # the settings that matter, with each coarse cell
        settings = {f"{k} coarse {cc}": dict(v, coarse_cell=cc) for cc in coarse_cells
                    for k, v in settings.items() if k in ("L2cf4F", "L2cf2F", "L3cf4FCF",
                                                          "L2cf8FCF", "L3cf2F")}
    for name, s in settings.items():
        row = []
        for k in (1, 2, 4, 8):
            c = MGRITConfig(max_iter=k, adjoint_max_iter=k, atol_l2=0, **s)
            l, g, info = m.loss_and_grad_flat(Xb, yb, c, strict=False)
            cos = float(g @ g0 / np.linalg.norm(g) / np.linalg.norm(g0))
            row.append(f"k={k}: cos {cos:+.3f} rel {np.linalg.norm(g-g0)/np.linalg.norm(g0):.2e} ev {info['forward'].step_evals}+{info['adjoint'].step_evals}")
        print(name, " | ".join(row))
        print("   fwd hist", " ".join(f"{h:.1e}" for h in info["forward"].history), " adj", " ".join(f"{h:.1e}" for h in info["adjoint"].history))
