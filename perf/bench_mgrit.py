"""MGRIT benchmarks: step evaluations per rank, and wall time per training step against serial.

Two questions, each a subcommand of the driver (which launches ``mpiexec`` itself):

``counts``
    Step evaluations per rank per training step (forward and adjoint; a state advanced by one step
    counts one) for N = 128, 3 levels, cf 4, 2/1 cycles, on P = 1, 2, 4, 8 ranks, counted by real
    MPI runs (no timing), with the error of the loss and the cosine between the MGRIT and the
    serial gradients (the accuracy the counts buy). Reference: the paper's code does about 98
    forward + 42 backward step evaluations per rank at P = 4 (Moon & Cyr, ICLR 2022, slides).

``time``
    Wall time of one training step (``loss_and_grad_flat`` + Adam) for serial (1 process, 2
    threads), MGRIT on 1 rank (2 threads) and MGRIT on 2 ranks (1 thread each), for the UCI HAR
    shape (B, T, I, H, L) = (100, 128, 9, 100, 2) and the long shape (16, T, 6, 32, 1) with
    T = 1024 and 4096. The configurations run one after another in rounds (serial, mgrit-1,
    mgrit-2, serial, ...) and each figure is the median over rounds of the per-round median of
    repeats; the first call (compilation or cache load) is reported apart.

``ranks``
    Time-parallel scaling of any solver (``--solvers serial,deer,quasi-deer``): wall time of one
    training step (``loss_and_grad_flat`` + Adam) on 1 rank with 1 and 2 threads and on 2 ranks
    with 1 thread each, for the DEER grid's small shapes (B = 16, one layer, input = hidden = nh,
    float32, ``--shapes deer1,deer4``: nh = 1 and 4 at T = 100000), in rounds, medians as above;
    with the Newton iterations and the error against the serial loss. Serial runs on one rank
    only (it cannot split the time axis).

Commands (from the repository root)::

    PYTHONPATH=. python perf/bench_mgrit.py counts
    PYTHONPATH=. python perf/bench_mgrit.py time --rounds 3 --repeats 5
    PYTHONPATH=. python perf/bench_mgrit.py ranks --rounds 2 --repeats 3

The ``worker`` subcommand is what the driver runs under mpiexec; it prints one JSON line (rank 0).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

try:  # run as ``python perf/bench_mgrit.py`` (perf/ on sys.path) or as ``python -m perf.bench_mgrit``
    import harness
except ImportError:  # pragma: no cover
    from perf import harness

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"uci_har": (100, 128, 9, 100, 2), "long1k": (16, 1024, 6, 32, 1),
          "long4k": (16, 4096, 6, 32, 1), "counts": (8, 128, 9, 16, 2),
          "deer1": (16, 100000, 1, 1, 1), "deer4": (16, 100000, 4, 4, 1)}


def worker(a):
    import numpy as np

    from mgritnn.solvers import DEERConfig, MGRITConfig

    comm, m, X, y, (B, T, I, H, L) = harness.mpi_problem(SHAPES[a.shape], a.threads, cell=a.cell,
                                                         dtype=a.dtype, T=a.T)
    rank, size = comm.Get_rank(), comm.Get_size()
    solver = {"serial": lambda: "serial",
              "mgrit": lambda: MGRITConfig(levels=a.levels, cf=a.cf, max_iter=a.max_iter,
                                           adjoint_max_iter=a.adjoint_max_iter),
              "deer": lambda: DEERConfig(), "quasi-deer": lambda: DEERConfig(quasi=True)}[a.solver]()
    step = harness.training_step(m, X, y, solver)    # every call solves the same problem

    first, times, (loss, g, info) = harness.time_ranks(comm, step, a.repeats)
    evals = comm.gather((info["forward"].step_evals, info["adjoint"].step_evals), root=0)
    tmax = statistics.median(times) if times else 0.0
    if size > 1:                                 # a step takes as long as its slowest rank
        from mpi4py import MPI
        tmax = comm.allreduce(tmax, op=MPI.MAX)
    if rank == 0:
        rec = dict(shape=a.shape, B=B, T=T, I=I, H=H, L=L, dtype=a.dtype, cell=a.cell,
                   solver=a.solver, ranks=size, threads=a.threads, step_s=tmax, first_call_s=first,
                   loss=float(loss), evals_per_rank=[list(e) for e in evals],
                   fwd_iters=info["forward"].iterations, fwd_residual=info["forward"].residual,
                   bwd_residual=info["adjoint"].residual)
        if a.compare:
            ls, gs, _ = m.loss_and_grad_flat(X, y)
            rec.update(loss_err=abs(float(loss) - ls),
                       grad_cos=float(g @ gs / np.linalg.norm(g) / np.linalg.norm(gs)),
                       grad_rel_err=float(np.linalg.norm(g - gs) / np.linalg.norm(gs)))
        print(json.dumps(rec), flush=True)


def _launch(ranks, args, timeout=3600):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    cmd = [sys.executable, "-m", "mpi4py", __file__, "worker", *args]
    if ranks > 1 or mpiexec:
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def counts(a):
    rows = []
    for P in a.ranks:
        rec = _launch(P, ["--shape", "counts", "--solver", "mgrit", "--levels", "3", "--cf", "4",
                          "--max-iter", "2", "--adjoint-max-iter", "1", "--repeats", "0", "--threads", "1",
                          "--dtype", "float64", "--compare"])
        ev = rec["evals_per_rank"]
        fwd, bwd = [e[0] for e in ev], [e[1] for e in ev]
        rows.append((P, max(fwd), statistics.mean(fwd), max(bwd), statistics.mean(bwd),
                     rec["loss_err"], rec["grad_cos"]))
        _emit(dict(kind="mgrit_counts", **rec), a.out)
    print("\n| P | fwd evals / rank (max) | (mean) | bwd evals / rank (max) | (mean) | fwd+bwd (max) "
          "| serial fwd+bwd / rank-equivalent | loss error | cos(grad, serial grad) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for P, fm, fa, bm, ba, le, gc in rows:
        print(f"| {P} | {fm} | {fa:.1f} | {bm} | {ba:.1f} | {fm + bm} | {2 * 128 // P} | {le:.1e} | {gc:.4f} |")


def timing(a):
    configs = [("serial", 1, 2), ("mgrit", 1, 2), ("mgrit", 2, 1)]
    results = {}
    for shape in a.shapes:
        for rnd in range(a.rounds):
            for solver, P, threads in configs:
                rec = _launch(P, ["--shape", shape, "--solver", solver, "--threads", str(threads),
                                  "--repeats", str(a.repeats), "--dtype", a.dtype])
                rec["round"] = rnd
                rec["load"] = os.getloadavg()[0]
                _emit(dict(kind="mgrit_time", **rec), a.out)
                results.setdefault((shape, solver, P), []).append(rec)
    print(f"\n| shape (B, T, I, H, L) | {a.dtype} | serial (1 proc, 2 thr) | MGRIT 1 rank (2 thr) "
          "| MGRIT 2 ranks (1 thr each) | serial / MGRIT-2 |")
    print("|---|---|---|---|---|---|")
    for shape in a.shapes:
        med = {k[1:]: statistics.median(r["step_s"] for r in v) for k, v in results.items()
               if k[0] == shape}
        s, m1, m2 = med[("serial", 1)], med[("mgrit", 1)], med[("mgrit", 2)]
        B, T, I, H, L = (results[(shape, "serial", 1)][0][k] for k in "BTIHL")
        print(f"| {shape} ({B}, {T}, {I}, {H}, {L}) | step | {1e3 * s:.1f} ms | {1e3 * m1:.1f} ms "
              f"| {1e3 * m2:.1f} ms | {s / m2:.2f}x |")


def ranks(a):
    configs = [(solver, P, threads) for solver in a.solvers
               for P, threads in ((1, 1), (1, 2), (2, 1)) if solver != "serial" or P == 1]
    results = {}
    for shape in a.shapes:
        for rnd in range(a.rounds):
            for solver, P, threads in configs:
                rec = _launch(P, ["--shape", shape, "--solver", solver, "--threads", str(threads),
                                  "--repeats", str(a.repeats), "--dtype", "float32", "--compare"])
                rec.update(round=rnd, load=os.getloadavg()[0])
                _emit(dict(kind="ranks_time", **rec), a.out)
                results.setdefault((shape, solver, P, threads), []).append(rec)
    print("\n| shape (B, T, I, H, L) | solver | ranks x threads | step (median) | vs serial 1x2 "
          "| Newton iterations | loss error vs serial |")
    print("|---|---|---|---:|---:|---:|---:|")
    for shape in a.shapes:
        med = {k[1:]: statistics.median(r["step_s"] for r in v) for k, v in results.items()
               if k[0] == shape}
        base = med[("serial", 1, 2)]
        for solver, P, threads in configs:
            r = results[(shape, solver, P, threads)][0]
            t = med[(solver, P, threads)]
            print(f"| {shape} ({r['B']}, {r['T']}, {r['I']}, {r['H']}, {r['L']}) | {solver} | "
                  f"{P} x {threads} | {1e3 * t:.0f} ms | {base / t:.2f}x | {r['fwd_iters']} | "
                  f"{r['loss_err']:.1e} |")


def _emit(rec, path):
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="(run under mpiexec by the driver)")
    w.add_argument("--shape", choices=sorted(SHAPES), default="uci_har")
    w.add_argument("--T", type=int, default=None)
    w.add_argument("--cell", default="classic")
    w.add_argument("--dtype", default="float32")
    w.add_argument("--solver", choices=["serial", "mgrit", "deer", "quasi-deer"], default="mgrit")
    w.add_argument("--levels", type=int, default=3)
    w.add_argument("--cf", type=int, default=4)
    w.add_argument("--max-iter", type=int, default=2)
    w.add_argument("--adjoint-max-iter", type=int, default=1)
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--repeats", type=int, default=5)
    w.add_argument("--compare", action="store_true", help="also the error against serial")
    c = sub.add_parser("counts", help="step evaluations per rank for P = 1, 2, 4, 8")
    c.add_argument("--ranks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    c.add_argument("--out", default=None, help="append JSON lines here")
    t = sub.add_parser("time", help="wall time per training step, serial vs MGRIT on 1 and 2 ranks")
    t.add_argument("--shapes", type=lambda s: s.split(","), default=["uci_har", "long1k", "long4k"])
    t.add_argument("--dtype", default="float32")
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--out", default=None, help="append JSON lines here")
    r = sub.add_parser("ranks", help="time-parallel scaling: 1 rank x 1/2 threads, 2 ranks x 1 thread")
    r.add_argument("--shapes", type=lambda s: s.split(","), default=["deer1", "deer4"])
    r.add_argument("--solvers", type=lambda s: s.split(","), default=["serial", "deer", "quasi-deer"])
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--out", default=None, help="append JSON lines here")
    a = p.parse_args()
    {"worker": worker, "counts": counts, "time": timing, "ranks": ranks}[a.cmd](a)


if __name__ == "__main__":
    main()
