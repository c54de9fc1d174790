"""quasi-DEER's forward and its iterative adjoint on trained weights: iterations and gradient error.

For each training checkpoint given (e.g. from ``perf/bench_elk.py --train``, or
``mgritnn train ... --checkpoint``), on its first ``--batch`` test sequences (read as
``perf/bench_elk.py`` reads them): ``DEERConfig(quasi=True, max_iter=--max-iter, fallback=False)``
(float32 default tolerances) with the quasi adjoint and with the dense adjoint, against serial
BPTT. Prints and appends one JSON line per checkpoint: forward and adjoint iterations and
statuses, the gradient's error relative to its largest entry (quasi vs serial, dense vs serial,
quasi vs dense: the last isolates the adjoint's tolerance from the forward's), wall seconds.

    NUMBA_NUM_THREADS=1 PYTHONPATH=perf python perf/quasi_adjoint_trained.py CK.npz ... \\
        --max-iter 1026 --out perf/results/quasi-adjoint-trained.jsonl
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_quasi_adjoint import checkpoint_problem  # noqa: E402
from mgritnn.solvers import DEERConfig  # noqa: E402


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-iter", type=int, default=1026)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    for path in args.checkpoints:
        m, X, y, kw = checkpoint_problem(path, args.batch)
        _, g0, _ = m.loss_and_grad_flat(X, y, **kw)
        rec = dict(checkpoint=os.path.basename(path), T=int(X.shape[1]), batch=int(X.shape[0]))
        g = {}
        for adj in ("quasi", "dense"):
            cfg = DEERConfig(quasi=True, max_iter=args.max_iter, fallback=False, adjoint=adj)
            t0 = time.perf_counter()
            _, g[adj], info = m.loss_and_grad_flat(X, y, cfg, strict=False, **kw)
            f, a = info["forward"], info["adjoint"]
            rec.update({f"{adj}_wall_s": time.perf_counter() - t0, "fwd_iters": f.iterations,
                        "fwd_status": f.status})
            if adj == "quasi":
                rec.update(adj_iters=a.iterations, adj_status=a.status, adj_message=a.message)
        rec.update(quasi_vs_serial=rel(g["quasi"], g0), dense_vs_serial=rel(g["dense"], g0),
                   quasi_vs_dense=rel(g["quasi"], g["dense"]))
        print(json.dumps(rec), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
