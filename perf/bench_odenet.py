"""Layer-parallel ODENets: serial against MGRIT over the layers (the layer-parallel route).

One training step (``ODENet.loss_and_grad_flat`` + Adam, float32, tanh, random data and labels,
seeded, the same on every rank) per configuration, on P = 1, 2, 4 MPI ranks: the serial sweep on
one rank; MGRIT over the layers with the authors' settings (cf 4 (2 for shallow nets), 2 levels or
3, F-relaxation, 2 forward / 1 adjoint cycles, first down-leg skipped: ``--levels --cf --relax``)
on every P (``--owned``: the ranks own their layers' gradient, only the opening's and the
classifier's are allreduced; default: the whole gradient). Per launch: the slowest rank's median step time, every rank's forward and adjoint
step evaluations (one layer applied to the whole batch counts one), the MGRIT cycles, and on
rank 0 the error of the loss and the gradient's cosine against the serial step from the same
parameters. Oversubscribed launches (P above this machine's cores) are marked and count only.

Shapes (name: features F, width w, classes C, depth N, batch B):

* ``peaks``: 2, 8, 5, 32, 5000 (the authors' Peaks network, full batch);
* ``pines``: 200, 220, 16, 29, 1000 (Indian Pines, a minibatch);
* ``deep``: 2, 32, 5, 1024, 256 (a deep narrow network, where layers outnumber everything else).

Commands (from the repository root)::

    PYTHONPATH=. python perf/bench_odenet.py --rounds 2 --repeats 5 \\
        --out perf/results/odenet-scaling-$(date +%F).jsonl
    PYTHONPATH=. python perf/bench_odenet.py --shapes peaks --ranks 1,2 --rounds 1 --repeats 2  # quick

The ``worker`` subcommand is what the driver runs under mpiexec; it prints one JSON line (rank 0).
"""
import argparse
import json
import os
import statistics
import sys

try:  # run as ``python perf/bench_odenet.py`` (perf/ on sys.path) or as a module
    import bench_regimes
    import harness
except ImportError:  # pragma: no cover
    from perf import bench_regimes, harness

#: name -> (features, width, classes, depth, batch)
SHAPES = {"peaks": (2, 8, 5, 32, 5000), "pines": (200, 220, 16, 29, 1000),
          "deep": (2, 32, 5, 1024, 256)}


def worker(a):
    import numpy as np

    import mgritnn
    from mgritnn.distributed import get_comm
    from mgritnn.solvers import MGRITConfig

    comm = get_comm()
    mgritnn.config.set_num_threads(1)
    F, w, C, N, B = SHAPES[a.shape]
    m = mgritnn.ODENet(F, w, C, N, activation="tanh", final_time=1.0, dtype="float32", seed=0)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(B, F)).astype(np.float32)
    y = rng.integers(0, C, size=B)
    if a.solver == "serial":
        solver = "serial"
    else:
        solver = MGRITConfig(levels=a.levels, cf=a.cf, relax=a.relax, max_iter=2,
                             adjoint_max_iter=1, skip_first_down=True)
    step = harness.training_step(m, X, y, solver, owned=a.owned)
    per_rank, times, (loss, g, info) = bench_regimes.measure(comm, step, a.repeats)
    if a.owned:                 # each rank has its own layers' rows: sum them for the comparison
        lo, hi = m._layer_span
        g = g.copy()
        g[lo:hi] = comm.allreduce(g[lo:hi])
    if comm.Get_rank() != 0:
        return
    fs, ad = info["forward"], info["adjoint"]
    rec = dict(shape=a.shape, dims=[F, w, C, N, B], solver=a.solver, levels=a.levels, cf=a.cf,
               relax=a.relax, ranks=comm.Get_size(), repeats=a.repeats,
               step_s=max(r["step_s"] for r in per_rank),
               step_s_per_rank=[r["step_s"] for r in per_rank],
               first_call_s=max(r["first_call_s"] for r in per_rank), times_s_rank0=times,
               evals_per_rank=[list(r["evals"]) for r in per_rank], loss=float(loss),
               fwd_iters=fs.iterations, adj_iters=ad.iterations, owned=a.owned)
    if a.solver != "serial":
        ls, gs, _ = m.loss_and_grad_flat(X, y, "serial")
        g64, gs64 = g.astype(np.float64), gs.astype(np.float64)
        rec.update(loss_err=abs(float(loss) - float(ls)),
                   grad_cos=float(g64 @ gs64 / np.linalg.norm(g64) / np.linalg.norm(gs64)))
    print(json.dumps(rec), flush=True)


