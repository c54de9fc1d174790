"""The work bound (issue 22): how far an MGRIT training step is from its evaluations' cost.

A route's time per rank can be no less than its step evaluations per rank times the serial cost
of one evaluation. Per row and rank count this script measures, in one run:

* the serial training step (one rank) and its step evaluations (forward + adjoint,
  ``SolveStats.step_evals``: 2N), so the serial cost per evaluation = serial step / 2N;
* the MGRIT training step on P = 1, 2 (and 4) ranks and the evaluations of its slowest rank;
* the ideal = evaluations per rank x serial cost per evaluation, and the ratio = step / ideal
  (1.0 is the bound);
* the critical path's evaluations: the slowest rank's evaluations outside the coarsest level plus
  the coarsest level's evaluations of all ranks (the coarsest sweeps are sequential, pipelined
  from rank to rank), forward and adjoint.

Rows (training step = ``loss_and_grad_flat`` + Adam, float32, one thread per process):

* ``peaks``: ODENet Peaks (F 2, width 8, C 5, depth 32, batch 5000), tanh; ``preset("layers")``;
* ``peaks-b``: the same network with ``perf/bench_odenet.py``'s MGRIT (2 levels, cf 4, F, 2/1
  cycles: the setting of issue 22's table);
* ``deep``: ODENet (2, 32, 5, 1024, 256), tanh; ``bench_odenet.py``'s MGRIT (3 levels, cf 4, F,
  2/1 cycles);
* ``R1``: GRU (1, 65536, 8, 64, 1), ``R2``: GRU (4, 16384, 6, 32, 1), implicit cell;
  ``preset("fast")``

(the ODENet shapes are ``perf/bench_odenet.py``'s, the GRU's ``perf/bench_regimes.py``'s.)

Before and after side by side: ``--base DIR`` names a second checkout (e.g. ``git worktree add
--detach /tmp/base main``); every launch then runs once per code version, the worker importing
``mgritnn`` from that checkout (``--src``), in the same interleaved rounds. Each launch is one
``mpiexec -n P`` (P = 1 too); its first call (numba compilation or cache load) is timed apart and
the step is the slowest rank's median of ``--repeats``. The table gives medians over rounds.

Commands (from the repository root)::

    git worktree add --detach /tmp/base main
    PYTHONPATH=. python perf/bench_bound.py --base /tmp/base --rounds 3 --repeats 7 \\
        --out perf/results/bound-$(date +%F).jsonl
    PYTHONPATH=. python perf/bench_bound.py --rows peaks --ranks 2 --rounds 1 --repeats 3  # quick

The ``worker`` subcommand is what the driver runs under mpiexec; it prints one JSON line (rank 0).
"""
import sys

if __name__ == "__main__" and "--src" in sys.argv:     # the code version to measure, first
    sys.path.insert(0, sys.argv[sys.argv.index("--src") + 1])

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402

try:  # run as ``python perf/bench_bound.py`` (perf/ on sys.path) or as a module
    import bench_odenet
    import bench_regimes
    import harness
except ImportError:  # pragma: no cover
    from perf import bench_odenet, bench_regimes, harness

ROOT = Path(__file__).resolve().parents[1]
#: row -> (model kind, shape name, MGRIT settings: a preset's name or "bench_odenet")
ROWS = {"peaks": ("odenet", "peaks", "layers"), "peaks-b": ("odenet", "peaks", "bench_odenet"),
        "deep": ("odenet", "deep", "bench_odenet"),
        "R1": ("gru", "R1", "fast"), "R2": ("gru", "R2", "fast")}


