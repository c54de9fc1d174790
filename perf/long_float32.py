"""Exploding gradients at T = 16384 and 65536 in float32: does every adjoint give the exact direction?

For each length, a float32 GRU classifier whose adjoint grows exponentially backward in time
(``tests/scaled_problems.exploding_model``: a chaotic recurrence of gain ``g``; the true
gradient's norm far beyond float32's range) gets its gradient from each route, with the adjoint's
scale kept apart (``loss_and_grad_flat(..., scaled=True)``), and is compared with the serial
sweep's scaled float32 gradient (whose direction ``tests/test_scaled_adjoint.py`` checks against a
float64 BPTT twin linearized at the same trajectory; a float64 *forward* is no reference here: the
recurrence is chaotic, so float32 and float64 trajectories part after a few hundred steps): the
cosine of the true directions, the exponent E (the gradient is 2^E times what is returned), and
whether the plain float32 result (no scaling) would have been finite.

Routes: ``serial`` (one process), ``mgrit-train`` (the training preset over the ranks of the
launch; where its adjoint gives inf it falls back to the pipelined scaled sweep), ``deer`` and
``quasi-deer`` (the same fallback where the dense scan overflows or the quasi adjoint misses).

    mpiexec -n 2 python perf/long_float32.py --lengths 16384,65536 --gains 2.0,1.9 \
        --routes serial,mgrit-train,deer,quasi-deer --out perf/results/long-float32.jsonl

Prints one row per (length, route) on rank 0 and appends the records to ``--out``.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mgritnn.distributed import get_comm  # noqa: E402
from mgritnn.solvers import make_solver  # noqa: E402
from scaled_problems import exploding_model, true_direction  # noqa: E402

ROUTES = {"serial": lambda comm: "serial",
          "mgrit-train": lambda comm: make_solver("mgrit", comm, options={"preset": "train"}),
          "deer": lambda comm: make_solver("deer", comm),
          "quasi-deer": lambda comm: make_solver("quasi-deer", comm)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="16384,65536")
    ap.add_argument("--gains", default="2.0,1.9", help="one per length")
    ap.add_argument("--routes", default="serial,mgrit-train")
    ap.add_argument("--cell", default="classic")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    comm = get_comm(None)
    rank = comm.Get_rank()
    rows = []
    for T, gain in zip((int(t) for t in a.lengths.split(",")),
                       (float(g) for g in a.gains.split(","))):
        m, X, y = exploding_model(a.cell, 1, T=T, gain=gain)
        ref = None
        if rank == 0:
            _, g_ref, i_ref = m.loss_and_grad_flat(X, y, scaled=True)
            ref = true_direction(g_ref)
            with np.errstate(over="ignore", invalid="ignore"):
                plain = m.loss_and_grad_flat(X, y)[1]
            base = dict(T=T, gain=gain, cell=a.cell, ranks=comm.Get_size(),
                        log2_norm=float(np.log2(np.linalg.norm(g_ref.astype(np.float64)))
                                        + i_ref["exponent"]),
                        plain_float32_finite=bool(np.all(np.isfinite(plain))))
        for route in a.routes.split(","):
            solver = ROUTES[route](comm)
            if route == "serial" and rank != 0:
                continue
            t0 = time.perf_counter()
            with np.errstate(over="ignore", invalid="ignore"):
                loss, g, info = m.loss_and_grad_flat(X, y, solver, scaled=True, strict=False)
            sec = time.perf_counter() - t0
            if rank == 0:
                finite = bool(np.all(np.isfinite(g)))
                cos = float(true_direction(g) @ ref) if finite else float("nan")
                fa = info["adjoint"]
                rows.append(dict(base, route=route, exponent=int(info["exponent"]), finite=finite,
                                 cosine=cos, seconds=sec, adjoint_status=int(fa.status),
                                 adjoint_fallback=bool(fa.fallback),
                                 forward_fallback=bool(info["forward"].fallback)))
                r = rows[-1]
                print(f"T={T:6d} gain {gain:g} {route:12s} ranks {r['ranks']}: |g| = 2^"
                      f"{r['log2_norm']:.0f}, plain float32 finite {r['plain_float32_finite']}; "
                      f"E {r['exponent']:4d}, finite {finite}, cosine {cos:.9f}, adjoint fallback "
                      f"{r['adjoint_fallback']}, {sec:.1f} s", flush=True)
    if rank == 0 and a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