def _settings(shape):
    """MGRIT's levels and cf for a shape: cf 4 on 3 levels where the depth allows, else cf 2."""
    N = SHAPES[shape][3]
    return (3, 4) if N >= 64 else (2, 2) if N < 32 else (2, 4)


def bench(a):
    command = bench_regimes.run_line(a)
    cores = os.cpu_count() or 1
    groups = []
    for shape in a.shapes:
        levels, cf = _settings(shape)
        jobs = [dict(key=(shape, "serial", 1), ranks=1,
                     args=["--shape", shape, "--solver", "serial", "--repeats", str(a.repeats)],
                     label=dict(shape=shape, solver="serial"), where=dict(ranks=1), fail={})]
        for P in a.ranks:
            jobs.append(dict(key=(shape, "mgrit", P), ranks=P,
                             args=["--shape", shape, "--solver", "mgrit", "--levels", str(levels),
                                   "--cf", str(cf), "--relax", "F",
                                   "--repeats", str(a.repeats if P <= cores else 0)]
                             + (["--owned"] if a.owned else []),
                             label=dict(shape=shape, solver="mgrit"),
                             where=dict(ranks=P, oversubscribed=P > cores), fail={}))
        groups.append(jobs)
    results, failed = bench_regimes.run_rounds(groups, a.rounds, a.timeout, a.out, "launch",
                                               script=__file__)
    print(command)
    print("| shape (F, w, C, N, B) | route | ranks | step | vs serial | evals/rank (fwd/adj) "
          "| loss err | grad cos |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    for shape in a.shapes:
        serial = results.get((shape, "serial", 1))
        t_ser = statistics.median(r["step_s"] for r in serial) if serial else None
        for key in [(shape, "serial", 1)] + [(shape, "mgrit", P) for P in a.ranks]:
            recs = results.get(key)
            if not recs:
                if key in failed:
                    print(f"| {shape} | {key[1]} | {key[2]} | failed: {failed[key][1]} |||||")
                continue
            over = key[2] > cores
            t = statistics.median(r["step_s"] for r in recs)
            r = recs[-1]
            evals = " ".join(f"{f}/{b}" for f, b in r["evals_per_rank"])
            vs = "—" if over or t_ser is None else f"{t_ser / t:.2f}x"
            cos = r.get("grad_cos")
            print(f"| {shape} {tuple(SHAPES[shape])} | {key[1]} | {key[2]}"
                  f"{' (oversubscribed, counts only)' if over else ''} "
                  f"| {'—' if over else bench_regimes._secs(t)} | {vs} | {evals} "
                  f"| {r.get('loss_err', 0):.2g} | {'—' if cos is None else f'{cos:.4f}'} |")
    if failed:
        sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--shape", choices=sorted(SHAPES), required=True)
    w.add_argument("--solver", choices=("serial", "mgrit"), required=True)
    w.add_argument("--levels", type=int, default=2)
    w.add_argument("--cf", type=int, default=4)
    w.add_argument("--relax", default="F")
    w.add_argument("--repeats", type=int, default=5)
    w.add_argument("--owned", action="store_true")
    p.add_argument("--shapes", type=bench_regimes._list(tuple(SHAPES)), default=list(SHAPES))
    p.add_argument("--ranks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", help="append the JSON lines here")
    p.add_argument("--owned", action="store_true",
                   help="the ranks own their layers: allreduce only the shared parameters' "
                        "gradient (loss_and_grad_flat(owned=True)); default: the full allreduce")
    a = p.parse_args()
    if a.cmd == "worker":
        worker(a)
    else:
        bench(a)


if __name__ == "__main__":
    main()