def _odenet_problem(row):
    import numpy as np

    import mgritnn
    from mgritnn.distributed import get_comm
    from mgritnn.solvers import MGRITConfig

    comm = get_comm()
    mgritnn.config.set_num_threads(1)
    _, shape, settings = ROWS[row]
    F, w, C, N, B = bench_odenet.SHAPES[shape]
    m = mgritnn.ODENet(F, w, C, N, activation="tanh", final_time=1.0, dtype="float32", seed=0)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(B, F)).astype(np.float32)
    y = rng.integers(0, C, size=B)
    if settings != "bench_odenet":
        cfg = MGRITConfig.preset(settings)
    else:
        levels, cf = bench_odenet._settings(shape)
        cfg = MGRITConfig(levels=levels, cf=cf, relax="F", max_iter=2, adjoint_max_iter=1,
                          skip_first_down=True)
    return comm, m, X, y, cfg


def _coarsest_evals(stats):
    """Evaluations of a solve's coarsest sweeps (its ``coarsest[l]`` phases)."""
    return sum(int(v[2]) for k, v in stats.phases.items() if k.startswith("coarsest"))


def worker(a):
    import mgritnn
    from mgritnn.solvers import make_solver

    kind, shape, settings = ROWS[a.row]
    if kind == "odenet":
        comm, m, X, y, cfg = _odenet_problem(a.row)
    else:
        from mgritnn.solvers import MGRITConfig
        comm, m, X, y, _ = harness.mpi_problem(bench_regimes.SHAPES[shape], 1)
        cfg = MGRITConfig.preset(settings)
    solver = "serial" if a.route == "serial" else make_solver(cfg, comm)
    step = harness.training_step(m, X, y, solver)
    coarse = {}

    def extra():
        return dict(coarsest=coarse.get("n", 0), wait=coarse.get("wait", 0.0))

    # the coarsest sweeps' evaluations of the last call, per rank, for the critical path
    def timed():
        out = step()
        info = out[2]
        coarse["n"] = _coarsest_evals(info["forward"]) + _coarsest_evals(info["adjoint"])
        coarse["wait"] = sum(getattr(info[k], "wait_time", 0.0) or 0.0
                             for k in ("forward", "adjoint"))
        return out
    per_rank, times, _ = bench_regimes.measure(comm, timed, a.repeats, extra)
    if comm.Get_rank() != 0:
        return
    evals = [sum(r["evals"]) for r in per_rank]
    crit = max(e - r["coarsest"] for e, r in zip(evals, per_rank)) + sum(
        r["coarsest"] for r in per_rank)
    harness.emit(dict(row=a.row, route=a.route, ranks=comm.Get_size(), src=mgritnn.__file__,
                      repeats=a.repeats, step_s=max(r["step_s"] for r in per_rank),
                      step_s_per_rank=[r["step_s"] for r in per_rank],
                      first_call_s=max(r["first_call_s"] for r in per_rank),
                      evals_per_rank=evals, evals_max=max(evals), critical_evals=crit,
                      wait_s=max(r["wait"] for r in per_rank)))


def bench(a):
    command = bench_regimes.run_line(a)
    versions = [("after", str(ROOT))] + ([("before", str(Path(a.base).resolve()))]
                                         if a.base else [])
    cores = os.cpu_count() or 1
    groups = []
    for row in a.rows:
        jobs = []
        for route, P in [("serial", 1)] + [("mgrit", P) for P in a.ranks]:
            for ver, src in versions:
                jobs.append(dict(key=(row, route, P, ver), ranks=P,
                                 args=["--row", row, "--route", route, "--repeats",
                                       str(a.repeats), "--src", src],
                                 label=dict(row=row, route=route, version=ver),
                                 where=dict(ranks=P, oversubscribed=P > cores), fail={}))
        groups.append(jobs)
    results, failed = bench_regimes.run_rounds(groups, a.rounds, a.timeout, a.out, "bound",
                                               script=__file__)
    rows = summarize(a, results, failed, [v for v, _ in versions])
    table(a, command, rows)
    if failed:
        sys.exit(1)


