"""What one Newton iteration of DEER / quasi-DEER costs against one serial forward sweep.

For each shape (float32, ``cell="implicit"``, one process, ``--threads`` numba threads) this times,
interleaved (:func:`harness.timeit_many`, medians, first calls apart):

* ``serial``: the serial solver's forward sweep (no gates kept);
* ``quasi-deer k``: the quasi-DEER forward solve stopped after k = 1 and k = 2 Newton iterations
  (no fallback); their difference is the cost of one iteration;
* ``deer k`` likewise with the dense Jacobian (``--dense``; its scan costs O(T B H^3));
* the parts of a quasi-DEER iteration: the one-pass linearization (step, diagonal Jacobian and
  offset, :meth:`GRUCell.layer_newton_diag`), the diagonal scan and the update check.

Commands (from the repository root)::

    PYTHONPATH=. python perf/deer_iteration.py --shapes R1,R2
    PYTHONPATH=. python perf/deer_iteration.py --shapes R2 --dense
"""
import argparse
import contextlib
import io
import sys

import numpy as np

try:  # run as ``python perf/deer_iteration.py`` (perf/ on sys.path) or as a module
    import harness
    from bench_regimes import SHAPES
except ImportError:  # pragma: no cover
    from perf import harness
    from perf.bench_regimes import SHAPES

import mgritnn
from mgritnn.cells import project
from mgritnn.solvers import DEERConfig, SerialSolver
from mgritnn.solvers import deer as _deer
from mgritnn.solvers.scan import linear_recurrence


def measure(shape, threads, repeats, dense):
    mgritnn.config.set_num_threads(threads)
    B, T, I, H, L = SHAPES[shape]
    m = mgritnn.GRUClassifier(I, H, 6, num_layers=L, cell="implicit", dtype="float32", seed=0)
    X = np.random.default_rng(1).normal(size=(T, B, I)).astype(np.float32)
    w = m.weights()
    ax = project(X, w.Wx[0], w.bx[0])
    h0 = np.zeros((L, B, H), np.float32)
    fns = {"serial": lambda s=SerialSolver(): s.forward(m.cell, w, X, h0, keep=False)}
    for k in (1, 2):
        q = DEERConfig(quasi=True, max_iter=k, fallback=False).make_solver()
        fns[f"quasi-deer {k}"] = lambda q=q: q.forward(m.cell, w, X, h0, keep=False)
        if dense:
            d = DEERConfig(max_iter=k, fallback=False).make_solver()
            fns[f"deer {k}"] = lambda d=d: d.forward(m.cell, w, X, h0, keep=False)
    if L == 1:                                   # the parts of one quasi-DEER iteration
        h = np.random.default_rng(2).uniform(-0.5, 0.5, (T, B, H)).astype(np.float32)
        dt = np.ones(T, np.float32)
        J, b, new = (np.empty((T, B, H), np.float32) for _ in range(3))
        err, change = np.empty(T), np.empty(T)
        fns["part: linearization"] = lambda: m.cell.layer_newton_diag(w, 0, ax, h, dt, 1.0, J, b)
        fns["part: diagonal scan"] = lambda: linear_recurrence(J, b, h0[0], out=new)
        fns["part: update check"] = lambda: _deer._update(new, h.copy(), 1e-4, 1e-3, err, change)
    res = harness.timeit_many(fns, repeats=repeats)
    return (B, T, I, H, L), res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", type=lambda s: s.split(","), default=["R1", "R2"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dense", action="store_true", help="also dense DEER (slow: O(T B H^3))")
    p.add_argument("--out", default=None, help="append JSON lines here")
    a = p.parse_args()
    print(f"command: PYTHONPATH=. python {' '.join(sys.argv)}")
    print("\n| shape (B, T, I, H, L) | serial forward sweep | quasi-DEER iteration | ratio "
          "| DEER iteration | ratio | parts of a quasi-DEER iteration |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for shape in a.shapes:
        dims, res = measure(shape, a.threads, a.repeats, a.dense)
        med = {k: v["median_s"] for k, v in res.items()}
        if a.out:
            with contextlib.redirect_stdout(io.StringIO()):        # the file only, not the table
                harness.emit(dict(kind="deer_iteration", shape=shape, dims=dims, threads=a.threads,
                                  timings=res, git=harness.git_state()), a.out)
        ser = med["serial"]
        qi = med["quasi-deer 2"] - med["quasi-deer 1"]
        di = med["deer 2"] - med["deer 1"] if a.dense else None
        parts = ", ".join(f"{k[6:]} {1e3 * v:.1f} ms" for k, v in med.items() if k.startswith("part"))
        dcols = f"{1e3 * di:.1f} ms | {di / ser:.2f}x" if di is not None else "- | -"
        print(f"| {shape} {dims} | {1e3 * ser:.1f} ms | {1e3 * qi:.1f} ms | {qi / ser:.2f}x | "
              f"{dcols} | {parts} |")


if __name__ == "__main__":
    main()
