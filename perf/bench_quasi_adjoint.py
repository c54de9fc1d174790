"""quasi-DEER's training step with the iterative adjoint (no dense Jacobians) against the serial
step, on one process (issue 25, item 2).

Shapes (B, T, I, H, L): R1 = (1, 65536, 8, 64, 1) and R2 = (4, 16384, 6, 32, 1); a
:class:`GRUClassifier` (classic cell, float32, 2 classes, default initialization, seed 0), X
standard normal, labels 0/1 (seed 0); or a training checkpoint's first ``--batch`` test
sequences (``--checkpoint``, read as ``perf/bench_elk.py`` reads them: trained weights).

Timed, interleaved round by round (``harness.timeit_many``: the first call apart, so that
compilation is not in the medians), ``model.loss_and_grad_flat(X, y, solver)`` (forward +
gradient) for

* ``serial``: the sweep and BPTT;
* ``quasi-deer``: ``DEERConfig(quasi=True)`` (float32 defaults: atol 1e-4, rtol 1e-3, at most 50
  iterations, fallback on), whose gradient is now the quasi adjoint (``adjoint="auto"``);
* ``quasi-deer-dense`` (``--dense``): the same forward with the old dense adjoint
  (``adjoint="dense"``), for comparison (slow: about 30 s at R1).

Reported per solver: the median and min seconds, the ratio to serial (median of the per-round
ratios), the medians of the forward's and of the gradient's part (the model's ``time_forward``,
``time_adjoint``: head and weight gradients included), the forward and adjoint iterations,
status/fallback, and the gradient's errors against
serial (max abs error relative to the largest entry; cosine). Run with one thread::

    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python perf/bench_quasi_adjoint.py --shapes R1,R2 --repeats 5
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mgritnn  # noqa: E402
from mgritnn.solvers import DEERConfig  # noqa: E402
from harness import timeit_many  # noqa: E402

SHAPES = {"R1": (1, 65536, 8, 64, 1), "R2": (4, 16384, 6, 32, 1)}


def make_problem(shape, seed=0):
    """(model, X (B, T, I), y (B,), extra kwargs) for ``shape`` = (B, T, I, H, L)."""
    B, T, I, H, L = shape
    m = mgritnn.GRUClassifier(I, H, 2, num_layers=L, cell="classic", dtype="float32", seed=seed)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, T, I)).astype(np.float32)
    y = rng.integers(0, 2, B)
    return m, X, y, {}


def checkpoint_problem(path, batch):
    """(model, X, y, kwargs) of a checkpoint's first ``batch`` test sequences (as
    ``perf/bench_elk.py`` reads them: standardized, their true lengths)."""
    from bench_elk import batch_of
    m, X, y, lengths, pad = batch_of(path, batch)
    return m, np.ascontiguousarray(X, np.float32), y, ({} if lengths is None else
                                                       dict(lengths=lengths, pad=pad))


def bench(name, shape, args):
    if args.checkpoint:
        m, X, y, kw = checkpoint_problem(args.checkpoint, args.batch)
        shape = (X.shape[0], X.shape[1], X.shape[2], m.hidden_size, m.num_layers)
    else:
        m, X, y, kw = make_problem(shape)
    solvers = {"serial": "serial", "quasi-deer": DEERConfig(quasi=True)}
    if args.dense:
        solvers["quasi-deer-dense"] = DEERConfig(quasi=True, adjoint="dense")
    out = {}
    ref = m.loss_and_grad_flat(X, y, "serial", **kw)
    for s, cfg in solvers.items():
        t0 = time.perf_counter()
        loss, g, info = m.loss_and_grad_flat(X, y, cfg, strict=False, **kw)
        first = time.perf_counter() - t0
        g0 = ref[1].astype(np.float64)
        g1 = g.astype(np.float64)
        f, a = info["forward"], info["adjoint"]
        out[s] = dict(first_call_s=first,
                      fwd_iters=f.iterations, fwd_status=f.status, fwd_fallback=f.fallback,
                      adj_iters=a.iterations, adj_status=a.status, adj_fallback=a.fallback,
                      adj_message=a.message, time_forward=info["time_forward"],
                      time_adjoint=info["time_adjoint"],
                      grad_max_rel_err=float(np.abs(g1 - g0).max() / np.abs(g0).max()),
                      grad_cos=float(g1 @ g0 / (np.linalg.norm(g1) * np.linalg.norm(g0))))
    split = {s: ([], []) for s in solvers}

    def call(s, cfg):
        info = m.loss_and_grad_flat(X, y, cfg, strict=False, **kw)[2]
        split[s][0].append(info["time_forward"])
        split[s][1].append(info["time_adjoint"])

    fns = {s: (lambda s=s, cfg=cfg: call(s, cfg)) for s, cfg in solvers.items()}
    t = timeit_many(fns, repeats=args.repeats, warmup=0, pause=0.02)
    for s in solvers:
        f, a = (np.array(v[-args.repeats:]) for v in split[s])
        out[s].update(median_s=t[s]["median_s"], min_s=t[s]["min_s"], times_s=t[s]["times_s"],
                      forward_median_s=float(np.median(f)), adjoint_median_s=float(np.median(a)))
        out[s]["ratio"] = float(np.median(np.array(t[s]["times_s"])
                                          / np.array(t["serial"]["times_s"])))
    rec = dict(shape=name, BTIHL=shape, checkpoint=args.checkpoint, date=time.strftime("%Y-%m-%d"),
               threads=os.environ.get("NUMBA_NUM_THREADS"), results=out)
    return rec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="R1,R2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dense", action="store_true", help="also the dense adjoint (slow at R1)")
    p.add_argument("--checkpoint", default=None,
                   help="a training checkpoint: its first --batch test sequences instead of R1/R2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--T", type=int, default=None, help="override the shapes' T")
    p.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = p.parse_args(argv)
    names = ["ckpt"] if args.checkpoint else args.shapes.split(",")
    for name in names:
        shape = SHAPES.get(name)
        if args.T and shape:
            shape = (shape[0], args.T) + shape[2:]
        rec = bench(name, shape, args)
        for s, r in rec["results"].items():
            print(f"{name} {s:17s} median {r['median_s']:.3f} s  x{r['ratio']:.2f} serial  "
                  f"iters fwd {r['fwd_iters']} adj {r['adj_iters']}  status {r['fwd_status']}/"
                  f"{r['adj_status']} fb {r['fwd_fallback']}/{r['adj_fallback']}  "
                  f"fwd {r['forward_median_s']:.3f} s adj {r['adjoint_median_s']:.3f} s  "
                  f"grad err {r['grad_max_rel_err']:.2e} cos {r['grad_cos']:.6f}", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