def summarize(a, results, failed, versions):
    """Per (row, P, version): medians over rounds, the serial cost per evaluation, the ideal and
    the ratio; one ``kind: "bound_summary"`` line each."""
    out = []
    for row in a.rows:
        for ver in versions:
            ser = results.get((row, "serial", 1, ver))
            if not ser:
                continue
            t_ser = statistics.median(r["step_s"] for r in ser)
            per_eval = t_ser / ser[-1]["evals_max"]
            for P in a.ranks:
                recs = results.get((row, "mgrit", P, ver))
                if not recs:
                    why = failed.get((row, "mgrit", P, ver))
                    out.append(dict(kind="bound_summary", row=row, ranks=P, version=ver,
                                    failed=why))
                    continue
                t = statistics.median(r["step_s"] for r in recs)
                ev = recs[-1]["evals_max"]
                rec = dict(kind="bound_summary", row=row, ranks=P, version=ver, rounds=len(recs),
                           serial_s=t_ser, serial_evals=ser[-1]["evals_max"],
                           serial_per_eval_s=per_eval, step_s=t, evals_max=ev,
                           evals_per_rank=recs[-1]["evals_per_rank"],
                           critical_evals=recs[-1]["critical_evals"], ideal_s=ev * per_eval,
                           wait_s=statistics.median(r.get("wait_s", 0.0) for r in recs),
                           ratio=t / (ev * per_eval), vs_serial=t_ser / t,
                           first_call_s=statistics.median(r["first_call_s"] for r in recs),
                           serial_first_call_s=statistics.median(r["first_call_s"] for r in ser),
                           oversubscribed=P > (os.cpu_count() or 1), failed=None)
                harness.emit(rec, a.out)
                out.append(rec)
    return out


def _ms(t):
    return f"{1e3 * t:.1f} ms" if t < 10 else f"{t:.1f} s"


def table(a, command, rows):
    bench_regimes.print_command(command, f"{a.rounds} round(s) x {a.repeats} repeat(s); "
                                         "medians over rounds; one thread per process")
    print("| row | P | code | serial step | serial per eval | MGRIT step | evals/rank (serial) "
          "| critical-path evals | ideal | ratio | vs serial | waits (last step, worst rank) "
          "| first call (MGRIT) |")
    print("|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (a.rows.index(r["row"]), r["ranks"], r["version"])):
        if r["failed"]:
            print(f"| {r['row']} | {r['ranks']} | {r['version']} | failed: "
                  f"{str(r['failed'][1]).replace('|', '/')} ||||||||||")
            continue
        over = " (oversubscribed)" if r["oversubscribed"] else ""
        print(f"| {r['row']} | {r['ranks']}{over} | {r['version']} | {_ms(r['serial_s'])} "
              f"| {1e6 * r['serial_per_eval_s']:.1f} µs | {_ms(r['step_s'])} "
              f"| {r['evals_max']} ({r['serial_evals']}) | {r['critical_evals']} "
              f"| {_ms(r['ideal_s'])} | **{r['ratio']:.2f}** | {r['vs_serial']:.2f}x "
              f"| {_ms(r['wait_s'])} | {r['first_call_s']:.1f} s |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="(run under mpiexec by the driver)")
    w.add_argument("--row", choices=sorted(ROWS), required=True)
    w.add_argument("--route", choices=("serial", "mgrit"), required=True)
    w.add_argument("--repeats", type=int, default=5)
    w.add_argument("--src", help="the checkout whose mgritnn to import (put first on sys.path)")
    p.add_argument("--rows", type=bench_regimes._list(tuple(ROWS)), default=list(ROWS),
                   help=f"comma-separated, of {', '.join(ROWS)} (default all)")
    p.add_argument("--ranks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2],
                   help="MGRIT's rank counts (default 1,2)")
    p.add_argument("--base", help="a checkout of the code to compare with (before)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per launch")
    p.add_argument("--out", help="append the JSON lines here")
    a = p.parse_args()
    if a.cmd == "worker":
        worker(a)
    else:
        bench(a)


if __name__ == "__main__":
    main()
